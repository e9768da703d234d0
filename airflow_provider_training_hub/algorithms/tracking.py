"""Experiment tracking: MLflow, Weights & Biases and TensorBoard, under training_hub's parameter names.

Both backends log through instructlab-training's own handlers (``instructlab.training.logger``):
instructlab-training configures them itself from ``TrainingArgs``, and the ``pytorch`` backend's
rank 0 builds the same handlers with ``metric_logger``. So one metric has one name and one shape
in either backend, and a run name's ``{time}``/``{rank}`` placeholders mean the same.

The MLflow run belongs to the process that launches training (node 0's), not to a rank:
- it is opened before any rank starts, tagged with the Airflow task that asked for it, and the
  ranks log into it (``MLFLOW_RUN_ID``, which ``mlflow.start_run`` resumes);
- it is closed with the outcome the launcher saw: ``FAILED`` when a rank crashed, ``KILLED``
  when a stop ended the run, where a rank's handler could only ever say ``FINISHED``;
- a retry of the same Airflow task resumes the same run, so the loss curve continues where the
  saved state does;
- its URL is part of the result (the operator's "MLflow run" link).

Credentials never enter the parameters: MLflow reads ``MLFLOW_TRACKING_TOKEN`` (or
``MLFLOW_TRACKING_USERNAME``/``PASSWORD``) and W&B ``WANDB_API_KEY`` from the environment.
Without a tracking parameter nothing here imports a tracking library or contacts a server.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from airflow_provider_training_hub.algorithms.errors import TrainingFailedError, TrainingStoppedError
from airflow_provider_training_hub.algorithms.node_env import node_rank
from airflow_provider_training_hub.log_lines import WARNING_MARK

log = logging.getLogger(__name__)

MLFLOW_FIELDS = ("mlflow_tracking_uri", "mlflow_experiment_name", "mlflow_run_name")
# training_hub's (and instructlab-training's TrainingArgs') names, declared in SFTParams.
TRACKING_PARAMS = (*MLFLOW_FIELDS, "wandb_project", "wandb_entity", "wandb_run_name", "tensorboard_log_dir")
MLFLOW_RUN_ID_ENV = "MLFLOW_RUN_ID"  # read (and consumed) by mlflow.start_run in the rank
# The Airflow task a process runs for: Airflow exports these to its task process (local
# execution inherits them); a Kubernetes pod gets them from its Job.
AIRFLOW_CONTEXT_ENV = {
    "AIRFLOW_CTX_DAG_ID": "airflow.dag_id",
    "AIRFLOW_CTX_DAG_RUN_ID": "airflow.run_id",
    "AIRFLOW_CTX_TASK_ID": "airflow.task_id",
    "AIRFLOW_CTX_TRY_NUMBER": "airflow.try_number",
}
_SAME_TASK = ("airflow.dag_id", "airflow.run_id", "airflow.task_id")


# Query parameters that carry a secret in the URLs of tracking servers and their proxies.
_SECRET_QUERY = re.compile(r"token|key|secret|pass|auth|sig|credential", re.IGNORECASE)


def check_tracking_uri(uri: str, name: str = "mlflow_tracking_uri") -> str:
    """A tracking URI is shown in task logs, XCom, the run's link, lineage and the Job spec, so it
    must not hold a secret: no user information (``user:pass@``, ``TOKEN@``) and no query
    parameter named like one (``?token=``). ``name``: the parameter or variable to blame."""
    parts = urlsplit(uri)
    secret_query = [key for key, _ in parse_qsl(parts.query, keep_blank_values=True) if _SECRET_QUERY.search(key)]
    if parts.username is not None or parts.password is not None or secret_query:
        where = f"a query parameter {secret_query[0]!r}" if secret_query else "user information before '@'"
        raise ValueError(
            f"{name} must not carry credentials ({where}): set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the training environment instead "
            "(on Kubernetes, a Secret named by the connection's tracking_secret)"
        )
    return uri


def mlflow_enabled(params: Any) -> bool:
    return any(getattr(params, name, None) for name in MLFLOW_FIELDS)


def airflow_tags(environ: Mapping[str, str]) -> dict[str, str]:
    return {tag: environ[name] for name, tag in AIRFLOW_CONTEXT_ENV.items() if environ.get(name)}


@dataclass(frozen=True)
class MlflowRun:
    tracking_uri: str
    experiment_id: str
    run_id: str

    @property
    def url(self) -> str | None:
        """The run's page in the MLflow UI; None for a store that has no UI (a path, a database)."""
        if urlsplit(self.tracking_uri).scheme not in ("http", "https"):
            return None
        return f"{self.tracking_uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"


def _experiment_id(client: Any, name: str) -> str:
    from mlflow.exceptions import MlflowException

    if found := client.get_experiment_by_name(name):
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # created meanwhile by another task
        return client.get_experiment_by_name(name).experiment_id


def _open_run(params: Any, tags: dict[str, str]) -> MlflowRun:
    from mlflow import MlflowClient
    from mlflow.tracking import get_tracking_uri

    uri = params.mlflow_tracking_uri or check_tracking_uri(get_tracking_uri(), "MLFLOW_TRACKING_URI")
    client = MlflowClient(uri)
    experiment_id = _experiment_id(
        client, params.mlflow_experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "Default"
    )
    if all("'" not in tags.get(tag, "'") for tag in _SAME_TASK):  # an earlier try of this task: continue its run
        query = " and ".join(f"tags.`{tag}` = '{tags[tag]}'" for tag in _SAME_TASK)
        for earlier in client.search_runs([experiment_id], query, max_results=1, order_by=["start_time DESC"]):
            client.update_run(earlier.info.run_id, status="RUNNING")
            for tag in set(tags) - set(_SAME_TASK):
                client.set_tag(earlier.info.run_id, tag, tags[tag])
            return MlflowRun(uri, experiment_id, earlier.info.run_id)
    run = client.create_run(experiment_id, tags=tags)
    return MlflowRun(uri, experiment_id, run.info.run_id)


@contextmanager
def mlflow_run(params: Any, algorithm: str, backend: str) -> Iterator[MlflowRun | None]:
    """The MLflow run that this launch's ranks log into, on node 0 with MLflow turned on; else None."""
    if not mlflow_enabled(params) or node_rank(params.node_rank) != 0:
        yield None
        return
    from mlflow import MlflowClient

    tags = {**airflow_tags(os.environ), "training_hub.algorithm": algorithm, "training_hub.backend": backend}
    try:
        run = _open_run(params, tags)
    except ValueError:  # a tracking URI that would leak a credential: a configuration error
        raise
    except Exception as exc:  # before any training: asked for a record of the run, it cannot have one
        raise TrainingFailedError(f"MLflow could not open the run, so training did not start: {exc}") from exc
    log.info("MLflow run %s in experiment %s%s", run.run_id, run.experiment_id, f": {run.url}" if run.url else "")
    previous = os.environ.get(MLFLOW_RUN_ID_ENV)
    os.environ[MLFLOW_RUN_ID_ENV] = run.run_id
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except BaseException as exc:
        from airflow_provider_training_hub.algorithms.launch import termination_requested

        stopped = isinstance(exc, (TrainingStoppedError, KeyboardInterrupt)) or termination_requested()
        status = "KILLED" if stopped else "FAILED"
        raise
    finally:
        if previous is None:
            os.environ.pop(MLFLOW_RUN_ID_ENV, None)
        else:
            os.environ[MLFLOW_RUN_ID_ENV] = previous
        try:
            MlflowClient(run.tracking_uri).set_terminated(run.run_id, status)
        except Exception as exc:  # the training's own outcome stands; the dashboard is behind
            log.warning("MLflow run %s could not be marked %s: %s", run.run_id, status, exc)


def metric_logger(params: Any, output_dir: str) -> logging.Logger | None:
    """For rank 0 of a backend without its own loggers: instructlab-training's MLflow, W&B and
    TensorBoard handlers, configured as ``setup_metric_logger`` configures them; None when no
    tracking parameter is set. Log a mapping of metrics with ``extra={"step": N}``, the run's
    parameters with ``extra={"hparams": True}``."""
    if not (mlflow_enabled(params) or params.wandb_project or params.tensorboard_log_dir):
        return None
    from instructlab.training import logger as upstream

    handlers: list[logging.Handler] = []
    if mlflow_enabled(params):
        handlers.append(upstream.MLflowHandler(
            run_name=params.mlflow_run_name, tracking_uri=params.mlflow_tracking_uri,
            experiment_name=params.mlflow_experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME")))
    if params.wandb_project:
        handlers.append(upstream.WandbHandler(
            log_dir=output_dir, run_name=params.wandb_run_name, project=params.wandb_project,
            entity=params.wandb_entity))
    if params.tensorboard_log_dir:
        handlers.append(upstream.TensorBoardHandler(log_dir=params.tensorboard_log_dir))
    metrics = logging.getLogger("airflow_provider_training_hub.metrics")
    metrics.setLevel(logging.INFO)
    metrics.propagate = False  # not the console: the progress line says it for people
    for handler in handlers:
        metrics.addHandler(handler)
    return metrics


def log_to_trackers(metrics: logging.Logger, record: dict[str, Any]) -> None:
    """One record of the metrics file: the run's parameters (``"hparams": True``, unset ones left
    out and others as text, since TensorBoard takes only scalars) or one step's metrics.

    A tracker that fails (a server gone for longer than its client retries) is dropped with a
    warning: hours of training are not lost to a dashboard.
    """
    if record.get("hparams"):
        payload = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
                   for k, v in record.items() if k != "hparams" and v is not None}
        extra = {"hparams": True}
    else:
        payload, extra = record, {"step": record["step"]}
    log_record = metrics.makeRecord(metrics.name, logging.INFO, __file__, 0, payload, None, None, extra=extra)
    for handler in list(metrics.handlers):  # one by one, so that one failing spares the others
        try:
            handler.handle(log_record)
        except Exception as exc:  # the tracking libraries raise their own kinds
            print(f"{WARNING_MARK}{type(handler).__name__} failed ({exc}); "
                  "training goes on without it", file=sys.stderr, flush=True)
            metrics.removeHandler(handler)


def close_metric_logger(metrics: logging.Logger | None) -> None:
    """Flush and close every handler (TensorBoard writes its files on close, MLflow's hands the
    run back), and finish the W&B run, which upstream's handler leaves to the interpreter's exit."""
    for handler in list(metrics.handlers if metrics else []):
        handler.close()
        metrics.removeHandler(handler)
    if (wandb := sys.modules.get("wandb")) is not None and wandb.run is not None:
        wandb.finish()
