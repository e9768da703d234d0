"""Validation memory stays flat: a file far larger than the bound validates within it."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILE_BYTES = 300_000_000
RSS_BOUND_MB = 120  # the interpreter with msgspec, fsspec and numpy imported is about 60 MB


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_validating_300_mb_stays_under_the_bound(tmp_path, workers):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from synthetic_chat import write

    path = tmp_path / "big.jsonl"
    lines = write(path, "short", FILE_BYTES)
    # VmHWM is this process's own peak; ru_maxrss would carry over the (large) pytest parent's
    # peak through fork+exec. The workers' is the largest of theirs (forked from this process).
    code = (
        "import resource, sys\n"
        "from airflow_provider_training_hub.data import validate_messages\n"
        "r = validate_messages(sys.argv[1], workers=int(sys.argv[3]))\n"
        "assert r.valid and r.stats['samples'] == int(sys.argv[2]), r.summary()\n"
        "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
        "print(int(hwm.split()[1]) // 1024, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path), str(lines), str(workers)],
                         capture_output=True, text=True, check=True)
    peak_mb, worker_peak_mb = map(int, out.stdout.split())
    assert path.stat().st_size >= FILE_BYTES
    assert peak_mb < RSS_BOUND_MB, f"peak RSS {peak_mb} MB for a {FILE_BYTES / 1e6:.0f} MB file"
    assert (worker_peak_mb > 0) == (workers > 1)
    assert worker_peak_mb < RSS_BOUND_MB, f"a worker's peak RSS {worker_peak_mb} MB"
