"""Every configuration error of the foundation issue raises ValueError, naming the parameter."""

from pathlib import Path

import pytest

from conftest import REPO

from airflow_provider_training_hub import sft
from airflow_provider_training_hub.algorithms import SFTParams


@pytest.fixture
def valid(tiny_model, sample_data, tmp_path):
    return {"model_path": str(tiny_model), "data_path": str(sample_data), "ckpt_output_dir": str(tmp_path / "ckpt")}


def test_defaults_are_instructlab_trainingargs_defaults():
    from instructlab.training import TrainingArgs

    ours = SFTParams.model_fields
    for name in ("num_epochs", "save_samples", "warmup_steps", "checkpoint_at_epoch",
                 "accelerate_full_state_at_epoch", "random_seed", "keep_last_checkpoint_only"):
        assert ours[name].default == TrainingArgs.model_fields[name].default, name
    adamw = TrainingArgs.model_fields
    assert (ours["beta1"].default, ours["beta2"].default) == adamw["adamw_betas"].default
    assert (ours["eps"].default, ours["weight_decay"].default) == (adamw["adamw_eps"].default, adamw["adamw_weight_decay"].default)
    from instructlab.training import PretrainingConfig

    assert ours["document_column_name"].default == PretrainingConfig.model_fields["document_column_name"].default
    # Where TrainingArgs has no default we chose one: docs/algorithms.md's parameter table says which and
    # why; the help text says what the value does, since a trigger form may show another default.
    table = (REPO / "docs" / "algorithms.md").read_text().split("## How the parameters are declared", 1)[1].split("\n\n| parameter |", 1)[1].split("\n\n", 1)[0]
    for name in ("effective_batch_size", "learning_rate", "max_seq_len", "max_tokens_per_gpu"):
        assert TrainingArgs.model_fields[{"max_tokens_per_gpu": "max_batch_len"}.get(name, name)].is_required()
        assert f"\n| `{name}` | " in table, name
        assert "default" not in ours[name].description.lower(), ours[name].description


def test_string_values_from_templates_and_flags_are_converted():
    p = SFTParams.parse({"model_path": "m", "data_path": "d", "ckpt_output_dir": "c",
                         "num_epochs": "3", "learning_rate": "1e-5", "checkpoint_at_epoch": "false"})
    assert (p.num_epochs, p.learning_rate, p.checkpoint_at_epoch) == (3, 1e-5, False)
    assert p.processed_data_dir == "c/data"
    assert p.batch_token_cap == 10_000


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"num_epochs": 0}, r"^Invalid parameter 'num_epochs': must be at least 1 \(got 0\)\.$"),
        ({"num_epochs": "three"}, r"^Invalid parameter 'num_epochs': must be a whole number \(got 'three'\)\.$"),
        ({"learning_rate": 0}, r"^Invalid parameter 'learning_rate': must be greater than 0 \(got 0\)\.$"),
        ({"learning_rate": -1e-5}, r"'learning_rate': must be greater than 0 \(got -1e-05\)"),
        ({"checkpoint_at_epoch": "maybe"}, r"^Invalid parameter 'checkpoint_at_epoch': must be true or false \(got 'maybe'\)\.$"),
        ({"max_seq_len": 4096, "max_tokens_per_gpu": 2048}, r"max_tokens_per_gpu \(2048\) must be at least max_seq_len \(4096\)"),
        ({"nnodes": 2, "node_rank": 2}, r"node_rank \(2\) must be in \[0, nnodes\) = \[0, 2\)"),
        ({"node_rank": -1}, r"'node_rank': must be at least 0 \(got -1\)"),
        ({"rdzv_endpoint": "node0"}, r"rdzv_endpoint must be 'host:port'.*got 'node0'"),
        ({"sample_packing": False}, r"^Invalid parameter 'sample_packing': both backends always pack samples, with "
                                    r"attention kept within each sample .* leave sample_packing at true\.$"),
        ({"logging_steps": 0}, r"'logging_steps': must be at least 1 \(got 0\)"),
        ({"gradient_accumulation_steps": 4}, r"^gradient_accumulation_steps needs micro_batch_size"),
        ({"gradient_accumulation_steps": 4, "micro_batch_size": 2, "effective_batch_size": 64},
         r"^effective_batch_size \(64\) and gradient_accumulation_steps \(4\) both set the samples per optimizer "
         r"step: give one\.$"),
        ({"rdzv_endpoint": "node0:99999"}, r"rdzv_endpoint must be 'host:port'"),
        ({"validation_split": 0.1}, r"^validation_frequency \(training_hub's lora_sft name: eval_steps\) is required "
                                    r"with validation_split or eval_data_path"),
        ({"eval_steps": 10}, r"^validation_frequency \(10\) has nothing to evaluate: set validation_split or "
                             r"eval_data_path too\.$"),
        ({"validation_split": 0.1, "eval_data_path": "e.jsonl", "eval_steps": 5},
         r"^validation_split \(0\.1\) and eval_data_path \('e\.jsonl'\) both name the evaluation set: give one\.$"),
        ({"validation_split": 1}, r"'validation_split': must be less than 1 \(got 1\)"),
        ({"eval_steps": 5, "validation_frequency": 5, "validation_split": 0.1},
         r"^'eval_steps' and 'validation_frequency' are one parameter"),
        ({"fsdp_options": {"sharding_strategy": "BEST"}},
         r"^Invalid parameter 'fsdp_options\.sharding_strategy': must be 'FULL_SHARD', 'SHARD_GRAD_OP', 'NO_SHARD' or "
         r"'HYBRID_SHARD' \(got 'BEST'\)\.$"),
        ({"fsdp_options": '{"cpu_offload_params": true,}'},
         r"^Invalid parameter 'fsdp_options': fsdp_options is not a JSON object: a comma before '}'\.$"),
        ({"learnin_rate": 1e-5}, r"Unknown parameter 'learnin_rate'\. Did you mean 'learning_rate'\?"),
        ({"num_epoch": 2}, r"Unknown parameter 'num_epoch'\. Did you mean 'num_epochs'\?"),
    ],
)
def test_bad_values_raise_before_any_work(valid, override, message):
    with pytest.raises(ValueError, match=message):
        sft(**valid, **override)
    assert not Path(valid["ckpt_output_dir"]).exists()


def test_missing_required_parameter(valid):
    del valid["ckpt_output_dir"]
    with pytest.raises(ValueError, match=r"Missing required parameter 'ckpt_output_dir'"):
        SFTParams.parse(valid)


def test_the_pytorch_backend_refuses_what_only_fsdp_does_before_any_work(valid):
    from instructlab.training import FSDPOptions

    from airflow_provider_training_hub import lora_sft

    with pytest.raises(ValueError, match=r"^fsdp_options: the pytorch backend keeps a whole copy of the model on each "
                                         r"rank \(DDP\)"):
        sft(**valid, backend="pytorch", fsdp_options=FSDPOptions(cpu_offload_params=True))
    with pytest.raises(ValueError, match=r"^enable_model_splitting: the pytorch backend .* use "
                                         r"backend='instructlab-training', whose FSDP shards it"):
        lora_sft(**valid, enable_model_splitting=True)
    assert not Path(valid["ckpt_output_dir"]).exists()


def test_missing_paths(valid, tmp_path):
    with pytest.raises(ValueError, match=r"model_path '.*nope' is not a model directory on this machine \(there is "
                                         r"no such directory\): it must hold the model's config.json, .* "
                                         r"`training-hub models tiny DIR` makes a small one offline"):
        sft(**{**valid, "model_path": str(tmp_path / "nope")})
    with pytest.raises(ValueError, match=r"data_path '.*missing.jsonl' does not exist"):
        sft(**{**valid, "data_path": str(tmp_path / "missing.jsonl")})
    with pytest.raises(ValueError, match=r"eval_data_path '.*missing.jsonl' does not exist"):
        sft(**valid, eval_data_path=str(tmp_path / "missing.jsonl"), eval_steps=10)


def test_unknown_backend_through_sft(valid):
    with pytest.raises(ValueError, match=r"Unknown backend.*'cuda-magic'.*Available: instructlab-training"):
        sft(**valid, backend="cuda-magic")


# training_hub 0.11.2's sft() signature, in its order (training_hub is not a dependency here).
TRAINING_HUB_0_11_2_SFT = (
    "model_path data_path ckpt_output_dir backend num_epochs effective_batch_size learning_rate max_seq_len "
    "max_tokens_per_gpu data_output_dir save_samples warmup_steps accelerate_full_state_at_epoch checkpoint_at_epoch "
    "is_pretraining block_size document_column_name beta1 beta2 eps weight_decay nproc_per_node nnodes node_rank "
    "rdzv_id rdzv_endpoint master_addr master_port wandb_project wandb_entity wandb_run_name tensorboard_log_dir "
    "mlflow_tracking_uri mlflow_experiment_name mlflow_run_name callbacks enable_jit_checkpoint checkpoint_storage"
).split()
NOT_YET = {"wandb_project", "wandb_entity", "wandb_run_name", "tensorboard_log_dir", "mlflow_tracking_uri",
           "mlflow_experiment_name", "mlflow_run_name",  # the experiment-tracking issue's
           "enable_jit_checkpoint", "checkpoint_storage"}


def test_every_training_hub_sft_parameter_is_known():
    from airflow_provider_training_hub import create_algorithm

    algorithm = create_algorithm("sft", "pytorch")
    known = {*algorithm.get_required_params(), *algorithm.get_optional_params(), "backend"}
    assert set(TRAINING_HUB_0_11_2_SFT) - NOT_YET - known == set()


def test_paths_that_cannot_be_training_input_are_named_before_any_work(tmp_path, monkeypatch, tiny_model):
    """A directory given as data_path, and a relative model path that is missing here (with the
    Hub reachable, `models/foo` would otherwise be taken for a Hub id): a ValueError each, which
    no retry repeats."""
    from airflow_provider_training_hub.data.validate import validate_messages

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    (tmp_path / "models").mkdir()
    (tmp_path / "data").mkdir()
    base = {"model_path": str(tiny_model), "data_path": "data", "ckpt_output_dir": "c"}
    with pytest.raises(ValueError, match=r"^data_path 'data' is a directory, and no saved dataset \(it has no "
                                         r"state.json\): give the JSONL, Parquet or CSV file in it\.$"):
        SFTParams.parse(base).check_local_paths()
    with pytest.raises(ValueError, match=r"^data_path 'data' is a directory"):
        validate_messages("data")
    with pytest.raises(ValueError, match=r"^model_path 'models/foo' is not a model directory on this machine \(there "
                                         r"is no such directory\): it must hold the model's config.json, its weights"):
        SFTParams.parse({**base, "model_path": "models/foo"}).check_local_paths()
    SFTParams.parse({**base, "model_path": "org/name", "data_path": str(tiny_model / "config.json")}).check_local_paths()
