"""``python -m airflow_provider_training_hub.detached RUN_DIR UNWATCHED_SECONDS -- COMMAND...``:
a local training run that outlives the task process that started it.

A local run's task process can die (its worker killed) while the training goes on; the next try
then adopts the run instead of starting a second one (``targets/local.py``). So the training does
not write into the task's pipe, which a dead reader would turn into a crash at its next line: its
output goes to ``RUN_DIR/output.log`` (this process's stdout, which the command inherits), and the
waiting task reads it from there. This process leads the run's session, runs COMMAND, and writes
how it ended to ``RUN_DIR/exit.json``, which no process can write about its own SIGKILL.

A task waiting for the run touches ``RUN_DIR/watched``. When no task has for UNWATCHED_SECONDS
(the task died, and no retry came to adopt the run in time), the training is stopped with SIGTERM,
so that it saves its state for a later try to resume from: no GPU stays held by a run that
nobody watches. This module imports no Airflow and no torch.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from airflow_provider_training_hub.algorithms.launch import forward_termination, termination_requested
from airflow_provider_training_hub.data.atomic import AtomicWriter

OUTPUT = "output.log"  # the command's stdout and stderr
EXIT = "exit.json"  # {"returncode": N}, negative for a signal; written once the command has ended
WATCHED = "watched"  # touched by the task waiting for the run
RESULT = "result.json"  # the command's result (``training-hub ... --result-file``)
CHECK_SECONDS = 1


def unwatched_seconds(run_dir: Path) -> float:
    try:
        return time.time() - (run_dir / WATCHED).stat().st_mtime
    except FileNotFoundError:  # removed with the run directory: nobody will read the result
        return float("inf")


def supervise(run_dir: Path, unwatched_limit: float, command: list[str]) -> None:
    """Run ``command``, stop it once it is unwatched for ``unwatched_limit`` seconds, and record
    its exit code."""
    forward_termination()  # a stop (the task's on_kill) reaches the command, which saves its state
    returncode = -signal.SIGTERM  # stopped before it started
    if not termination_requested():
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        stopping = False
        while (returncode := child.poll()) is None:
            if not stopping and unwatched_seconds(run_dir) > unwatched_limit:
                print(f"[training-hub] no task has watched this run for {unwatched_limit:.0f} s: stopping it, "
                      "with its state saved for the next try", flush=True)
                child.send_signal(signal.SIGTERM)
                stopping = True
            time.sleep(CHECK_SECONDS)
    with AtomicWriter(str(run_dir / EXIT)) as exit_file:
        exit_file.write(json.dumps({"returncode": returncode}).encode())


def main(argv: list[str] | None = None) -> int:
    run_dir, unwatched_limit, separator, *command = argv if argv is not None else sys.argv[1:]
    if separator != "--" or not command:
        raise SystemExit(__doc__.splitlines()[0])
    supervise(Path(run_dir), float(unwatched_limit), command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
