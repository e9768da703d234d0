"""CPU fine-tuning throughput: our `pytorch` backend against TRL's SFTTrainer, same run, same machine.

Both get SmolLM2-135M-Instruct in fp32, the same pre-tokenised data (instructlab's processing of
a deterministic synthetic chat set: input_ids + labels), 8 samples per optimizer step, max length
512, 20 optimizer steps, AdamW (0.9/0.95), cosine schedule, lr 1e-4, grad-norm clip 1.0. Each run
is its own process (peak RSS is per run); runs are interleaved TRL, ours, TRL, ours, ... and the
figure quoted is the median of the pairwise ratios.

    .venv/bin/python benchmarks/sft_cpu_vs_trl.py [--pairs 3] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo" / "bench"
BATCH = 8
MAX_LEN = 512
LR = 1e-4
PADDING_FREE = os.environ.get("TRL_PADDING_FREE", "1") == "1"
WORDS = ("model data train token batch loss step learn answer question pipeline airflow heron cluster "
         "gradient epoch sample weight layer attention value query graph node rank").split()


def make_data(path: Path, n: int, seed: int = 0) -> None:
    """Chats of about 180 tokens (about 1,450 tokens per optimizer step of 8): a short question and a longer answer, deterministic."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))) + "?"
            a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(80, 150))) + "."
            f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n")


def run_ours(model: Path, data: Path, steps: int) -> dict:
    from airflow_provider_training_hub import sft
    from airflow_provider_training_hub.checkpoints import read_metrics

    out = WORK / f"ours-{time.time_ns()}"
    sft(str(model), str(data), str(out), backend="pytorch", num_epochs=1, effective_batch_size=BATCH,
        learning_rate=LR, max_seq_len=MAX_LEN, checkpoint_at_epoch=False, accelerate_full_state_at_epoch=False,
        data_output_dir=str(WORK / "ours-data"))
    records = read_metrics(out)[:steps]
    seconds = sum(r["num_tokens"] / r["tokens_per_second"] for r in records)
    tokens = sum(r["num_tokens"] for r in records)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"tokens_per_s": tokens / seconds, "final_loss": records[-1]["avg_loss"], "peak_rss_mb": peak,
            "steps": len(records), "tokens": tokens}


def run_trl(model: Path, data: Path, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = [json.loads(line) for line in (WORK / "ours-data" / "data.jsonl").open()]
    dataset = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    losses: list[float] = []
    step_seconds: list[float] = []

    class Measure(TrainerCallback):
        """Times each optimizer step as ours is timed: from step begin to step end."""

        def on_step_begin(self, args, state, control, **kw):
            self.began = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            step_seconds.append(time.perf_counter() - self.began)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    config = SFTConfig(
        output_dir=str(WORK / f"trl-{time.time_ns()}"), per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1, max_steps=steps, learning_rate=LR, lr_scheduler_type="cosine",
        warmup_steps=0, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, weight_decay=0.0,
        max_grad_norm=1.0, padding_free=PADDING_FREE,
        # inputs are already cut to MAX_LEN by the shared preparation; TRL refuses max_length with padding_free
        max_length=None if PADDING_FREE else MAX_LEN,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=42, bf16=False, fp16=False,
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(model=lm, args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[Measure()])
    seen_tokens = []
    collate = trainer.data_collator

    def counting_collator(features):
        seen_tokens.append(sum(len(f["input_ids"]) for f in features))
        return collate(features)

    trainer.data_collator = counting_collator
    trainer.train()
    seconds = sum(step_seconds)
    tokens = sum(seen_tokens[:steps])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"tokens_per_s": tokens / seconds, "final_loss": losses[-1], "peak_rss_mb": peak,
            "steps": steps, "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--one", choices=["ours", "trl"])
    args = parser.parse_args()
    model, data = WORK / "smollm2", WORK / "chat.jsonl"
    if args.one:
        result = (run_ours if args.one == "ours" else run_trl)(model, data, args.steps)
        print("RESULT " + json.dumps(result), flush=True)
        return
    WORK.mkdir(parents=True, exist_ok=True)
    if not (model / "config.json").is_file():
        from airflow_provider_training_hub.models import make_smollm2

        make_smollm2(model)
    make_data(data, BATCH * args.steps)
    from airflow_provider_training_hub.data import prepare_for_training

    # Both engines read this one preparation (instructlab's processing): identical tokens and labels.
    print(prepare_for_training(str(data), str(model), str(WORK / "ours-data"), MAX_LEN), flush=True)
    results: dict[str, list[dict]] = {"ours": [], "trl": []}
    for engine in ["trl", "ours"] * args.pairs:
        proc = subprocess.run([sys.executable, __file__, "--one", engine, "--steps", str(args.steps)],
                              capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{engine} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        results[engine].append(json.loads(line[7:]))
        print(engine, results[engine][-1], flush=True)
    ratios = [o["tokens_per_s"] / t["tokens_per_s"] for o, t in zip(results["ours"], results["trl"])]
    loss_gaps = [abs(o["final_loss"] - t["final_loss"]) / t["final_loss"] for o, t in zip(results["ours"], results["trl"])]
    summary = {
        "median_speedup_vs_trl": statistics.median(ratios),
        "ratios": ratios,
        "median_tokens_per_s": {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in results.items()},
        "median_peak_rss_mb": {k: statistics.median(r["peak_rss_mb"] for r in v) for k, v in results.items()},
        "final_loss": {k: [round(r["final_loss"], 4) for r in v] for k, v in results.items()},
        "median_final_loss_gap": statistics.median(loss_gaps),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
