"""Validating data teams' tables against the JSONL path: throughput and memory.

One deterministic set of short chats (``synthetic_chat.py``, ``--mb`` of JSONL), written four
ways: JSONL (the baseline), Parquet (row groups of 10,000), CSV (a ``messages`` column of JSON)
and a saved Hugging Face dataset. Each variant is ``validate_messages()`` with an output file, in
its own process (its peak is its own: VmHWM), one process each (``workers=1``, since the tables
are read in one process), in turn, cycle after cycle; each ratio quoted is the median of the
same-cycle ratios to JSONL.

    .venv/bin/python benchmarks/table_formats.py [--mb 200] [--cycles 3]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import synthetic_chat

WORK = Path(__file__).resolve().parent.parent / ".demo" / "tables-bench"
VARIANTS = {"jsonl": "chats.jsonl", "parquet": "chats.parquet", "csv": "chats.csv", "dataset": "chats-dataset"}


def write_tables(jsonl: Path) -> None:
    """The JSONL's records as Parquet, CSV and a saved dataset, a slice at a time."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq
    from datasets import Dataset

    schema = pa.schema([("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
                        ("unmask", pa.bool_())])
    rows = [json.loads(line) for line in jsonl.open(encoding="utf-8")]
    table = pa.Table.from_pylist([{"messages": r["messages"], "unmask": r.get("unmask")} for r in rows], schema)
    pq.write_table(table, WORK / VARIANTS["parquet"], row_group_size=10_000)
    as_text = pa.array([json.dumps(r["messages"]) for r in rows])
    pcsv.write_csv(pa.table({"messages": as_text, "unmask": table["unmask"]}), WORK / VARIANTS["csv"])
    Dataset(table).save_to_disk(str(WORK / VARIANTS["dataset"]))


def one(variant: str) -> dict:
    from airflow_provider_training_hub.data import validate_messages

    started = time.perf_counter()
    report = validate_messages(str(WORK / VARIANTS[variant]), output_path=str(WORK / f"out-{variant}.jsonl"), workers=1)
    seconds = time.perf_counter() - started
    peak = int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) / 1024
    return {"seconds": seconds, "samples": report.stats["samples"], "valid": report.valid, "peak_rss_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=200)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one)))
        return
    WORK.mkdir(parents=True, exist_ok=True)
    jsonl = WORK / VARIANTS["jsonl"]
    lines = synthetic_chat.write(jsonl, "short", int(args.mb * 2**20))
    write_tables(jsonl)
    runs: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
    for _ in range(args.cycles):
        for variant in VARIANTS:
            proc = subprocess.run([sys.executable, __file__, "--one", variant], capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
            runs[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(variant, runs[variant][-1], flush=True)
    summary = {"rows": lines, "jsonl_mib": round(jsonl.stat().st_size / 2**20, 1), "variants": {}}
    for variant, results in runs.items():
        assert all(r["valid"] and r["samples"] == lines for r in results), (variant, results)
        summary["variants"][variant] = {
            "rows_per_s": round(statistics.median(lines / r["seconds"] for r in results)),
            "seconds_per_cycle": [round(r["seconds"], 2) for r in results],
            "peak_rss_mib": round(statistics.median(r["peak_rss_mib"] for r in results)),
            "time_over_jsonl": round(statistics.median(
                r["seconds"] / base["seconds"] for r, base in zip(results, runs["jsonl"], strict=True)), 3),
        }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
