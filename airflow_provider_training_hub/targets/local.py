"""Local execution: ``training-hub <algorithm> --config ...`` on the worker's host, in a session of
its own under ``detached`` (which records how it ended).

The run leads its own process group: a crash or an OOM kill in training ends that process, not
the Airflow worker, and ``kill`` reaches every rank torchrun started. It writes to a file in its
run directory, not into the task's pipe, so it outlives a task process that dies (a worker
killed): the next try on this host adopts it (``find``), reads its output from where it is, and
returns its result, instead of starting a second run into the same checkpoint directory. A run
that no task watches for ``TaskSettings.unwatched_timeout`` stops itself with its state saved.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowException

from airflow_provider_training_hub.algorithms import AlgorithmRegistry
from airflow_provider_training_hub.algorithms.launch import EXIT_STOPPED, LOG_TAIL_LINES, stop_environment
from airflow_provider_training_hub.algorithms.scratch import REMOTE_CAPABLE
from airflow_provider_training_hub.cli import EXIT_BAD_CONFIG
from airflow_provider_training_hub.detached import EXIT, OUTPUT, RESULT, WATCHED
from airflow_provider_training_hub.log_lines import level
from airflow_provider_training_hub.object_storage import is_remote
from airflow_provider_training_hub.run_states import RUNNING, SUCCEEDED
from airflow_provider_training_hub.run_identity import differences
from airflow_provider_training_hub.targets import ExecutionTarget, TaskTry, TrainingRun

CLI_MODULE = "airflow_provider_training_hub.cli"
DETACHED_MODULE = "airflow_provider_training_hub.detached"
RUN_MARKER_ENV = "TRAINING_HUB_RUN"  # the task try, in the environment of all of a run's processes
LOCAL_RUN_KEY = "local_run"  # the XCom (and task state store entry) that locates a run
TRAINING_FILE = "training.json"  # what the run trains: algorithm, backend, parameters
READ_SECONDS = 1  # how often a waiting task reads the run's new output


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), ``None`` once it has ended
    (gone, or a zombie): with the pid, it tells our run from a process that later got its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, *fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return None if state in ("Z", "X") else fields[18]


def run_marker(task: TaskTry) -> str:
    """``dag/run/task/map_index/try``: dag and task ids hold no ``/``, so the part before the try
    names the task instance exactly, whatever the run id holds."""
    return f"{task.dag_id}/{task.run_id}/{task.task_id}/{task.map_index}/{task.try_number}"


def marked_processes() -> dict[int, str]:
    """pid -> ``RUN_MARKER_ENV`` of every process of a local run on this host (readable by us)."""
    found = {}
    prefix = f"{RUN_MARKER_ENV}=".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or another user's
            continue
        for item in environ.split(b"\0"):
            if item.startswith(prefix):
                found[int(entry.name)] = item[len(prefix):].decode("utf-8", "replace")
    return found


class LocalTarget(ExecutionTarget):
    adoptable = True
    _process: subprocess.Popen[bytes] | None = None  # the run this try started
    _watching: dict[str, Any] | None = None  # the run this try waits for: its own, or one it adopted

    def default_checkpoint_root(self) -> str:
        from airflow.configuration import AIRFLOW_HOME

        return os.path.join(AIRFLOW_HOME, "training_hub", "checkpoints")

    def check(self, run: TrainingRun) -> None:
        run.params.check_local_paths()

    @staticmethod
    def _config(run: TrainingRun) -> dict[str, Any]:
        # What the task set, not the defaults: the training process applies the same defaults,
        # and a backend can tell a choice from a default (instructlab's LoRA and full state).
        return run.params.model_dump(mode="json", exclude_unset=True, exclude_none=True)

    def submit(self, run: TrainingRun) -> dict[str, Any]:
        self._stop_earlier_tries(run.task)
        run_dir = Path(tempfile.mkdtemp(prefix="training-hub-"))
        (run_dir / TRAINING_FILE).write_text(json.dumps(self._training(run)), encoding="utf-8")
        config = run_dir / "config.json"
        config.write_text(json.dumps(self._config(run)), encoding="utf-8")
        command = [sys.executable, "-m", CLI_MODULE, run.algorithm, "--backend", run.backend,
                   "--config", str(config), "--result-file", str(run_dir / RESULT)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", RUN_MARKER_ENV: run_marker(run.task),
               **stop_environment(self.settings.termination_grace_period_seconds)}
        if any(is_remote(getattr(run.params, name, None)) for name in REMOTE_CAPABLE):
            env.update(self.storage_environment())  # the process's environment: never its command or a file
        (run_dir / WATCHED).touch()
        with (run_dir / OUTPUT).open("ab") as output:
            self._process = subprocess.Popen(
                [sys.executable, "-m", DETACHED_MODULE, str(run_dir), str(run.settings.unwatched_timeout), "--", *command],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, start_new_session=True, env=env,
            )
        pid = self._process.pid
        self.log.info("Started local %s training (%s backend), process %d, output in %s: %s", run.algorithm,
                      run.backend, pid, run_dir, " ".join(command))
        self._watching = {"dir": str(run_dir), "pid": pid, "started": process_start(pid), "host": socket.gethostname()}
        return {LOCAL_RUN_KEY: self._watching}

    @staticmethod
    def _training(run: TrainingRun) -> dict[str, Any]:
        """What a run trains, in the form ``run_identity.differences`` compares."""
        return {"algorithm": run.algorithm, "parameters": {"backend": run.backend, **LocalTarget._config(run)}}

    def _stop_earlier_tries(self, task: TaskTry) -> None:
        """Stop what another try of this task instance left running on this host (not adopted:
        ``durable=False``, or its place never reached the task state store), so that two runs never
        write one checkpoint directory."""
        instance, _, _ = run_marker(task).rpartition("/")

        def groups() -> dict[int, str]:  # process group -> its try, of every earlier try's live process
            found = {}
            for pid, marker in marked_processes().items():
                other, _, try_number = marker.rpartition("/")
                if other == instance and try_number != str(task.try_number):
                    try:
                        found[os.getpgid(pid)] = try_number
                    except ProcessLookupError:  # ended meanwhile
                        continue
            return found

        for group, try_number in sorted(groups().items()):
            self.log.warning("The local run of try %s of this task (process group %d) is still running; stopping "
                             "it before this try's run, so that two runs never write one checkpoint directory",
                             try_number, group)
            # its leader (``detached``) passes the SIGTERM on; without it, the group gets it
            self._stop_group(group, lambda: group in groups(), whole_group=group not in marked_processes())

    def find(self, run: TrainingRun, located: dict[str, Any]) -> dict[str, Any] | None:
        where = located[LOCAL_RUN_KEY]
        run_dir = Path(where["dir"])
        if where["host"] != socket.gethostname():
            self.log.warning("The local run of an earlier try is on host %s, and this try runs on %s: a local run "
                             "is adopted only on its own host (it stops itself, with its state saved, once "
                             "unwatched)", where["host"], socket.gethostname())
            return None
        try:
            then = json.loads((run_dir / TRAINING_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            self.log.info("The local run of an earlier try is gone (%s was removed)", run_dir)
            return None
        if changed := differences(then, self._training(run)):
            self.log.warning("The local run of an earlier try (%s) trains otherwise than this try would (%s): "
                             "not adopting it", run_dir, "; ".join(changed))
            self._stop(where)
        elif (run_dir / EXIT).is_file():
            state = self._ended(run_dir, deque())
            if state["returncode"] == 0 and state["result"] is not None:
                shutil.rmtree(run_dir, ignore_errors=True)
                return {**state, "status": SUCCEEDED}
        elif self._alive(where):
            return {"status": RUNNING}
        shutil.rmtree(run_dir, ignore_errors=True)  # ended, or stopped: the new run resumes from its state
        return None

    def wait(self, run: TrainingRun, located: dict[str, Any]) -> dict[str, Any]:
        """Relay the run's output to the task log as it comes, from its first line (an adopted
        run's too), touching ``watched`` so that the run knows a task waits for it."""
        where = self._watching = located[LOCAL_RUN_KEY]
        run_dir = Path(where["dir"])
        tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        with (run_dir / OUTPUT).open("rb") as output:
            pending = b""
            while True:
                (run_dir / WATCHED).touch()
                ended = (run_dir / EXIT).is_file() or not self._alive(where)
                *lines, pending = (pending + output.read()).split(b"\n")
                for line in lines + ([pending] if ended and pending else []):
                    text = line.decode("utf-8", "replace")
                    tail.append(text + "\n")
                    self.log.log(level(text), "%s", text)
                if ended:
                    break
                time.sleep(READ_SECONDS)
        state = self._ended(run_dir, tail)
        shutil.rmtree(run_dir, ignore_errors=True)
        return state

    def _alive(self, where: dict[str, Any]) -> bool:
        if self._process is not None and self._process.pid == where["pid"]:
            return self._process.poll() is None  # our child: reaped here, never a zombie
        started = process_start(where["pid"])
        return started is not None and started == where["started"]

    def _ended(self, run_dir: Path, tail: deque[str]) -> dict[str, Any]:
        """How the run ended, from what its ``detached`` parent recorded; a ``returncode`` of
        ``None`` when that parent was killed before it could record anything."""
        try:
            returncode = json.loads((run_dir / EXIT).read_text(encoding="utf-8"))["returncode"]
        except FileNotFoundError:
            returncode = None
        result_file = run_dir / RESULT
        result = json.loads(result_file.read_text(encoding="utf-8")) if result_file.is_file() else None
        return {"returncode": returncode, "result": result, "tail": "".join(tail)}

    def outcome(self, run: TrainingRun, state: dict[str, Any]) -> dict[str, Any]:
        returncode, tail = state["returncode"], state["tail"]
        if returncode == 0 and state["result"] is not None:
            return state["result"]
        if returncode == EXIT_BAD_CONFIG:  # the message is the last error line and the lines after it
            _, marker, message = tail.rpartition("training-hub: error: ")
            raise ValueError(message.rstrip() if marker else tail)
        if returncode == EXIT_STOPPED:
            how = "was stopped by SIGTERM after saving its state (a retry resumes there)"
        elif returncode is None:
            how = "ended, killed with the process that watched over it, before anything recorded how"
        else:
            how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited with code {returncode}"
        raise AirflowException(f"Local {run.algorithm} training {how}.\n--- last lines ---\n{tail}")

    def kill(self, task: TaskTry) -> None:
        """SIGTERM, so that the run saves its state at the current step, then SIGKILL to its whole
        process group after the connection's grace period."""
        if self._watching is not None:
            self._stop(self._watching)

    def _stop(self, where: dict[str, Any]) -> None:
        if self._alive(where):
            self._stop_group(where["pid"], lambda: self._alive(where), whole_group=False)

    def _stop_group(self, group: int, running: Callable[[], bool], whole_group: bool) -> None:
        """SIGTERM to the group's leader, which passes it on (or to the whole group), so that the
        run saves its state at the current step; SIGKILL to the group once ``running()`` is false
        or the connection's grace period has passed."""
        grace = self.settings.termination_grace_period_seconds
        self.log.info("Stopping the local training process group %d (SIGKILL after %d s).", group, grace)
        try:
            (os.killpg if whole_group else os.kill)(group, signal.SIGTERM)
        except ProcessLookupError:  # ended meanwhile
            pass
        deadline = time.monotonic() + grace
        while running() and time.monotonic() < deadline:
            time.sleep(0.2)
        try:
            os.killpg(group, signal.SIGKILL)  # what did not stop in time, even after its leader left
        except ProcessLookupError:
            pass

    def test_connection(self) -> str:
        algorithms = {a: AlgorithmRegistry.list_backends(a) for a in AlgorithmRegistry.list_algorithms()}
        return f"Local execution; algorithms and backends: {algorithms}"
