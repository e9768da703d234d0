"""``TrainingHubHook``: the registry, the data module and the training launch behind one connection.

Local execution runs ``training-hub <algorithm> --config ...`` as a subprocess in its own process
group: a crash or an OOM kill in training ends that process, not the Airflow worker, and
``terminate()`` reaches every rank torchrun started. Kubernetes execution submits an Indexed Job
(``kubernetes/`` builds it, ``kubernetes_jobs.TrainingJobClient`` talks to the cluster).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException, AirflowNotFoundException

from airflow_provider_training_hub.algorithms import AlgorithmRegistry
from airflow_provider_training_hub.algorithms.launch import EXIT_STOPPED, StreamedProcess, stop_environment
from airflow_provider_training_hub.algorithms.params import ParamSchema
from airflow_provider_training_hub.cli import EXIT_BAD_CONFIG
from airflow_provider_training_hub.connection import CONN_TYPE, DEFAULT_CONN_ID, ConnectionSettings
from airflow_provider_training_hub.hooks.kubernetes_jobs import TrainingJobClient
from airflow_provider_training_hub.kubernetes import TrainingJob, build_job, build_service
from airflow_provider_training_hub.kubernetes.status import (
    SUCCEEDED,
    UNSCHEDULABLE,
    JobState,
    describe_failures,
    rank0_result,
)

CLI_MODULE = "airflow_provider_training_hub.cli"
RUN_MARKER_ENV = "TRAINING_HUB_RUN"


class TrainingHubHook(BaseHook):
    """Connection ``training_hub``; without one, ``training_hub_default`` means local execution.

    :param training_hub_conn_id: the connection; a missing *default* connection is not an error.
    :param overrides: connection fields to override for this hook (per-task settings).
    """

    conn_name_attr = "training_hub_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = "Training Hub"

    def __init__(self, training_hub_conn_id: str = DEFAULT_CONN_ID, **overrides: Any) -> None:
        super().__init__()
        self.training_hub_conn_id = training_hub_conn_id
        self.overrides = {k: v for k, v in overrides.items() if v is not None}
        self._process: StreamedProcess | None = None

    @cached_property
    def settings(self) -> ConnectionSettings:
        try:
            extra = self.get_connection(self.training_hub_conn_id).extra_dejson
        except AirflowNotFoundException:
            if self.training_hub_conn_id != DEFAULT_CONN_ID:
                raise
            self.log.info("No connection %r: running locally (the embedded default).", DEFAULT_CONN_ID)
            extra = {}
        return ConnectionSettings.from_extra({**extra, **self.overrides})

    def get_conn(self) -> ConnectionSettings:
        return self.settings

    # --- the registry ------------------------------------------------------------------------

    @staticmethod
    def list_algorithms() -> list[str]:
        return AlgorithmRegistry.list_algorithms()

    @staticmethod
    def list_backends(algorithm: str) -> list[str]:
        return AlgorithmRegistry.list_backends(algorithm)

    @staticmethod
    def get_parameters(algorithm: str) -> dict[str, Any]:
        """The algorithm's parameters as JSON Schema (names, types, defaults, bounds, help)."""
        return AlgorithmRegistry.get_algorithm(algorithm).params_schema.model_json_schema()

    def backend_for(self, algorithm: str, backend: str | None) -> str:
        """The task's backend, else the connection's, else the algorithm's default; checked to exist."""
        name = backend or self.settings.backend or AlgorithmRegistry.default_backend(algorithm)
        AlgorithmRegistry.get_backend(algorithm, name)  # ValueError naming the choices
        return name

    @staticmethod
    def parse_params(algorithm: str, params: dict[str, Any]) -> ParamSchema:
        """Check parameters against the algorithm's schema; ``ValueError`` names each bad one."""
        return AlgorithmRegistry.get_algorithm(algorithm).params_schema.parse(params)

    @staticmethod
    def check_params(algorithm: str, params: dict[str, Any]) -> None:
        """Check some of an algorithm's parameters (a trigger form's) without the required ones."""
        AlgorithmRegistry.get_algorithm(algorithm).params_schema.check_some(params)

    def default_checkpoint_root(self) -> str:
        if self.settings.checkpoint_root:
            return self.settings.checkpoint_root
        if self.settings.execution == "kubernetes":
            return f"{self.settings.pvc_mount_path.rstrip('/')}/checkpoints"
        from airflow.configuration import AIRFLOW_HOME

        return os.path.join(AIRFLOW_HOME, "training_hub", "checkpoints")

    # --- data --------------------------------------------------------------------------------

    @staticmethod
    def validate_data(data_path: str, **options: Any):
        """``data.validate_messages``: a ``ValidationReport`` (no torch unless ``model_path``)."""
        from airflow_provider_training_hub.data import validate_messages

        return validate_messages(data_path, **options)

    @staticmethod
    def prepare_data(data_path: str, model_path: str, output_dir: str, max_seq_len: int):
        """Tokenize and mask with instructlab-training's processing; needs the ``[train]`` extra."""
        from airflow_provider_training_hub.data.prepare import prepare_for_training

        return prepare_for_training(data_path, model_path, output_dir, max_seq_len)

    # --- models (in a subprocess: torch stays out of the worker) -------------------------------

    def make_model(self, kind: str, output_dir: str, corpus: str | None = None) -> str:
        """``training-hub models tiny|smollm2``: build a model offline; its directory."""
        return self._cli("models", kind, output_dir, *(["--corpus", corpus] if corpus else [])).strip().splitlines()[-1]

    def generate(self, model_dir: str, questions: list[str], max_new_tokens: int = 48) -> list[str]:
        """Greedy answers of ``model_dir`` (a model or checkpoint) to ``questions``."""
        out = self._cli("generate", model_dir, *questions, "--max-new-tokens", str(max_new_tokens), "--json")
        return json.loads(out.strip().splitlines()[-1])

    def _cli(self, *args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", CLI_MODULE, *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise AirflowException(f"training-hub {args[0]} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        return proc.stdout

    # --- training ----------------------------------------------------------------------------

    def run_local(self, algorithm: str, backend: str, params: ParamSchema, run_marker: str = "") -> dict[str, Any]:
        """Train in a subprocess, its output streamed into the task log; the result as a dict.

        ``run_marker`` goes into the children's environment (``TRAINING_HUB_RUN``), so a run's
        processes can be found on the machine.
        """
        with tempfile.TemporaryDirectory(prefix="training-hub-") as tmp:
            config = Path(tmp, "config.json")
            # What the task set, not the defaults: the training process applies the same defaults,
            # and a backend can tell a choice from a default (instructlab's LoRA and full state).
            config.write_text(params.model_dump_json(exclude_unset=True, exclude_none=True), encoding="utf-8")
            result_file = Path(tmp, "result.json")
            command = [
                sys.executable, "-m", CLI_MODULE, algorithm, "--backend", backend,
                "--config", str(config), "--result-file", str(result_file),
            ]
            env = {**os.environ, "PYTHONUNBUFFERED": "1", RUN_MARKER_ENV: run_marker,
                   **stop_environment(self.settings.termination_grace_period_seconds)}
            self._process = StreamedProcess(command, own_process_group=True, env=env)
            self.log.info("Starting local %s training (%s backend): %s", algorithm, backend, " ".join(command))
            returncode = self._process.run(lambda line: self.log.info("%s", line))
            if returncode == 0 and result_file.is_file():
                return json.loads(result_file.read_text(encoding="utf-8"))
            tail = "".join(self._process.tail)
        if returncode == EXIT_BAD_CONFIG:  # the message is the last error line and the lines after it
            _, marker, message = tail.rpartition("training-hub: error: ")
            raise ValueError(message.rstrip() if marker else tail)
        if returncode == EXIT_STOPPED:
            how = "was stopped by SIGTERM after saving its state (a retry resumes there)"
        else:
            how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited with code {returncode}"
        raise AirflowException(f"Local {algorithm} training {how}.\n--- last lines ---\n{tail}")

    def terminate(self) -> None:
        """Stop a local run: SIGTERM, so that it saves its state at the current step, then
        SIGKILL to its whole process group after the connection's grace period."""
        if self._process is not None:
            grace = self.settings.termination_grace_period_seconds
            self.log.info("Stopping the local training process group (SIGKILL after %d s).", grace)
            self._process.stop(grace)

    # --- Kubernetes ----------------------------------------------------------------------------

    @cached_property
    def jobs(self) -> TrainingJobClient:
        return TrainingJobClient(self.settings.kubernetes_conn_id, self.settings.namespace, self.log)

    def job_manifests(self, job: TrainingJob) -> tuple[dict[str, Any], dict[str, Any]]:
        """The Job and Service of ``job`` with this connection's pod settings (``ValueError`` if
        they cannot work, before anything is sent)."""
        return build_job(job, self.settings), build_service(job, self.settings)

    def submit_job(self, job: TrainingJob) -> bool:
        """Create the run's Service and Job; ``True`` when this try's Job already ran (reattach)."""
        job_manifest, service_manifest = self.job_manifests(job)
        # an earlier try's pods get their grace period to save, then a minute to be removed
        reattached = self.jobs.submit(job, job_manifest, service_manifest,
                                      earlier_tries_timeout=self.settings.termination_grace_period_seconds + 60)
        self.log.info("%s Job %s in namespace %s: %d node(s) x %d process(es), rendezvous at %s",
                      "Reattached to" if reattached else "Created", job.name, self.settings.namespace,
                      job.nnodes, job.nproc_per_node, job.rdzv_endpoint)
        return reattached

    def job_outcome(self, name: str, state: JobState) -> dict[str, Any]:
        """Rank 0's result for a succeeded Job; otherwise raise with what went wrong. A Job stuck
        unschedulable is deleted, so that it cannot grab GPUs later with nobody watching."""
        _, pods = self.jobs.read(name)
        if state.status == SUCCEEDED:
            return rank0_result(pods)
        if state.status == UNSCHEDULABLE:
            self.jobs.delete(name)
            raise AirflowException(f"Job {name}: {state.message}")
        failures = "\n".join(describe_failures(pods)) or "(no failed pod left to inspect)"
        raise AirflowException(f"Job {name} failed: {state.message}\n{failures}")

    # --- the connection test button ------------------------------------------------------------

    def test_connection(self) -> tuple[bool, str]:
        try:
            settings = self.settings
            if settings.execution == "kubernetes":
                self.jobs.hook.batch_v1_client.list_namespaced_job(settings.namespace, limit=1)
                return True, f"Kubernetes API reachable; Jobs in namespace {settings.namespace!r} readable."
            algorithms = {a: self.list_backends(a) for a in self.list_algorithms()}
            return True, f"Local execution; algorithms and backends: {algorithms}"
        except Exception as exc:  # the UI shows the message; any failure is a failed test
            return False, str(exc)
