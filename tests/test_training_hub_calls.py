"""training_hub 0.11.2's documented calls, written here from its README, docs and examples (not
copied), with their paths replaced by real files: each is accepted up to the point where training
would start, as ``Algorithm.train`` checks it (the schema, the paths, the backend), or refused for
the one reason this machine gives (no CUDA, where the call needs it) and never as "Unknown
parameter". For the ``instructlab-training`` calls, CUDA detection reports a GPU (GPU REPLACED:
``_cuda_device_count`` alone)."""

from __future__ import annotations

import json
import re

import pytest
from instructlab.training import FSDPOptions
from support.callback_probe import Recorder

from airflow_provider_training_hub import create_algorithm
from airflow_provider_training_hub.algorithms.backends import instructlab

NO_CUDA = r"needs a CUDA GPU and this machine has none"

# (function, backend or None for its default, the call's own parameters, the refusal expected here)
CALLS = [
    ("sft", None, {"num_epochs": 3, "effective_batch_size": 8, "learning_rate": 2e-5, "max_seq_len": 2048,
                   "max_tokens_per_gpu": 45000}, None),
    ("sft", None, {"num_epochs": 5, "effective_batch_size": 128, "learning_rate": 1e-5, "max_seq_len": 4096,
                   "max_tokens_per_gpu": 40_000, "nnodes": 4, "node_rank": 1, "nproc_per_node": 8, "rdzv_id": 12345,
                   "rdzv_endpoint": "192.168.1.10:29500"}, None),
    ("sft", None, {"is_pretraining": True, "block_size": 2048, "document_column_name": "text"}, None),
    ("sft", "instructlab-training", {"num_epochs": 2, "learning_rate": 2e-6, "validation_split": 0.1,
                                     "validation_frequency": 50}, None),
    ("sft", None, {"fsdp_options": FSDPOptions(cpu_offload_params=True), "max_tokens_per_gpu": 25000,
                   "max_seq_len": 20000, "effective_batch_size": 128, "nproc_per_node": 8}, None),
    ("sft", None, {"keep_last_checkpoint_only": True, "checkpoint_at_epoch": True, "save_samples": 0,
                   "accelerate_full_state_at_epoch": False, "callbacks": [Recorder()]}, None),
    ("lora_sft", None, {"lora_r": 16, "lora_alpha": 32, "num_epochs": 3, "learning_rate": 2e-4}, None),
    ("lora_sft", None, {"lora_r": 64, "lora_alpha": 128, "load_in_4bit": True, "learning_rate": 1e-4}, NO_CUDA),
    ("lora_sft", None, {"lora_r": 32, "lora_alpha": 64, "effective_batch_size": 128, "micro_batch_size": 2,
                        "num_epochs": 3}, None),
    ("lora_sft", None, {"enable_model_splitting": True, "lora_r": 16, "lora_alpha": 32},
     r"enable_model_splitting: the pytorch backend keeps a whole copy of the model on each rank"),
    ("lora_sft", None, {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "lora_r": 16}, None),
    ("lora_sft", None, {"mlflow_tracking_uri": "http://localhost:5000", "mlflow_experiment_name": "lora-experiments",
                        "wandb_project": "my-lora-project", "tensorboard_log_dir": "<tmp>/tb"}, None),
    ("lora_sft", "unsloth", {"micro_batch_size": 2, "gradient_accumulation_steps": 4, "logging_steps": 1,
                             "save_total_limit": 2, "sample_packing": True, "bf16": True, "seed": 3407,
                             "warmup_steps": 5, "weight_decay": 0.01}, None),
    ("lora_sft", None, {"dataset_type": "alpaca", "field_instruction": "question", "field_input": "context",
                        "field_output": "answer", "data_path": "<alpaca>"}, None),
    ("lora_sft", None, {"dataset_type": "chat_template", "field_messages": "conversations",
                        "data_path": "<conversations>"}, None),
    ("lora_sft", None, {"eval_data_path": "<sample>", "eval_steps": 2, "save_steps": 2, "max_seq_len": 512,
                        "callbacks": [Recorder()]}, None),
    ("lora_sft", None, {"load_in_8bit": True}, NO_CUDA),
    ("lora_sft", "instructlab-training", {"enable_model_splitting": True, "lora_r": 16, "lora_alpha": 32}, None),
]


@pytest.fixture
def files(tmp_path, sample_data) -> dict[str, str]:
    alpaca = tmp_path / "alpaca.jsonl"
    alpaca.write_text(json.dumps({"question": "Who is the mascot?", "context": "", "answer": "Quillon."}) + "\n")
    conversations = tmp_path / "conversations.jsonl"
    conversations.write_text("".join(json.dumps({"conversations": json.loads(line)["messages"]}) + "\n"
                                     for line in sample_data.read_text().splitlines()))
    return {"<sample>": str(sample_data), "<alpaca>": str(alpaca), "<conversations>": str(conversations),
            "<tmp>": str(tmp_path)}


@pytest.mark.parametrize(("function", "backend", "call", "refusal"), CALLS)
def test_a_documented_call_is_taken(function, backend, call, refusal, files, tiny_model, sample_data, tmp_path,
                                    monkeypatch):
    monkeypatch.setattr(instructlab, "_cuda_device_count", lambda: 1)
    call = {k: files.get(v, v.replace("<tmp>", files["<tmp>"])) if isinstance(v, str) else v for k, v in call.items()}
    given = {"model_path": str(tiny_model), "data_path": str(sample_data), "ckpt_output_dir": str(tmp_path / "out"),
             **call}
    algorithm = create_algorithm(function, backend) if backend else create_algorithm(function)
    params = algorithm.params_schema.parse(given)  # never "Unknown parameter"
    try:  # what Algorithm.train checks next, before any work
        params.check_local_paths()
        algorithm.backend.check(params)
    except ValueError as exc:
        assert refusal and re.search(refusal, str(exc)), exc
    else:
        assert refusal is None, f"expected a refusal matching {refusal!r}"
    assert not (tmp_path / "out").exists()
