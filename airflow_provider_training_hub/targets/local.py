"""Local execution: ``training-hub <algorithm> --config ...`` as a subprocess of the worker.

The process leads its own process group: a crash or an OOM kill in training ends that process, not
the Airflow worker, and ``kill`` reaches every rank torchrun started. A local run lives and dies
with its task process, so there is nothing to reattach to and nothing to wait for in a triggerer.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowException

from airflow_provider_training_hub.algorithms import AlgorithmRegistry
from airflow_provider_training_hub.algorithms.launch import EXIT_STOPPED, StreamedProcess, stop_environment
from airflow_provider_training_hub.cli import EXIT_BAD_CONFIG
from airflow_provider_training_hub.targets import ExecutionTarget, TaskTry, TrainingRun

CLI_MODULE = "airflow_provider_training_hub.cli"
RUN_MARKER_ENV = "TRAINING_HUB_RUN"  # the task try, in the environment of all of a run's processes


class LocalTarget(ExecutionTarget):
    _process: StreamedProcess | None = None
    _workdir: Path | None = None

    def default_checkpoint_root(self) -> str:
        from airflow.configuration import AIRFLOW_HOME

        return os.path.join(AIRFLOW_HOME, "training_hub", "checkpoints")

    def check(self, run: TrainingRun) -> None:
        run.params.check_local_paths()

    def submit(self, run: TrainingRun) -> dict[str, Any]:
        """Write the run's configuration; ``wait`` starts the process and streams its output."""
        self._workdir = Path(tempfile.mkdtemp(prefix="training-hub-"))
        # What the task set, not the defaults: the training process applies the same defaults,
        # and a backend can tell a choice from a default (instructlab's LoRA and full state).
        config = self._workdir / "config.json"
        config.write_text(run.params.model_dump_json(exclude_unset=True, exclude_none=True), encoding="utf-8")
        command = [
            sys.executable, "-m", CLI_MODULE, run.algorithm, "--backend", run.backend,
            "--config", str(config), "--result-file", str(self._workdir / "result.json"),
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", RUN_MARKER_ENV: str(run.task),
               **stop_environment(self.settings.termination_grace_period_seconds)}
        self._process = StreamedProcess(command, own_process_group=True, env=env)
        return {}

    def wait(self, run: TrainingRun) -> dict[str, Any]:
        assert self._process is not None and self._workdir is not None, "wait() before submit()"
        self.log.info("Starting local %s training (%s backend): %s", run.algorithm, run.backend,
                      " ".join(self._process.command))
        try:
            returncode = self._process.run(lambda line: self.log.info("%s", line))
            result_file = self._workdir / "result.json"
            result = json.loads(result_file.read_text(encoding="utf-8")) if result_file.is_file() else None
        finally:
            shutil.rmtree(self._workdir, ignore_errors=True)
        return {"returncode": returncode, "result": result, "tail": "".join(self._process.tail)}

    def outcome(self, run: TrainingRun, state: dict[str, Any]) -> dict[str, Any]:
        returncode, tail = state["returncode"], state["tail"]
        if returncode == 0 and state["result"] is not None:
            return state["result"]
        if returncode == EXIT_BAD_CONFIG:  # the message is the last error line and the lines after it
            _, marker, message = tail.rpartition("training-hub: error: ")
            raise ValueError(message.rstrip() if marker else tail)
        if returncode == EXIT_STOPPED:
            how = "was stopped by SIGTERM after saving its state (a retry resumes there)"
        else:
            how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited with code {returncode}"
        raise AirflowException(f"Local {run.algorithm} training {how}.\n--- last lines ---\n{tail}")

    def kill(self, task: TaskTry) -> None:
        """SIGTERM, so that the run saves its state at the current step, then SIGKILL to its whole
        process group after the connection's grace period."""
        if self._process is not None:
            grace = self.settings.termination_grace_period_seconds
            self.log.info("Stopping the local training process group (SIGKILL after %d s).", grace)
            self._process.stop(grace)

    def test_connection(self) -> str:
        algorithms = {a: AlgorithmRegistry.list_backends(a) for a in AlgorithmRegistry.list_algorithms()}
        return f"Local execution; algorithms and backends: {algorithms}"
