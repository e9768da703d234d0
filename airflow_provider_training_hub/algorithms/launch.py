"""Running a training launcher as a child process whose output reaches the user as it happens."""

from __future__ import annotations

import os
import signal
import subprocess
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path

LOG_TAIL_LINES = 40
STOP_GRACE_SECONDS = 30


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The end of a rank's log, for the error a failed run raises."""
    if not path.is_file():
        return f"(no log at {path})"
    with path.open(encoding="utf-8", errors="replace") as f:
        return "".join(deque(f, maxlen=lines))


class StreamedProcess:
    """A child process (an argument list, never a shell) whose merged output is handed over line
    by line while it runs.

    With ``own_process_group`` the child leads a new process group, so ``stop()`` reaches
    everything it started (torchrun and its ranks) and no grandchild outlives a killed task.
    """

    def __init__(
        self, command: list[str], *, own_process_group: bool = False, env: Mapping[str, str] | None = None
    ) -> None:
        self.command = command
        self.own_process_group = own_process_group
        self.env = dict(env) if env is not None else None
        self.proc: subprocess.Popen[str] | None = None
        self.tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)

    def run(self, on_line: Callable[[str], None]) -> int:
        """Start, stream every line to ``on_line``, and return the exit code (negative: a signal).

        If we are interrupted, the child is stopped and reaped before the interruption propagates.
        """
        self.proc = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
            bufsize=1, start_new_session=self.own_process_group, env=self.env,
        )
        with self.proc:
            try:
                for line in self.proc.stdout:
                    self.tail.append(line)
                    on_line(line.rstrip("\n"))
            except BaseException:
                self.stop()
                raise
            return self.proc.wait()

    def stop(self, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM (the whole group, if it has its own), then SIGKILL after ``grace_seconds``."""
        proc = self.proc
        if proc is None:
            return
        self._signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            pass
        self._signal(signal.SIGKILL)  # ranks that ignored SIGTERM, even after their parent left
        proc.wait()

    def _signal(self, sig: signal.Signals) -> None:
        try:
            if self.own_process_group:
                os.killpg(self.proc.pid, sig)
            elif self.proc.poll() is None:
                self.proc.send_signal(sig)
        except ProcessLookupError:  # already gone
            pass


def run_streamed(command: list[str], log_path: Path) -> int:
    """Run ``command``, copying each output line to our stdout (the task log, under Airflow) and
    appending it to ``log_path``; return its exit code."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log_file:

        def on_line(line: str) -> None:
            print(line, flush=True)
            log_file.write(line + "\n")

        return StreamedProcess(command).run(on_line)
