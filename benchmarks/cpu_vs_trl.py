"""CPU fine-tuning: two engines on the same run, the same machine, interleaved.

Engines: ``ours-sft`` / ``ours-lora`` / ``ours-dpo`` (``sft()`` / ``lora_sft()`` / ``dpo()`` on the
``pytorch`` backend) and ``trl-sft`` / ``trl-lora`` / ``trl-dpo`` (TRL's SFTTrainer, with a peft
``LoraConfig`` for LoRA; its DPOTrainer, run by ``tests/support/trl_dpo.py``, the runner the
agreement test holds ``dpo()`` to). All get
SmolLM2-135M-Instruct in fp32, the same pre-tokenised data (instructlab's processing of a
deterministic synthetic chat set: input_ids + labels), 8 samples per optimizer step, max length
512, AdamW (0.9/0.95), cosine schedule, grad-norm clip 1.0, lr 1e-4 (SFT) or 2e-4 (LoRA,
training_hub's default), and for LoRA r=16, alpha=32, dropout 0 on every linear projection of the
attention and MLP blocks (training_hub's defaults; TRL gets ``target_modules="all-linear"``, the
same set, which the summary checks). Each run is its own process (peak RSS is per run); the
engines run in turn, cycle after cycle (A, B, C, A, B, C, ...), and each comparison quoted is the
median over cycles of the ratio of two engines' runs in the same cycle.

DPO: 8 pairs per step of a deterministic synthetic set (a question, two answers of about 60-110
words), lr 5e-6, beta 0.1, sigmoid loss, max_length 512, full fine-tuning; TRL keeps a frozen copy
of the model for the reference log-probabilities (its default), ours computes them once before the
first step. Tokens counted alike on both sides: every token of both sequences of each pair.

    .venv/bin/python benchmarks/cpu_vs_trl.py                                    # trl-sft, ours-sft
    .venv/bin/python benchmarks/cpu_vs_trl.py --engines trl-lora ours-lora ours-sft
    .venv/bin/python benchmarks/cpu_vs_trl.py --engines trl-dpo ours-dpo --cycles 2 --steps 10
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
LR = {"sft": 1e-4, "lora": 2e-4, "dpo": 5e-6}
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
ENGINES = ("ours-sft", "ours-lora", "ours-dpo", "trl-sft", "trl-lora", "trl-dpo")
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


def make_pairs(path: Path, n: int, seed: int = 0) -> None:
    """Preference pairs of about 190 tokens per sequence (about 1,500 per step of 8 pairs)."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))) + "?"
            chosen, rejected = (" ".join(rng.choice(WORDS) for _ in range(rng.randint(60, 110))) + "." for _ in "cr")
            f.write(json.dumps({"prompt": [{"role": "user", "content": q}],
                                "chosen": [{"role": "assistant", "content": chosen}],
                                "rejected": [{"role": "assistant", "content": rejected}]}) + "\n")


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def run_ours(kind: str, model: Path, data: Path, steps: int) -> dict:
    from airflow_provider_training_hub import dpo, lora_sft, sft
    from airflow_provider_training_hub.checkpoints import read_metrics

    out = WORK / f"ours-{kind}-{time.time_ns()}"
    common = dict(backend="pytorch", num_epochs=1, effective_batch_size=BATCH, learning_rate=LR[kind],
                  max_seq_len=MAX_LEN, checkpoint_at_epoch=True, accelerate_full_state_at_epoch=False,
                  data_output_dir=str(WORK / "ours-data"))
    if kind == "dpo":
        del common["max_seq_len"], common["data_output_dir"]
        result, adapted = dpo(str(model), str(WORK / "pairs.jsonl"), str(out), max_length=MAX_LEN, **common), None
    elif kind == "lora":
        result = lora_sft(str(model), str(data), str(out), lora_r=LORA["r"], lora_alpha=LORA["alpha"],
                          lora_dropout=LORA["dropout"], save_steps=0, **common)
        adapted = sorted(json.loads(Path(result.checkpoint, "adapter_config.json").read_text())["target_modules"])
    else:
        result, adapted = sft(str(model), str(data), str(out), **common), None
    records = read_metrics(out)[:steps]
    seconds = sum(r["num_tokens"] / r["tokens_per_second"] for r in records)
    if kind == "dpo":  # the reference pass before the first step, which TRL spreads over its steps
        seconds += read_metrics(out, "reference_seconds")[0]["reference_seconds"]
    tokens = sum(r["num_tokens"] for r in records)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # torchrun and its rank
    return {"tokens_per_s": tokens / seconds, "final_loss": records[-1]["avg_loss"], "peak_rss_mb": peak,
            "steps": len(records), "tokens": tokens, "checkpoint_mb": dir_mb(Path(result.checkpoint)),
            "target_modules": adapted, "final_margin": records[-1].get("rewards/margins")}


def step_timer(step_seconds: list[float], losses: list[float] | None = None):
    """A TRL callback that times each optimizer step as ours is timed, from step begin to step
    end, into ``step_seconds`` (and collects the logged losses into ``losses``)."""
    from transformers import TrainerCallback

    class Measure(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.began = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            step_seconds.append(time.perf_counter() - self.began)

        def on_log(self, args, state, control, logs=None, **kw):
            if losses is not None and logs and "loss" in logs:
                losses.append(logs["loss"])

    return Measure()


def run_trl(kind: str, model: Path, data: Path, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    rows = [json.loads(line) for line in (WORK / "ours-data" / "data.jsonl").open()]
    dataset = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    losses: list[float] = []
    step_seconds: list[float] = []

    out = WORK / f"trl-{kind}-{time.time_ns()}"
    config = SFTConfig(
        output_dir=str(out), per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1, max_steps=steps, learning_rate=LR[kind], lr_scheduler_type="cosine",
        warmup_steps=0, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, weight_decay=0.0,
        max_grad_norm=1.0, padding_free=PADDING_FREE,
        # inputs are already cut to MAX_LEN by the shared preparation; TRL refuses max_length with padding_free
        max_length=None if PADDING_FREE else MAX_LEN,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=42, bf16=False, fp16=False,
        dataloader_num_workers=0,
    )
    peft_config = None
    if kind == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=lm, args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[step_timer(step_seconds, losses)], peft_config=peft_config)
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
    trainer.save_model(str(out / "final"))
    adapted = sorted(trainer.model.peft_config["default"].target_modules) if kind == "lora" else None
    return {"tokens_per_s": tokens / seconds, "final_loss": losses[-1], "peak_rss_mb": peak,
            "steps": steps, "tokens": tokens, "checkpoint_mb": dir_mb(out / "final"), "target_modules": adapted}


def run_trl_dpo_timed(model: Path, steps: int) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from support.trl_dpo import run_trl_dpo

    step_seconds: list[float] = []
    out = WORK / f"trl-dpo-{time.time_ns()}"
    logs = run_trl_dpo(model, WORK / "pairs.jsonl", out, steps=steps, batch=BATCH, learning_rate=LR["dpo"],
                       max_length=MAX_LEN, callbacks=[step_timer(step_seconds)])
    tokens = float(logs[-1]["num_tokens"])  # TRL's count: every token of both sequences, summed over the steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"tokens_per_s": tokens / sum(step_seconds), "final_loss": logs[-1]["loss"], "peak_rss_mb": peak,
            "steps": steps, "tokens": tokens, "checkpoint_mb": 0.0, "target_modules": None,
            "final_margin": logs[-1]["rewards/margins"]}


def run_one(engine: str, steps: int) -> dict:
    who, kind = engine.split("-")
    model, data = WORK / "smollm2", WORK / "chat.jsonl"
    if engine == "trl-dpo":
        return run_trl_dpo_timed(model, steps)
    return (run_ours if who == "ours" else run_trl)(kind, model, data, steps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=["trl-sft", "ours-sft"],
                        help="each is compared with every one before it")
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--one", choices=ENGINES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args.steps)), flush=True)
        return
    WORK.mkdir(parents=True, exist_ok=True)
    model, data = WORK / "smollm2", WORK / "chat.jsonl"
    if not (model / "config.json").is_file():
        from airflow_provider_training_hub.models import make_smollm2

        make_smollm2(model)
    make_data(data, BATCH * args.steps)
    make_pairs(WORK / "pairs.jsonl", BATCH * args.steps)
    from airflow_provider_training_hub.data import prepare_for_training

    # Every engine reads this one preparation (instructlab's processing): identical tokens and labels.
    print(prepare_for_training(str(data), str(model), str(WORK / "ours-data"), MAX_LEN), flush=True)
    results: dict[str, list[dict]] = {engine: [] for engine in args.engines}
    for engine in args.engines * args.cycles:
        proc = subprocess.run([sys.executable, __file__, "--one", engine, "--steps", str(args.steps)],
                              capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{engine} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        results[engine].append(json.loads(line[7:]))
        print(engine, results[engine][-1], flush=True)

    def compare(a: str, b: str) -> dict:
        """``b`` against ``a``: medians over cycles of the same-cycle ratios (and relative loss gap)."""
        pairs = list(zip(results[a], results[b]))
        ratios = {key: [y[key] / x[key] for x, y in pairs if x[key]]  # TRL's DPO run saves no checkpoint
                  for key in ("tokens_per_s", "peak_rss_mb", "checkpoint_mb")}
        return {
            **{f"{key}_ratio": statistics.median(values) for key, values in ratios.items() if values},
            "tokens_per_s_ratios": ratios["tokens_per_s"],
            "final_loss_gap": statistics.median((y["final_loss"] - x["final_loss"]) / x["final_loss"] for x, y in pairs),
        }

    summary = {
        "comparisons": {f"{b} vs {a}": compare(a, b) for i, a in enumerate(args.engines) for b in args.engines[i + 1:]},
        **{key: {engine: statistics.median(r[key] for r in runs) for engine, runs in results.items()}
           for key in ("tokens_per_s", "peak_rss_mb", "checkpoint_mb")},
        "final_loss": {engine: [round(r["final_loss"], 4) for r in runs] for engine, runs in results.items()},
        "target_modules": {engine: runs[0]["target_modules"] for engine, runs in results.items()},
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
