"""``TrainingHubHook``: the registry, the data module and the training target behind one connection.

Training itself happens in the connection's execution target (``targets``): a subprocess on the
worker, or an Indexed Job on Kubernetes. The hook holds what every target shares: the connection,
the parameter checks, the data module, and the model helpers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException, AirflowNotFoundException

from airflow_provider_training_hub import object_storage
from airflow_provider_training_hub.algorithms import AlgorithmRegistry
from airflow_provider_training_hub.algorithms.memory import CannotEstimate, size_text, verdict
from airflow_provider_training_hub.algorithms.params import ParamSchema
from airflow_provider_training_hub.connection import CONN_TYPE, DEFAULT_CONN_ID, ConnectionSettings
from airflow_provider_training_hub.targets import ExecutionTarget, TrainingRun, get_target
from airflow_provider_training_hub.targets.local import CLI_MODULE


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

    def check_memory(self, run: TrainingRun) -> None:
        """Refuse a run that cannot fit the connection's ``gpu_memory``, before it starts: its lower
        bound (training_hub's ``estimate()``, by the backend's layout) is more than a GPU has."""
        gpu_memory = self.settings.gpu_memory_bytes
        if gpu_memory is None:
            return
        backend = AlgorithmRegistry.get_backend(run.algorithm, run.backend)
        try:
            result = AlgorithmRegistry.get_algorithm(run.algorithm).memory_estimate(run.params, backend)
        except CannotEstimate as exc:
            self.log.warning("GPU memory check skipped: %s.", exc)
            return
        self.log.info("GPU memory estimate (%s backend): %s", run.backend, result.summary())
        low, expected, _ = result.bounds
        if low > gpu_memory:
            smaller = {"sft": ", or train adapters (lora_sft)", "lora": ", or quantize the base model (load_in_4bit)"}
            raise ValueError(
                f"{run.algorithm} cannot fit: {result.summary()}; "
                f"the connection's gpu_memory is {size_text(gpu_memory)}. "
                "Lower max_tokens_per_gpu or max_seq_len, spread the run over more GPUs (nnodes, nproc_per_node)"
                f"{smaller.get(result.method, '')}."
            )
        if expected > gpu_memory:
            self.log.warning("%s", verdict(result, gpu_memory))

    # --- object storage ------------------------------------------------------------------------

    @cached_property
    def storage_environment(self) -> dict[str, str]:
        """The storage connection's credentials as ``AWS_*`` variables, for a local training
        process; empty without the connection (the worker's own credentials apply)."""
        conn_id = self.settings.storage_conn_id
        try:
            conn = self.get_connection(conn_id)
        except AirflowNotFoundException:
            self.log.info("No connection %r: object storage is reached with the worker's own credentials.", conn_id)
            return {}
        return object_storage.aws_environment(conn.login, conn.password, conn.extra_dejson)

    @contextmanager
    def storage_access(self) -> Iterator[None]:
        """This process's reads of ``s3://`` paths (checks, validation) with the storage connection's
        credentials, while the block runs."""
        options = object_storage.s3_options(self.storage_environment)
        with object_storage.connection_options("s3", options) if options else nullcontext():
            yield

    def default_checkpoint_root(self) -> str:
        return self.settings.checkpoint_root or self.target.default_checkpoint_root()

    # --- data --------------------------------------------------------------------------------

    @staticmethod
    def validate_data(data_path: str, data_format: str = "messages", **options: Any):
        """``data.validate_any``: a ``ValidationReport`` of messages data or of preference pairs
        (no torch unless ``model_path``)."""
        from airflow_provider_training_hub.data import validate_any

        return validate_any(data_path, data_format, **options)

    @staticmethod
    def prepare_data(data_path: str, model_path: str, output_dir: str, max_seq_len: int | None,
                     data_format: str = "messages"):
        """Tokenize for training (messages: masked with instructlab-training's processing,
        ``max_seq_len`` defaulting to sft's; preference pairs: as dpo reads them, ``max_seq_len``
        being dpo's ``max_length``); needs the ``[train]`` extra."""
        if data_format == "preference":
            from airflow_provider_training_hub.algorithms.dpo import DPOParams
            from airflow_provider_training_hub.data.preference import prepare_preferences

            return prepare_preferences(data_path, model_path, output_dir,
                                       max_seq_len or DPOParams.model_fields["max_length"].default)
        from airflow_provider_training_hub.algorithms.sft import SFTParams
        from airflow_provider_training_hub.data.prepare import prepare_for_training

        return prepare_for_training(data_path, model_path, output_dir,
                                    max_seq_len or SFTParams.model_fields["max_seq_len"].default)

    # --- models (in a subprocess: torch stays out of the worker) -------------------------------

    def make_model(self, kind: str, output_dir: str, corpus: str | None = None) -> str:
        """``training-hub models tiny|smollm2``: build a model offline; its directory."""
        return self._cli("models", kind, output_dir, *(["--corpus", corpus] if corpus else [])).strip().splitlines()[-1]

    def generate(self, model_dir: str, questions: list[str], max_new_tokens: int = 48) -> list[str]:
        """Greedy answers of ``model_dir`` (a model or checkpoint) to ``questions``."""
        # After "--", a question such as "-h" or "--json" is a question, not an option.
        out = self._cli("generate", "--max-new-tokens", str(max_new_tokens), "--json", "--", model_dir, *questions)
        return json.loads(out.strip().splitlines()[-1])

    def preference_margins(self, model_dir: str, data_path: str) -> dict[str, Any]:
        """``training-hub margins``: how much more likely ``model_dir`` finds each pair's chosen reply
        than its rejected one (``pairs``, ``mean_margin``, ``preferred``, ``margins``)."""
        return json.loads(self._cli("margins", "--json", model_dir, data_path).strip().splitlines()[-1])

    def _cli(self, *args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", CLI_MODULE, *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise AirflowException(f"training-hub {args[0]} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        return proc.stdout

    # --- training ----------------------------------------------------------------------------

    @cached_property
    def target(self) -> ExecutionTarget:
        """Where this connection trains (its ``execution``); see ``targets``."""
        return get_target(self.settings.execution)(self.settings, self.log, lambda: self.storage_environment)

    # --- the connection test button ------------------------------------------------------------

    def test_connection(self) -> tuple[bool, str]:
        try:
            return True, self.target.test_connection()
        except Exception as exc:  # the UI shows the message; any failure is a failed test
            return False, str(exc)
