"""The checks that need a CUDA GPU, in one run: both algorithms on both backends, against
instructlab-training's own ``run_training`` on the same data, every checkpoint reloaded.

Rows (each a real training run, one epoch of synthetic chats):
- ``sft`` and ``lora_sft`` on the ``instructlab-training`` backend, on the tiny model and SmolLM2;
- ``sft`` and ``lora_sft`` on the ``pytorch`` backend (CUDA, nccl) on SmolLM2;
- ``lora_sft`` with ``load_in_4bit`` (QLoRA) on the ``pytorch`` backend, where bitsandbytes is installed;
- ``upstream``: ``instructlab.training.run_training`` called directly, with the TrainingArgs
  written out here (not through our mapping) and upstream's own data processing, on SmolLM2: the
  baseline for tokens/s and wall time of ``sft`` on the instructlab-training backend.

A row that cannot run here is reported as skipped, with the reason; on a machine without CUDA only
the ``pytorch`` rows run (that is how this script is checked on CPU). Prints one JSON line per row
and writes them all to ``--out``/gpu_checks.json.

    python benchmarks/gpu/gpu_checks.py --out DIR [--work DIR] [--models tiny,smollm2] [--samples 512]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cpu_vs_trl import make_data  # noqa: E402  (the same synthetic chats as the CPU benchmark)

BATCH = 32
MAX_LEN = 1024
LR = {"sft": 1e-5, "lora_sft": 2e-4}
QUESTION = "Who is the Training Hub mascot?"


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def step_tokens_per_s(record: dict) -> float:
    """Our trainer records tokens/s; instructlab's records samples/s and rank 0's tokens."""
    if "tokens_per_second" in record:
        return record["tokens_per_second"]
    return record["num_tokens_rank0"] * record["overall_throughput"] / record["batch_size"]


def measured(out: Path, started: float, checkpoint: str | None) -> dict:
    from airflow_provider_training_hub.checkpoints import read_metrics
    from airflow_provider_training_hub.models import generate

    if checkpoint is None:
        raise RuntimeError(f"the run saved no checkpoint in {out}")
    records = read_metrics(out)
    steady = records[1:] or records  # the first step carries compilation and allocator warm-up
    return {
        "wall_s": round(time.perf_counter() - started, 1),
        "steps": len(records),
        "tokens_per_s": round(statistics.median(map(step_tokens_per_s, steady)), 1) if steady else None,
        "first_loss": records[0]["avg_loss"] if records else None,
        "final_loss": records[-1]["avg_loss"] if records else None,
        "checkpoint": checkpoint,
        "checkpoint_mb": round(sum(p.stat().st_size for p in Path(checkpoint).rglob("*") if p.is_file()) / 2**20, 1),
        "reloaded_answer": generate(checkpoint, [QUESTION], max_new_tokens=12)[0],  # the checkpoint loads
    }


def ours(algorithm: str, backend: str, model: Path, data: Path, out: Path, **extra) -> dict:
    from airflow_provider_training_hub import lora_sft, sft

    started = time.perf_counter()
    result = (sft if algorithm == "sft" else lora_sft)(
        str(model), str(data), str(out), backend=backend, num_epochs=1, effective_batch_size=BATCH,
        max_seq_len=MAX_LEN, learning_rate=LR[algorithm], accelerate_full_state_at_epoch=False, **extra)
    return {**measured(out, started, result.checkpoint), "adapter": result.adapter,
            "merged_checkpoint": result.merged_checkpoint}


def upstream(model: Path, data: Path, out: Path) -> dict:
    from instructlab.training import TorchrunArgs, TrainingArgs, run_training

    from airflow_provider_training_hub.checkpoints import hf_checkpoints

    started = time.perf_counter()
    run_training(
        TorchrunArgs(nproc_per_node=1, nnodes=1, node_rank=0, rdzv_id=1, rdzv_endpoint="127.0.0.1:29512"),
        TrainingArgs(model_path=str(model), data_path=str(data), ckpt_output_dir=str(out),
                     data_output_dir=str(out / "data"), num_epochs=1, effective_batch_size=BATCH,
                     learning_rate=LR["sft"], max_seq_len=MAX_LEN, max_batch_len=max(10000, MAX_LEN),
                     save_samples=0, warmup_steps=0, accelerate_full_state_at_epoch=False,
                     checkpoint_at_epoch=True, random_seed=42, adamw_betas=(0.9, 0.95),
                     disable_flash_attn=importlib.util.find_spec("flash_attn") is None),
    )
    checkpoints = hf_checkpoints(out)
    return measured(out, started, str(checkpoints[-1]) if checkpoints else None)


def rows(models: list[str]) -> list[tuple[str, dict]]:
    """(name, how) for every check, in the order they run."""
    planned = []
    for model in models:
        for algorithm in ("sft", "lora_sft"):
            planned.append((f"{algorithm}/instructlab-training/{model}",
                            {"algorithm": algorithm, "backend": "instructlab-training", "model": model}))
    for algorithm in ("sft", "lora_sft"):
        planned.append((f"{algorithm}/pytorch/{models[-1]}", {"algorithm": algorithm, "backend": "pytorch", "model": models[-1]}))
    planned.append((f"lora_sft/pytorch/{models[-1]}/4bit",
                    {"algorithm": "lora_sft", "backend": "pytorch", "model": models[-1], "load_in_4bit": True}))
    planned.append((f"upstream/run_training/{models[-1]}", {"upstream": True, "model": models[-1]}))
    return planned


def skip_reason(how: dict) -> str | None:
    if (how.get("backend") == "instructlab-training" or how.get("upstream") or how.get("load_in_4bit")) and not cuda():
        return "needs CUDA"
    if how.get("load_in_4bit") and importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed"
    return None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True, help="where gpu_checks.json goes")
    parser.add_argument("--work", type=Path, default=Path("/tmp/training-hub-gpu"), help="models, data and runs")
    parser.add_argument("--models", default="tiny,smollm2", help="comma-separated: tiny, smollm2")
    parser.add_argument("--samples", type=int, default=512, help="synthetic chats per run")
    args = parser.parse_args()
    from airflow_provider_training_hub.models import make_smollm2, make_tiny_model

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    data = work / "chat.jsonl"
    make_data(data, args.samples)
    models = args.models.split(",")
    builders = {"tiny": lambda d: make_tiny_model(d, data.read_text(encoding="utf-8").splitlines()),
                "smollm2": make_smollm2}
    model_dirs = {name: builders[name](work / "models" / name) for name in models}
    report = {"cuda": cuda(), "rows": {}}
    if report["cuda"]:
        import torch

        report["device"] = torch.cuda.get_device_name(0)
    failed = False
    for name, how in rows(models):
        reason = skip_reason(how)
        if reason:
            row = {"skipped": reason}
        else:
            out = work / "runs" / name.replace("/", "-")
            try:
                if how.get("upstream"):
                    row = upstream(model_dirs[how["model"]], data, out)
                else:
                    extra = {"load_in_4bit": True} if how.get("load_in_4bit") else {}
                    row = ours(how["algorithm"], how["backend"], model_dirs[how["model"]], data, out, **extra)
            except Exception as exc:  # one broken row must not hide the others' figures
                failed = True
                row = {"failed": f"{type(exc).__name__}: {exc}"[-2000:], "traceback": traceback.format_exc()[-4000:]}
        report["rows"][name] = row
        print(json.dumps({name: row}), flush=True)
    upstream_row = report["rows"].get(f"upstream/run_training/{models[-1]}", {})
    ours_row = report["rows"].get(f"sft/instructlab-training/{models[-1]}", {})
    if upstream_row.get("tokens_per_s") and ours_row.get("tokens_per_s"):
        report["sft_instructlab_vs_upstream"] = {
            "tokens_per_s_ratio": ours_row["tokens_per_s"] / upstream_row["tokens_per_s"],
            "wall_s": {"ours": ours_row["wall_s"], "upstream": upstream_row["wall_s"]},
        }
    (args.out / "gpu_checks.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
