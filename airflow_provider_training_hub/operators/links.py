"""Operator extra links: buttons on a training task's page that lead to where it trains.

Airflow computes a link when the task ends (``finalize`` pushes it as an XCom). A training run
takes hours, so the operator also pushes the Kubernetes link as soon as its run is submitted: the
button works while the model trains. The MLflow run is opened inside the training process, so its
link comes with the result.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

from airflow_provider_training_hub.targets import RUN_URL_KEY

MLFLOW_RUN_URL_KEY = "mlflow_run_url"  # a key of the training result (one XCom each: multiple_outputs)


class _XComLink(BaseOperatorLink):
    """A link that is the task's XCom ``key`` (empty when it is None)."""

    key: str

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return XCom.get_value(ti_key=ti_key, key=self.key) or ""


class TrainingRunLink(_XComLink):
    """The run in its own console: for Kubernetes, the connection's ``job_url_template`` filled
    with the namespace and the Job's name."""

    name = "Training run"
    key = RUN_URL_KEY


class MLflowRunLink(_XComLink):
    """The run's page in the MLflow UI, where ``mlflow_tracking_uri`` is an http(s) server; the
    result's ``mlflow_run_url``, so it appears when the training task has ended."""

    name = "MLflow run"
    key = MLFLOW_RUN_URL_KEY
