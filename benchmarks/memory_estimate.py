"""The memory estimate (``estimate()``, the pytorch backend's layout in float32, as it trains on a
CPU) against the peaks measured on this CPU, for the tiny model and SmolLM2-135M-Instruct, ``sft``
and ``lora_sft``.

Each run is ``cpu_vs_trl``'s (its data, batch of 8, max length 512, the first ``--steps`` steps),
in its own process; its peak is the largest process's peak RSS (the rank). What the rank holds
before it trains (the interpreter, torch, transformers, peft, the tokenizer) is not in the
estimate, which counts what training adds, so it is measured apart, in a process that imports
and loads just that, and subtracted: ``trained`` = peak - floor. The runs go in turn, cycle after
cycle; each figure quoted is the median over cycles.

    .venv/bin/python benchmarks/memory_estimate.py [--cycles 2] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import cpu_vs_trl as runs

from airflow_provider_training_hub.algorithms import SFTParams
from airflow_provider_training_hub.algorithms.backends.pytorch_layout import CPU_ROW_TOKENS, pytorch_layout
from airflow_provider_training_hub.algorithms.memory import ModelShape, memory_estimate

WORK = runs.WORK.parent / "memory"
MIB = 1 << 20
# VmHWM, not ru_maxrss: Linux carries the forking parent's high-water mark over exec into the latter.
FLOOR = """
import re, sys
import peft  # noqa: F401
import airflow_provider_training_hub.algorithms.backends.pytorch_trainer  # noqa: F401  (torch, transformers)
from transformers import AutoTokenizer
AutoTokenizer.from_pretrained(sys.argv[1])
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())[1]) / 1024)
"""


def estimated(model: Path, kind: str) -> dict:
    shape = ModelShape.read(str(model))
    params = SFTParams.parse({"model_path": str(model), "data_path": "unused.jsonl", "ckpt_output_dir": "unused",
                              "max_seq_len": runs.MAX_LEN})
    tokens = min(CPU_ROW_TOKENS, params.batch_token_cap, runs.BATCH * runs.MAX_LEN)  # one packed row
    result = memory_estimate(shape, kind, num_gpus=1, tokens_per_gpu=tokens, lora_r=runs.LORA["r"],
                             layout=pytorch_layout(bf16=False))
    low, mid, high = (b / MIB for b in result.bounds)
    return {"low_mib": low, "expected_mib": mid, "high_mib": high, "parts": result.parts()}


def one(model: Path, kind: str, steps: int) -> dict:
    runs.WORK = WORK / model.name  # the prepared data belongs to this model's tokenizer
    runs.WORK.mkdir(parents=True, exist_ok=True)
    return runs.run_ours(kind, model, WORK / "chat.jsonl", steps)


def subprocess_json(args: list[str]) -> str:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        sys.exit(f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(Path(args.one[0]), args.one[1], args.steps)), flush=True)
        return
    from airflow_provider_training_hub.models import make_smollm2, make_tiny_model

    WORK.mkdir(parents=True, exist_ok=True)
    runs.make_data(WORK / "chat.jsonl", runs.BATCH * args.steps)
    corpus = (WORK / "chat.jsonl").read_text(encoding="utf-8").splitlines()
    models = {"tiny": WORK / "tiny", "smollm2": WORK / "smollm2"}
    if not (models["tiny"] / "config.json").is_file():
        make_tiny_model(models["tiny"], corpus)
    if not (models["smollm2"] / "config.json").is_file():
        make_smollm2(models["smollm2"])
    cases = [(name, kind) for name in models for kind in ("sft", "lora")]
    measured: dict[tuple[str, str], list[dict]] = {case: [] for case in cases}
    floors: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.cycles):
        for name, model in models.items():
            floors[name].append(float(subprocess_json(["-c", FLOOR, str(model)])))
        for name, kind in cases:
            result = json.loads(subprocess_json([__file__, "--one", str(models[name]), kind, "--steps",
                                                 str(args.steps)]))
            measured[(name, kind)].append(result)
            print(name, kind, round(result["peak_rss_mb"]), "MiB peak", flush=True)
    summary = {}
    for name, kind in cases:
        floor = statistics.median(floors[name])
        peak = statistics.median(r["peak_rss_mb"] for r in measured[(name, kind)])
        estimate = estimated(models[name], kind)
        trained = peak - floor
        summary[f"{name} {kind}"] = {
            "peak_mib": round(peak), "floor_mib": round(floor), "trained_mib": round(trained),
            **{key: round(value, 1) if isinstance(value, float) else value for key, value in estimate.items()},
            "trained_over_expected": round(trained / estimate["expected_mib"], 3),
            "within_bounds": estimate["low_mib"] <= trained <= estimate["high_mib"],
        }
    print(json.dumps({"steps": args.steps, "cycles": args.cycles, "cases": summary}, indent=2))


if __name__ == "__main__":
    main()
