import json

from airflow_provider_training_hub.checkpoints import collect_result, hf_checkpoints, read_metrics


def _layout(root, *dirs):
    for d in dirs:
        (root / d).mkdir(parents=True)


def test_newest_checkpoint_is_the_largest_sample_count(tmp_path):
    _layout(tmp_path, "hf_format/samples_20", "hf_format/samples_100", "hf_format/samples_3",
            "hf_format/not_a_checkpoint", "full_state/epoch_10", "full_state/epoch_2")
    result = collect_result(tmp_path)
    assert [p.rsplit("/", 1)[1] for p in result.checkpoints] == ["samples_3", "samples_20", "samples_100"]
    assert result.checkpoint.endswith("hf_format/samples_100")
    assert [p.rsplit("/", 1)[1] for p in result.full_state] == ["epoch_2", "epoch_10"]
    assert json.loads(json.dumps(result.to_dict())) == result.to_dict()


def test_last_epoch_layout(tmp_path):
    _layout(tmp_path, "hf_format/last_epoch")
    assert [p.name for p in hf_checkpoints(tmp_path)] == ["last_epoch"]


def test_empty_or_missing_dir(tmp_path):
    result = collect_result(tmp_path / "never-written")
    assert (result.checkpoint, result.checkpoints, result.metrics) == (None, [], {})


def test_metrics_skip_hparams_and_a_truncated_last_line(tmp_path):
    lines = [
        json.dumps({"learning_rate": 1e-5, "num_epochs": 2, "timestamp": "t"}),
        json.dumps({"epoch": 0, "step": 1, "avg_loss": 2.5, "samples_seen": 8, "timestamp": "t"}),
        json.dumps({"epoch": 0, "step": 2, "avg_loss": 1.5, "samples_seen": 16, "timestamp": "t"}),
        json.dumps({"epoch": 1, "step": 3, "avg_loss": 1.7, "samples_seen": 24, "timestamp": "t"}),
        '{"epoch": 1, "step": 4, "avg_lo',
    ]
    (tmp_path / "training_params_and_metrics_global0.jsonl").write_text("\n".join(lines))
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    assert collect_result(tmp_path).metrics == {
        "steps": 3, "epoch": 1, "samples_seen": 24, "first_loss": 2.5, "loss": 1.7, "min_loss": 1.5,
    }
