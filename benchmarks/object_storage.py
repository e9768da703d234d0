"""Training from a bucket against training from local paths: what object storage costs a run.

The same ``sft()`` run (pytorch backend, SmolLM2-135M-Instruct, the packaged 48-chat sample, one
epoch of 6 optimizer steps, one checkpoint and one full state), once with local paths (the
baseline) and once with ``model_path``, ``data_path`` and ``ckpt_output_dir`` in a real S3 server
(SeaweedFS on loopback, as in tests/test_object_storage.py): the download of the model and the
data to the scratch, and the upload of each checkpoint and full state whole with its marker.
Each run is its own process; the variants alternate (local, s3, local, s3, ...), and the ratio
quoted is the median of the same-cycle ratios.

    .venv/bin/python benchmarks/object_storage.py [--cycles 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from s3_server import started_s3_server  # noqa: E402

SAMPLE_DATA = REPO / "airflow_provider_training_hub" / "samples" / "sft_sample.jsonl"
RUN = {"backend": "pytorch", "num_epochs": 1, "learning_rate": 1e-5, "max_seq_len": 512, "effective_batch_size": 8,
       "random_seed": 3}


def one(model: str, data: str, ckpt: str) -> dict:
    from airflow_provider_training_hub import sft

    started = time.perf_counter()
    result = sft(model, data, ckpt, **RUN)
    return {"seconds": time.perf_counter() - started, "checkpoint": result.checkpoint, "steps": result.metrics["steps"]}


def bytes_under(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "DATA", "CKPT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one)))
        return
    from airflow_provider_training_hub.algorithms.scratch import SCRATCH_ENV
    from airflow_provider_training_hub.models import make_smollm2

    work = Path(tempfile.mkdtemp(prefix="object-storage-bench-"))
    try:
        model = make_smollm2(work / "smollm2")
        with started_s3_server(work / "s3") as server:
            fs = server.filesystem()
            fs.mkdir("bench")
            fs.put(f"{model}/", "bench/models/smollm2/", recursive=True)
            fs.put_file(str(SAMPLE_DATA), "bench/data/train.jsonl")
            environment = {**os.environ, "HF_HUB_OFFLINE": "1", **server.environment,
                           SCRATCH_ENV: str(work / "scratch")}
            runs: dict[str, list[dict]] = {"local": [], "s3": []}
            for cycle in range(args.cycles):
                for variant in runs:
                    if variant == "local":
                        paths = [str(model), str(SAMPLE_DATA), str(work / f"local-{cycle}")]
                    else:
                        paths = ["s3://bench/models/smollm2", "s3://bench/data/train.jsonl", f"s3://bench/runs/{cycle}"]
                    proc = subprocess.run([sys.executable, __file__, "--one", *paths], capture_output=True, text=True,
                                          env=environment)
                    if proc.returncode != 0:
                        sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
                    runs[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                    print(variant, runs[variant][-1], flush=True)
            sizes = {"model_mib": bytes_under(model) / 2**20,
                     "checkpoints_written_mib": bytes_under(work / "local-0") / 2**20}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    pairs = list(zip(runs["local"], runs["s3"], strict=True))
    ratios = [s["seconds"] / local["seconds"] for local, s in pairs]
    print(json.dumps({
        **{name: round(mib, 1) for name, mib in sizes.items()},
        "seconds": {variant: [round(r["seconds"], 1) for r in results] for variant, results in runs.items()},
        "s3_over_local_median": round(statistics.median(ratios), 3),
        "ratios": [round(r, 3) for r in ratios],
        "extra_seconds_median": round(statistics.median(s["seconds"] - local["seconds"] for local, s in pairs), 1),
    }, indent=1))


if __name__ == "__main__":
    main()
