"""OpenLineage for the operators: which data went in and which checkpoint came out, and how.

apache-airflow-providers-openlineage calls an operator's ``get_openlineage_facets_on_complete``
and ``_on_failure`` when it is installed and has a transport; without it nothing calls them, and
nothing here imports ``openlineage``. Datasets are named by OpenLineage's naming rules: a local
path is namespace ``file`` with its absolute path; ``s3://bucket/key`` is namespace
``s3://bucket`` with name ``key``. The facets are this provider's own (``trainingHub_*``).
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any
from urllib.parse import urlsplit

FACET_PREFIX = "trainingHub_"
# A facet names its schema by URI; these are described in docs/tracking.md ("OpenLineage"), not published.
SCHEMA_URN = "urn:airflow-provider-training-hub:openlineage-facet:"


@cache
def _facet_classes() -> dict[str, type]:
    """Built once, on first use: their base classes exist only where the provider is installed."""
    from attrs import define, field
    from openlineage.client.facet_v2 import DatasetFacet, RunFacet

    def schema(name: str):
        return staticmethod(lambda: SCHEMA_URN + name)

    @define
    class MessagesDataFacet(DatasetFacet):
        """The validation statistics of a messages JSONL file."""

        samples: int
        invalidLines: int  # noqa: N815 (OpenLineage facets are camelCase)
        messages: int
        messagesByRole: dict[str, int]  # noqa: N815
        tokens: dict[str, Any] | None = field(default=None)  # length percentiles, when a tokenizer was given
        _get_schema = schema("messagesData")

    @define
    class TrainedModelFacet(DatasetFacet):
        """What a checkpoint is: the model it was trained from, and whether it is an adapter."""

        baseModel: str  # noqa: N815
        adapter: bool
        mergedCheckpoint: str | None = field(default=None)  # noqa: N815
        _get_schema = schema("model")

    @define
    class TrainingRunFacet(RunFacet):
        """The algorithm, the backend and every parameter of the run (as validated)."""

        algorithm: str
        backend: str
        parameters: dict[str, Any]
        mlflowRunUrl: str | None = field(default=None)  # noqa: N815
        _get_schema = schema("run")

    return {"messagesData": MessagesDataFacet, "model": TrainedModelFacet, "run": TrainingRunFacet}


def dataset(path: str, **facets: Any) -> Any:
    from openlineage.client.event_v2 import Dataset

    parts = urlsplit(path)
    if parts.scheme and parts.scheme != "file":
        namespace, name = f"{parts.scheme}://{parts.netloc}", parts.path.lstrip("/")
    else:
        namespace, name = "file", os.path.abspath(parts.path if parts.scheme else path)
    return Dataset(namespace=namespace, name=name, facets={FACET_PREFIX + k: v for k, v in facets.items()})


def validation_lineage(data_path: str, output_path: str | None, stats: dict[str, Any] | None) -> Any:
    """The data file (with its statistics, once known) in; the validated file out, where written."""
    from airflow.providers.openlineage.extractors import OperatorLineage

    facets = {}
    if stats:
        facets["messagesData"] = _facet_classes()["messagesData"](
            samples=stats["samples"], invalidLines=stats["invalid_lines"],
            messages=sum(stats["messages_by_role"].values()), messagesByRole=stats["messages_by_role"],
            tokens=stats.get("tokens"))
    return OperatorLineage(inputs=[dataset(data_path, **facets)],
                           outputs=[dataset(output_path)] if output_path and stats else [])


def training_lineage(algorithm: str, backend: str, params: Any, result: dict[str, Any] | None) -> Any:
    """The data and the base model in; the newest checkpoint out, naming its base model; the run's
    algorithm, backend and parameters."""
    from airflow.providers.openlineage.extractors import OperatorLineage

    facets = _facet_classes()
    result = result or {}
    outputs = []
    if result.get("checkpoint"):
        outputs.append(dataset(result["checkpoint"], model=facets["model"](
            baseModel=params.model_path, adapter=bool(result.get("adapter")),
            mergedCheckpoint=result.get("merged_checkpoint"))))
    run = facets["run"](algorithm=algorithm, backend=backend, parameters=params.model_dump(mode="json"),
                        mlflowRunUrl=result.get("mlflow_run_url"))
    return OperatorLineage(inputs=[dataset(params.data_path), dataset(params.model_path)], outputs=outputs,
                           run_facets={FACET_PREFIX + "run": run})
