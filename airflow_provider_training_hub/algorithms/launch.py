"""Running a training launcher as a child process whose output reaches the user as it happens,
and stopping it so that it can save its state first.

A stop is one SIGTERM to the process we started: a pod's PID 1 receives the signal alone, so the
local hook does the same, and each process passes it on once to the child it runs
(``forward_termination``). torchrun then stops its ranks, which save their full state at the
current step before they exit (``pytorch_trainer``).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path

LOG_TAIL_LINES = 40
STOP_GRACE_SECONDS = 30
EXIT_STOPPED = 3  # a training process stopped by SIGTERM, with its full state saved
# torchrun waits this many seconds for its ranks to stop before it kills them (default 30).
TORCHRUN_SHUTDOWN_TIMEOUT_ENV = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"

_termination_requested = False


def forward_termination() -> None:
    """SIGTERM to this process becomes a request to stop: remembered (``termination_requested``)
    and passed on to its children running now, whoever started them (ours, or instructlab's own
    torchrun); a ``StreamedProcess`` started later is not started at all."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: object) -> None:
    global _termination_requested
    _termination_requested = True
    for pid in _children():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:  # ended meanwhile
            pass


def _children() -> list[int]:
    """This process's direct children (Linux: /proc/<pid>/task/<tid>/children)."""
    pids = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            pids += [int(pid) for pid in (task / "children").read_text().split()]
        except OSError:  # the thread ended meanwhile
            continue
    return pids


def termination_requested() -> bool:
    return _termination_requested


def stop_environment(grace_seconds: int) -> dict[str, str]:
    """The environment of a training process that is killed ``grace_seconds`` after a stop:
    torchrun gives its ranks almost all of it, to finish their step and save."""
    return {TORCHRUN_SHUTDOWN_TIMEOUT_ENV: str(max(1, grace_seconds - 5))}


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

        After a termination request the child is not started (as if SIGTERM had stopped it at
        once). If we are interrupted, the child is stopped and reaped before the interruption
        propagates.
        """
        if _termination_requested:
            return -signal.SIGTERM
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
        """SIGTERM to the child (which passes it on), then, after ``grace_seconds``, SIGKILL to it
        and, if it has its own process group, to everything left in that group."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            pass
        try:
            if self.own_process_group:
                os.killpg(proc.pid, signal.SIGKILL)  # what did not stop in time, even after its parent left
            elif proc.poll() is None:
                proc.kill()
        except ProcessLookupError:  # already gone
            pass
        proc.wait()


def run_streamed(command: list[str], log_path: Path) -> int:
    """Run ``command``, copying each output line to our stdout (the task log, under Airflow) and
    appending it to ``log_path``; return its exit code."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log_file:

        def on_line(line: str) -> None:
            print(line, flush=True)
            log_file.write(line + "\n")

        return StreamedProcess(command).run(on_line)
