"""The phase table that .ci/run prints as its last lines: when each phase began, counted from the
start of the run, and how long it took. Phases that ran beside each other overlap, so the walls do
not add up to the total; the start column shows what ran with what.

    python3 scripts/phases.py PHASES.tsv BEGAN

PHASES.tsv has one line per phase, appended by scripts/testbed.sh's `timed` and `phase_record`:
began, ended (seconds since the epoch), exit status, name. BEGAN is the run's own start.
"""

from __future__ import annotations

import sys
import time


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def table(lines: list[str], began: float, now: float) -> str:
    phases = sorted((float(start), float(end), int(status), name)
                    for start, end, status, name in (line.rstrip("\n").split("\t", 3) for line in lines if line.strip()))
    rows = [f"{'start':>8}  {'wall':>8}  phase"]
    for start, end, status, name in phases:
        failed = f"  (FAILED, exit {status})" if status else ""
        rows.append(f"{minutes(start - began):>8}  {minutes(end - start):>8}  {name}{failed}")
    rows.append(f"{'':>8}  {minutes(now - began):>8}  the whole run")
    return "\n".join(rows)


if __name__ == "__main__":
    path, began = sys.argv[1], float(sys.argv[2])
    with open(path, encoding="utf-8") as phases:
        print(table(phases.readlines(), began, time.time()))
