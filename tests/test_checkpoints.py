import json
import signal
import subprocess
import sys
from pathlib import Path

from airflow_provider_training_hub.data.atomic import AtomicWriter, umask
from airflow_provider_training_hub.checkpoints import collect_result, full_state_checkpoints, hf_checkpoints, read_metrics


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


_WRITER = """
import os, signal, sys, time
from pathlib import Path
from airflow_provider_training_hub.data.atomic import AtomicWriter, umask
from airflow_provider_training_hub.checkpoints import publish

final, tag, kill_between = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "kill"
if kill_between:  # SIGKILL right after the old checkpoint is moved aside, before the new one goes in
    rename = os.rename
    def rename_then_die(src, dst):
        rename(src, dst)
        if ".old-" in str(dst):
            os.kill(os.getpid(), signal.SIGKILL)
    os.rename = rename_then_die

def write(tmp):
    for i in range(20):
        (tmp / f"shard{i}").write_text(tag)
        time.sleep(0.01)

publish(final, write)
"""


def _writer(final, tag, mode="plain") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(final), tag, mode],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _tags(checkpoint: Path) -> set[str]:
    return {p.read_text() for p in checkpoint.iterdir()}


def test_two_writers_of_one_checkpoint_each_publish_it_whole(tmp_path):
    final = tmp_path / "hf_format" / "samples_8"
    writers = [_writer(final, tag) for tag in ("a", "b", "c")]
    outputs = [w.communicate(timeout=60)[0] for w in writers]
    assert [w.returncode for w in writers] == [0, 0, 0], outputs
    assert len(list(final.iterdir())) == 20 and len(_tags(final)) == 1  # one writer's, whole
    assert [p.name for p in final.parent.iterdir() if p.name != ".publish.lock"] == ["samples_8"]
    assert final.stat().st_mode & 0o777 == 0o777 & ~umask()  # readable by the pods' other users


def test_a_kill_while_replacing_a_checkpoint_leaves_the_old_one(tmp_path):
    final = tmp_path / "full_state" / "epoch_0"
    assert _writer(final, "old").wait(timeout=60) == 0
    killed = _writer(final, "new", "kill")
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stdout.read()
    assert not final.exists()  # the moment of the kill: the old one aside, the new one not in yet
    assert full_state_checkpoints(tmp_path) == [final]  # the next reader puts the old one back
    assert _tags(final) == {"old"} and len(list(final.iterdir())) == 20
    assert sorted(p.name for p in final.parent.iterdir()) == [".publish.lock", "epoch_0"]


def test_atomically_written_files_get_the_umasks_mode_not_mkstemps_0600(tmp_path):
    """Prepared data written by the worker's uid must be readable by the pods' uid 1000."""
    with AtomicWriter(str(tmp_path / "data.jsonl")) as writer:
        writer.write(b"{}\n")
    assert (tmp_path / "data.jsonl").stat().st_mode & 0o777 == 0o666 & ~umask() == 0o644
