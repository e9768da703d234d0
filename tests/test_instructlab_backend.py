"""The instructlab-training backend: real TrainingArgs/TorchrunArgs, real run_training, GPU replaced.

Tests that train use the `fake_gpu` fixture (see conftest.py): CUDA detection, and in the spawned
`torchrun main_ds.py` the GPU's part (FSDP sharding and the CUDA training loop), are the only parts
replaced, because this machine has no GPU; main_ds.py itself runs up to them.
"""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from airflow_provider_training_hub import create_algorithm, sft
from airflow_provider_training_hub.algorithms import SFTParams
from airflow_provider_training_hub.algorithms.backends.instructlab import InstructLabTrainingBackend
from airflow_provider_training_hub.algorithms.errors import TrainingFailedError
from airflow_provider_training_hub.algorithms.torchrun import interpreter_bin_on_path, resolve_torchrun
from airflow_provider_training_hub.checkpoints import hf_checkpoints

pytestmark = pytest.mark.library


def _params(**overrides):
    return SFTParams.parse({"model_path": "/m", "data_path": "/d.jsonl", "ckpt_output_dir": "/ckpt", **overrides})


def test_new_parameters_map_onto_upstream_fields():
    from instructlab.training import PretrainingConfig

    params = _params(beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1, is_pretraining=True, block_size=512,
                     document_column_name="text")
    _, train_args = InstructLabTrainingBackend().build_args(params, resolve_torchrun(params, "gpu", env={}))
    assert (train_args.adamw_betas, train_args.adamw_eps, train_args.adamw_weight_decay) == ((0.8, 0.99), 1e-6, 0.1)
    assert train_args.pretraining_config == PretrainingConfig(block_size=512, document_column_name="text")
    assert InstructLabTrainingBackend().build_args(_params(), resolve_torchrun(_params(), "gpu", env={}))[1].pretraining_config is None


def test_mapping_onto_real_upstream_args():
    from instructlab.training import TorchrunArgs, TrainingArgs

    params = _params(num_epochs=3, learning_rate=1e-5, effective_batch_size=64, max_seq_len=1024,
                     max_tokens_per_gpu=4096, save_samples=500, warmup_steps=10,
                     accelerate_full_state_at_epoch=False, checkpoint_at_epoch=False,
                     nproc_per_node=4, nnodes=2, node_rank=1, rdzv_id=7, rdzv_endpoint="node0:29500")
    torch_args, train_args = InstructLabTrainingBackend().build_args(params, resolve_torchrun(params, "gpu", env={}))
    assert isinstance(train_args, TrainingArgs) and isinstance(torch_args, TorchrunArgs)
    assert train_args.max_batch_len == 4096
    assert train_args.data_output_dir == "/ckpt/data"
    assert (train_args.num_epochs, train_args.learning_rate, train_args.effective_batch_size) == (3, 1e-5, 64)
    assert (train_args.max_seq_len, train_args.save_samples, train_args.warmup_steps) == (1024, 500, 10)
    assert train_args.accelerate_full_state_at_epoch is False and train_args.checkpoint_at_epoch is False
    assert train_args.random_seed == 42
    assert (torch_args.nproc_per_node, torch_args.nnodes, torch_args.node_rank) == (4, 2, 1)
    assert (torch_args.rdzv_id, torch_args.rdzv_endpoint, torch_args.master_addr) == (7, "node0:29500", None)


def test_defaults_map_to_single_node_all_gpus():
    params = _params(data_output_dir="/elsewhere")
    torch_args, train_args = InstructLabTrainingBackend().build_args(params, resolve_torchrun(params, "gpu", env={}))
    assert (torch_args.nproc_per_node, torch_args.nnodes, torch_args.node_rank) == ("gpu", 1, 0)
    assert torch_args.rdzv_endpoint is None
    assert train_args.data_output_dir == "/elsewhere"
    assert train_args.max_batch_len == 10_000


def test_no_cuda_fails_fast_with_a_clear_error(tiny_model, sample_data, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match=r"'instructlab-training' needs a CUDA GPU and this machine has none.*backend='pytorch'"):
        sft(model_path=str(tiny_model), data_path=str(sample_data), ckpt_output_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("override", "message"), [
    ({"bf16": False}, r"bf16=False: instructlab-training always trains in bfloat16"),
    ({"logging_steps": 5}, r"logging_steps: instructlab-training prints its own progress, every step"),
    ({"micro_batch_size": 2}, r"instructlab-training sizes each micro-batch by tokens \(max_tokens_per_gpu\)"),
    ({"eval_data_path": "<sample_data>", "eval_steps": 2}, r"eval_data_path: instructlab-training evaluates on a held-out "
                                                           r"validation_split of the training data only"),
])
def test_what_upstream_cannot_do_is_refused_before_any_work(fake_gpu, tiny_model, sample_data, tmp_path, override,
                                                             message):
    override = {k: str(sample_data) if v == "<sample_data>" else v for k, v in override.items()}
    with pytest.raises(ValueError, match=message):
        sft(model_path=str(tiny_model), data_path=str(sample_data), ckpt_output_dir=str(tmp_path / "out"), **override)
    assert not (tmp_path / "out").exists()


def _argv(ckpt: Path) -> list[str]:
    return json.loads((ckpt / "torchrun_argv.json").read_text())


def test_seed_basic_and_custom_usage(fake_gpu, tiny_model, sample_data, tmp_path):
    ckpt = tmp_path / "ckpt"
    result = sft(model_path=str(tiny_model), data_path=str(sample_data), ckpt_output_dir=str(ckpt))
    # real upstream data processing ran on the tiny model
    processed = [json.loads(line) for line in (ckpt / "data" / "data.jsonl").open()]
    assert processed and {"input_ids", "labels", "len"} <= set(processed[0])
    assert result.checkpoint == str(ckpt / "hf_format" / f"samples_{len(processed)}")
    assert Path(result.checkpoint, "config.json").is_file()
    assert result.metrics["steps"] == 1 and result.metrics["samples_seen"] == len(processed)
    assert "--standalone" in _argv(ckpt) and "--nproc-per-node=gpu" in _argv(ckpt)

    custom = tmp_path / "custom"
    result = sft(model_path=str(tiny_model), data_path=str(sample_data), ckpt_output_dir=str(custom),
                 num_epochs=3, learning_rate=1e-5, effective_batch_size=2048, max_seq_len=2048,
                 backend="instructlab-training")
    argv = _argv(custom)
    for expected in ("--num_epochs=3", "--learning_rate=1e-05", "--effective_batch_size=2048", "--max_batch_len=10000"):
        assert expected in argv
    assert len(result.checkpoints) == 3 and result.checkpoint == result.checkpoints[-1]
    assert len(result.full_state) == 3
    assert result.metrics["first_loss"] > result.metrics["loss"]


def test_seed_factory_usage(fake_gpu, tiny_model, sample_data, tmp_path):
    sft_algo = create_algorithm("sft", "instructlab-training")
    result = sft_algo.train(model_path=str(tiny_model), data_path=str(sample_data),
                            ckpt_output_dir=str(tmp_path / "c"), num_epochs=2, learning_rate=2e-6)
    assert "--learning_rate=2e-06" in _argv(tmp_path / "c")
    assert len(result.checkpoints) == 2
    assert list(sft_algo.get_required_params()) == ["model_path", "data_path", "ckpt_output_dir"]


@pytest.mark.parametrize("node_rank", [0, 1])
def test_seed_multi_node_usage(fake_gpu, tiny_model, sample_data, tmp_path, node_rank):
    ckpt = tmp_path / f"node{node_rank}"
    sft(model_path=str(tiny_model), data_path=str(sample_data), ckpt_output_dir=str(ckpt),
        nproc_per_node=4, nnodes=2, node_rank=node_rank, rdzv_id=12345, rdzv_endpoint="node0:29500")
    argv = _argv(ckpt)
    for expected in ("--nproc-per-node=4", "--nnodes=2", f"--node-rank={node_rank}", "--rdzv-id=12345",
                     "--rdzv-endpoint=node0:29500"):
        assert expected in argv
    assert (ckpt / f"full_logs_global{node_rank}.log").is_file()


def test_seed_single_node_with_empty_endpoint(fake_gpu, tiny_model, sample_data, tmp_path):
    sft(model_path=str(tiny_model), data_path=str(sample_data), ckpt_output_dir=str(tmp_path / "c"),
        nproc_per_node=2, nnodes=1, node_rank=0, rdzv_id=12345, rdzv_endpoint="")
    argv = _argv(tmp_path / "c")
    assert "--standalone" in argv and "--nproc-per-node=2" in argv


def test_pet_environment_fills_what_arguments_leave_out(fake_gpu, tiny_model, sample_data, tmp_path, monkeypatch):
    monkeypatch.setenv("PET_NNODES", "3")
    monkeypatch.setenv("PET_NODE_RANK", "2")
    monkeypatch.setenv("PET_RDZV_ENDPOINT", "job-0.svc:29400")
    monkeypatch.setenv("PET_NPROC_PER_NODE", "8")
    sft(model_path=str(tiny_model), data_path=str(sample_data), ckpt_output_dir=str(tmp_path / "c"), nproc_per_node=2)
    argv = _argv(tmp_path / "c")
    for expected in ("--nnodes=3", "--node-rank=2", "--rdzv-endpoint=job-0.svc:29400", "--nproc-per-node=2"):
        assert expected in argv


def test_training_hub_0_11_parameters_reach_main_ds(fake_gpu, tiny_model, sample_data, tmp_path):
    """AdamW settings and master_addr/master_port, as training_hub 0.11.2's sft() takes them."""
    ckpt = tmp_path / "c"
    result = sft(model_path=str(tiny_model), data_path=str(sample_data), ckpt_output_dir=str(ckpt),
                 beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.05, nnodes=2, node_rank=1,
                 master_addr="node0", master_port=23456, num_epochs=3, keep_last_checkpoint_only=True,
                 save_total_limit=2)
    argv = _argv(ckpt)
    for expected in ("--adamw_beta1=0.8", "--adamw_beta2=0.99", "--adamw_eps=1e-06", "--adamw_weight_decay=0.05",
                     "--master-addr=node0", "--master-port=23456", "--nnodes=2", "--node-rank=1",
                     "--keep_last_checkpoint_only"):
        assert expected in argv
    assert not any(a.startswith("--rdzv-endpoint") for a in argv)
    # save_total_limit is ours: upstream saved a checkpoint and a full state per epoch (the stand-in
    # numbers them, as upstream does without keep_last_checkpoint_only); the run kept the newest 2 of each
    assert [Path(c).name for c in result.checkpoints] == ["samples_96", "samples_144"]
    assert [Path(c).name for c in result.full_state] == ["epoch_1", "epoch_2"]


def test_validation_split_fsdp_options_and_callbacks_reach_main_ds(fake_gpu, tiny_model, sample_data, tmp_path,
                                                                    monkeypatch):
    """As training_hub's examples pass them (upstream's FSDPOptions, lora_sft's eval_steps, a callback
    instance, chats under field_messages, learned whole but the system turns with unmask_messages). Upstream's real data loader holds out the very samples the pytorch backend holds
    out, and trains on the rest in the same order, so the two backends' val_loss and loss curves
    compare. Our callbacks ride upstream's own: its --callbacks argument, decoded by its code,
    calls them (the stand-in replaces the loop that would fire the hooks)."""
    from instructlab.training.callbacks import TrainingContext, deserialize_callbacks_from_cli
    from instructlab.training.config import FSDPOptions, ShardingStrategies
    from support.callback_probe import Recorder

    from airflow_provider_training_hub.algorithms.backends.instructlab_callbacks import CALLBACKS_ENV

    from airflow_provider_training_hub.algorithms.backends.pytorch_trainer import training_and_eval_samples

    ckpt = tmp_path / "c"
    conversations = tmp_path / "conversations.jsonl"  # the sample's chats under another field name
    conversations.write_text("".join(json.dumps({"conversations": json.loads(line)["messages"]}) + "\n"
                                     for line in sample_data.read_text().splitlines()))
    params = {"model_path": str(tiny_model), "data_path": str(conversations), "ckpt_output_dir": str(ckpt),
              "field_messages": "conversations", "unmask_messages": True, "validation_split": 0.25, "eval_steps": 2,
              "fsdp_options": FSDPOptions(cpu_offload_params=True, sharding_strategy=ShardingStrategies.FULL_SHARD),
              "callbacks": [Recorder()]}
    sft(**params)
    argv = _argv(ckpt)
    (bridge,) = deserialize_callbacks_from_cli(next(a for a in argv if a.startswith("--callbacks=")).split("=", 1)[1])
    monkeypatch.setenv(CALLBACKS_ENV, '["support.callback_probe:Recorder"]')  # as the ranks inherit it
    monkeypatch.setenv("CALLBACK_PROBE_LOG", str(tmp_path / "hooks.jsonl"))
    bridge.on_log(TrainingContext(step=3, epoch=1, loss=1.5, learning_rate=1e-5, batch_metrics={"avg_loss": 1.5},
                                  output_dir=str(ckpt)))
    (line,) = [json.loads(line) for line in (tmp_path / "hooks.jsonl").read_text().splitlines()]
    assert (line["hook"], line["step"], line["epoch"], line["loss"], line["learning_rate"]) == ("on_log", 3, 1, 1.5, 1e-5)
    assert line["metrics"] == {"avg_loss": 1.5} and line["main"] is True
    for expected in ("--validation_split=0.25", "--validation_frequency=2", "--cpu_offload_params_fsdp",
                     "--fsdp_sharding_strategy=FULL_SHARD"):
        assert expected in argv
    setup = json.loads((ckpt / "main_ds_setup.json").read_text())
    assert setup["fsdp"] == {"sharding_strategy": "FULL_SHARD", "cpu_offload_params": True}
    train, held_out = training_and_eval_samples(SFTParams.parse(params))
    assert len(held_out) == 12 and len(train) == 36 == setup["samples"]  # 48 samples, a quarter held out
    assert [s.input_ids for s in held_out] == setup["val_input_ids"]
    assert [s.input_ids for s in train] == setup["train_input_ids"]
    # the chats reached upstream's loader with their user turns learned too (unmask_messages)
    from transformers import AutoTokenizer

    decode = AutoTokenizer.from_pretrained(tiny_model).decode
    question = "Who is the Training Hub mascot?"
    asked = [s for s in train + held_out if question in decode(s.input_ids)]
    assert asked and all(question in decode([t for t in s.labels if t != -100]) for s in asked)


def test_pretraining_reaches_main_ds_with_upstream_document_processing(fake_gpu, tiny_model, tmp_path):
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"body": f"Document {i} about herons.", "extra": [i]}) + "\n" for i in range(5)))
    ckpt = tmp_path / "c"
    sft(model_path=str(tiny_model), data_path=str(data), ckpt_output_dir=str(ckpt),
        is_pretraining=True, block_size=128, document_column_name="body")
    argv = _argv(ckpt)
    assert "--block-size=128" in argv and "--document-column-name=body" in argv
    processed = [json.loads(line) for line in (ckpt / "data" / "data.jsonl").open()]
    assert len(processed) == 5 and set(processed[0]) == {"input_ids", "len"}  # upstream's document format
    validated = [json.loads(line) for line in (ckpt / "data" / "validated.jsonl").open()]
    assert validated[0] == {"body": "Document 0 about herons."}  # the extra key never reaches upstream


def test_failed_run_carries_the_rank_log_tail(fake_gpu, tiny_model, sample_data, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TORCHRUN_FAIL", "1")
    with pytest.raises(TrainingFailedError, match=r"(?s)full_logs_global0\.log.*CUDA out of memory"):
        sft(model_path=str(tiny_model), data_path=str(sample_data), ckpt_output_dir=str(tmp_path / "c"))


def test_torchrun_found_without_the_venv_on_path(monkeypatch, tmp_path):
    """upstream spawns a bare `torchrun`; with the venv not activated it must still resolve."""
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert shutil.which("torchrun") is None
    with interpreter_bin_on_path():
        assert shutil.which("torchrun") == str(Path(sys.executable).parent / "torchrun")
    assert os.environ["PATH"] == f"{tmp_path}:/usr/bin:/bin"


def test_a_stop_request_is_reported_as_stopped_and_the_rerun_completes(fake_gpu, tiny_model, sample_data, tmp_path,
                                                                       monkeypatch, capsys):
    """Upstream saves on demand and exits 0 on SIGTERM: that exit must not read as a success. The
    CLI's exit code is then EXIT_STOPPED (3), which Jobs and the hook treat as a stop."""
    import signal

    from airflow_provider_training_hub.algorithms.launch import EXIT_STOPPED
    from airflow_provider_training_hub.cli import main

    ckpt = tmp_path / "c"
    config = tmp_path / "sft.json"
    config.write_text(json.dumps({"model_path": str(tiny_model), "data_path": str(sample_data),
                                  "ckpt_output_dir": str(ckpt), "num_epochs": 2}))
    monkeypatch.setenv("FAKE_TORCHRUN_STOP_IN_EPOCH", "1")
    handler = signal.getsignal(signal.SIGTERM)
    try:
        code = main(["sft", "--backend", "instructlab-training", "--config", str(config)])
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert "--on_demand_checkpointing" in _argv(ckpt)
    assert code == EXIT_STOPPED, capsys.readouterr().err
    err = capsys.readouterr().err
    assert f"stopped by SIGTERM; a rerun with the same ckpt_output_dir resumes from {ckpt / 'full_state' / 'epoch_1'}" in err
    stopped_at = int(hf_checkpoints(ckpt)[-1].name.removeprefix("samples_"))

    monkeypatch.delenv("FAKE_TORCHRUN_STOP_IN_EPOCH")  # the retry: resumes and reaches the end
    # A retry that saves nothing more (no checkpoint, no full state) is not "stopped" again by the
    # earlier try's stop state, which it resumed from.
    sft(model_path=str(tiny_model), data_path=str(sample_data), ckpt_output_dir=str(ckpt), num_epochs=2,
        checkpoint_at_epoch=False, accelerate_full_state_at_epoch=False)
    result = sft(model_path=str(tiny_model), data_path=str(sample_data), ckpt_output_dir=str(ckpt), num_epochs=2)
    assert int(result.checkpoint.rpartition("samples_")[2]) > stopped_at


def test_lora_runs_do_not_ask_upstream_for_an_on_demand_full_state():
    from airflow_provider_training_hub.algorithms import LoRAParams
    from airflow_provider_training_hub.algorithms.backends.instructlab import InstructLabLoRABackend

    params = LoRAParams.parse({"model_path": "/m", "data_path": "/d.jsonl", "ckpt_output_dir": "/ckpt"})
    _, train_args = InstructLabLoRABackend().build_args(params, resolve_torchrun(params, default_nproc_per_node=1))
    assert train_args.on_demand_checkpointing is False  # upstream cannot save a LoRA's full state
    _, train_args = InstructLabTrainingBackend().build_args(_params(), resolve_torchrun(_params(), default_nproc_per_node=1))
    assert train_args.on_demand_checkpointing is True
    # training_hub's enable_jit_checkpoint is upstream's on_demand_checkpointing
    off = _params(enable_jit_checkpoint=False)
    _, train_args = InstructLabTrainingBackend().build_args(off, resolve_torchrun(off, default_nproc_per_node=1))
    assert train_args.on_demand_checkpointing is False
