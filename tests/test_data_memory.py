"""Validation memory stays flat: a file far larger than the bound validates within it."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILE_BYTES = 300_000_000
RSS_BOUND_MB = 120  # the interpreter with msgspec, fsspec and numpy imported is about 60 MB


@pytest.mark.slow
def test_validating_300_mb_stays_under_the_bound(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from synthetic_chat import write

    path = tmp_path / "big.jsonl"
    lines = write(path, "short", FILE_BYTES)
    # VmHWM is this process's own peak; ru_maxrss would carry over the (large) pytest parent's
    # peak through fork+exec.
    code = (
        "import sys\n"
        "from airflow_provider_training_hub.data import validate_messages\n"
        "r = validate_messages(sys.argv[1])\n"
        "assert r.valid and r.stats['samples'] == int(sys.argv[2]), r.summary()\n"
        "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
        "print(int(hwm.split()[1]) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path), str(lines)], capture_output=True, text=True, check=True)
    peak_mb = int(out.stdout.strip())
    assert path.stat().st_size >= FILE_BYTES
    assert peak_mb < RSS_BOUND_MB, f"peak RSS {peak_mb} MB for a {FILE_BYTES / 1e6:.0f} MB file"
