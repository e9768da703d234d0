"""Running a training launcher as a child process whose output reaches the user as it happens."""

from __future__ import annotations

import subprocess
import sys
from collections import deque
from pathlib import Path

LOG_TAIL_LINES = 40


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The end of a rank's log, for the error a failed run raises."""
    if not path.is_file():
        return f"(no log at {path})"
    with path.open(encoding="utf-8", errors="replace") as f:
        return "".join(deque(f, maxlen=lines))


def run_streamed(command: list[str], log_path: Path) -> int:
    """Run ``command`` (an argument list, never a shell), copying each output line to our stdout
    (the task log, when run under Airflow) and appending it to ``log_path``; return its exit code.

    If we are interrupted, the child is terminated and reaped before the interruption propagates,
    so no torchrun outlives its launcher.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log_file, subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1
    ) as proc:
        try:
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                log_file.write(line)
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        return proc.wait()
