"""Messages-JSONL validation throughput and memory, against a raw read and naive baselines.

For each of two deterministic ~1 GB files (short and long chat lines, see synthetic_chat.py),
in one run, each variant in its own process (so peak RSS is its own), repeated and interleaved:

  raw       for line in f: pass                                   (the ceiling)
  naive     json.loads + a strict pydantic model per line          (the baseline)
  pydantic  pydantic-core typed JSON decode per line               (a library candidate)
  msgspec   msgspec typed decode per line, nothing else            (the library chosen)
  ours      validate_messages(), the code path of `training-hub validate`, statistics included
            (its default: forked workers, one per CPU up to 4, for a local file of 128 MiB or more)
  ours-1    the same in one process (workers=1)

    .venv/bin/python benchmarks/validate_throughput.py [--gb 1] [--reps 3] [--shapes short,long]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE.parent / ".demo" / "validate-bench"
VARIANTS = ("raw", "naive", "pydantic", "msgspec", "ours", "ours-1")


def _pydantic_model():
    from typing import Literal

    from pydantic import BaseModel, ConfigDict

    class Message(BaseModel):
        model_config = ConfigDict(strict=True)
        role: Literal["system", "user", "assistant", "pretraining"]
        content: str
        reasoning_content: str | None = None

    class Sample(BaseModel):
        model_config = ConfigDict(strict=True)
        messages: list[Message]
        unmask: bool = False

    return Sample


def run_variant(variant: str, path: str) -> dict:
    import msgspec

    from airflow_provider_training_hub.data import validate_messages  # imports are not timed
    from airflow_provider_training_hub.data.schema import Sample

    model = _pydantic_model()
    decode = msgspec.json.Decoder(Sample).decode
    started = time.perf_counter()
    if variant.startswith("ours"):
        report = validate_messages(path, workers=1 if variant == "ours-1" else None)
        assert report.valid, report.summary()
    else:
        with open(path, "rb") as f:
            if variant == "raw":
                for _line in f:
                    pass
            elif variant == "naive":
                for line in f:
                    model.model_validate(json.loads(line))
            elif variant == "pydantic":
                for line in f:
                    model.model_validate_json(line)
            else:
                for line in f:
                    decode(line)
    seconds = time.perf_counter() - started
    with open(path, "rb") as f:
        lines = sum(1 for _ in f)  # not timed
    size = os.path.getsize(path)
    return {"mb_per_s": size / 1e6 / seconds, "lines_per_s": lines / seconds, "seconds": seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "lines": lines,
            # the largest of the forked workers (each also counts the pages it shares with this one)
            "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--shapes", default="short,long")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "PATH"))
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_variant(*args.one)), flush=True)
        return
    sys.path.insert(0, str(HERE))
    from synthetic_chat import write

    WORK.mkdir(parents=True, exist_ok=True)
    summary = {}
    for shape in args.shapes.split(","):
        path = WORK / f"{shape}.jsonl"
        if not path.is_file() or abs(path.stat().st_size - args.gb * 1e9) > 0.01e9:
            write(path, shape, int(args.gb * 1e9))
        runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for _ in range(args.reps):
            for variant in VARIANTS:
                proc = subprocess.run([sys.executable, __file__, "--one", variant, str(path)],
                                      capture_output=True, text=True, check=True)
                runs[variant].append(json.loads(proc.stdout.split("RESULT ", 1)[1]))
                print(shape, variant, runs[variant][-1], flush=True)

        def ratio(a: str, b: str) -> float:
            return statistics.median(x["mb_per_s"] / y["mb_per_s"] for x, y in zip(runs[a], runs[b]))

        def best(v: str) -> float:  # the run least disturbed by the machine's other tenants
            return max(r["mb_per_s"] for r in runs[v])

        summary[shape] = {
            "file_mb": round(path.stat().st_size / 1e6),
            "lines": runs["raw"][0]["lines"],
            **{v: {k: round(statistics.median(r[k] for r in runs[v]), 1)
                  for k in ("mb_per_s", "lines_per_s", "peak_rss_mb", "worker_peak_rss_mb")}
               for v in VARIANTS},
            "ours_vs_naive": round(ratio("ours", "naive"), 2),
            "ours_vs_raw": round(ratio("ours", "raw"), 3),
            "pydantic_vs_naive": round(ratio("pydantic", "naive"), 2),
            "msgspec_vs_naive": round(ratio("msgspec", "naive"), 2),
            "msgspec_vs_raw": round(ratio("msgspec", "raw"), 3),
            "ours_1_vs_naive": round(ratio("ours-1", "naive"), 2),
            "ours_1_vs_raw": round(ratio("ours-1", "raw"), 3),
            "ours_vs_ours_1": round(ratio("ours", "ours-1"), 2),  # what the workers bring
            "best_ours_vs_naive": round(best("ours") / best("naive"), 2),
            "best_ours_vs_raw": round(best("ours") / best("raw"), 3),
        }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
