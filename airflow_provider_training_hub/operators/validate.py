"""``ValidateMessagesDataOperator``: the gate between a data team's file and a training run."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_provider_training_hub.connection import DEFAULT_CONN_ID
from airflow_provider_training_hub.hooks.training_hub import TrainingHubHook
from airflow_provider_training_hub.operators.lineage import validation_lineage
from airflow_provider_training_hub.operators.object_paths import plain_paths


class ValidateMessagesDataOperator(BaseOperator):
    """Validate messages data (line or row, field and reason for each error), or with
    ``data_format="preference"`` DPO's preference pairs, gather statistics, and optionally tokenize
    it as training reads it (messages: instructlab-training's processed format).

    :param data_path: local path or fsspec URL of JSONL (``.gz`` is decompressed), Parquet or CSV;
        or a saved Hugging Face dataset's directory (``data/tables.py``).
    :param output_path: where the valid samples go, normalised; needed for ``on_invalid="skip"``.
        When set, the returned ``data_path`` is this file, so training reads only checked data.
    :param on_invalid: ``fail`` (default) fails the task on any invalid line; ``skip`` writes the
        invalid lines with their reasons to ``<output_path>.rejected.jsonl`` and goes on.
    :param data_format: ``messages`` (default; for sft and lora_sft) or ``preference`` (TRL's
        preference pairs, JSONL, for dpo).
    :param model_path: tokenizer for token-length statistics (and for ``prepare_dir``).
    :param max_seq_len: count (and, when preparing, drop) samples of at least this many tokens;
        for preference pairs, dpo's ``max_length``: pairs cut to fit, and dropped, are counted.
    :param prepare_dir: tokenize and mask into ``<prepare_dir>/data.jsonl`` (needs ``model_path``
        and the ``[train]`` extra on the worker).
    :param max_errors: errors listed in full in the log and XCom; all are counted.
    :param workers: processes forked to check a local uncompressed file, each a share of its lines
        (default: one per CPU the worker may use, up to 4, each with at least 64 MiB); 1 never forks.

    XCom: ``{"data_path", "prepared_path", "stats", "errors", "quarantine_path"}`` (the errors
    listed are those skipped under ``skip``). Each outlet Asset's event
    carries the same ``data_path`` and the sample count in its ``extra``.
    """

    template_fields: Sequence[str] = (
        "data_path", "output_path", "model_path", "max_seq_len", "on_invalid", "prepare_dir", "workers", "data_format",
    )
    ui_color = "#d5f0e3"

    def __init__(
        self,
        *,
        data_path: str,
        output_path: str | None = None,
        on_invalid: str = "fail",
        model_path: str | None = None,
        max_seq_len: int | str | None = None,
        prepare_dir: str | None = None,
        max_errors: int = 20,
        workers: int | str | None = None,
        data_format: str = "messages",
        training_hub_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("multiple_outputs", True)  # so that op.output["key"] is an XComArg of one key
        super().__init__(**kwargs)
        self.data_path = data_path
        self.output_path = output_path
        self.on_invalid = on_invalid
        self.model_path = model_path
        self.max_seq_len = max_seq_len
        self.prepare_dir = prepare_dir
        self.max_errors = max_errors
        self.workers = workers
        self.data_format = data_format
        self.training_hub_conn_id = training_hub_conn_id
        self._stats: dict[str, Any] | None = None  # of a valid file, for OpenLineage
        self._storage_conn_id: str | None = None  # an ObjectStoragePath's connection

    @cached_property
    def hook(self) -> TrainingHubHook:
        return TrainingHubHook(self.training_hub_conn_id, storage_conn_id=self._storage_conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        try:
            max_seq_len = _optional_int("max_seq_len", self.max_seq_len)
            workers = _optional_int("workers", self.workers)
            if self.prepare_dir and not self.model_path:
                raise ValueError("prepare_dir needs model_path: the tokenizer that prepares the data")
            values, self._storage_conn_id = plain_paths({"data_path": self.data_path})
            self.data_path = values["data_path"]
            with self.hook.storage_access():  # streamed from the bucket, with the storage connection's credentials
                report = self.hook.validate_data(
                    self.data_path, self.data_format, on_invalid=self.on_invalid, output_path=self.output_path or None,
                    model_path=self.model_path or None, max_seq_len=max_seq_len, max_errors=self.max_errors,
                    workers=workers,
                )
        except ValueError as exc:  # a retry cannot fix a configuration error
            raise AirflowFailException(f"Invalid configuration: {exc}") from exc
        for lines, log in zip(report.summary_parts(), (self.log.info, self.log.warning, self.log.info)):
            for line in lines:
                log("%s", line)
        if not report.valid:
            raise AirflowException(
                f"{self.data_path} is not valid {self.data_format} data: {report.error_count} error(s), first:\n"
                + "\n".join(str(e) for e in report.errors)
            )
        data_path = report.output_path or self.data_path
        prepared_path = None
        if self.prepare_dir:
            prepared = self.hook.prepare_data(data_path, self.model_path, self.prepare_dir, max_seq_len,
                                              self.data_format)
            self.log.info("Prepared: %s", prepared)
            prepared_path = prepared.path
        for outlet in self.outlets:
            context["outlet_events"][outlet].extra = {"data_path": data_path, "samples": report.stats.get("samples", 0)}
        self._stats = report.stats
        return {
            "data_path": data_path,
            "prepared_path": prepared_path,
            "stats": report.stats,
            "errors": [str(e) for e in report.errors],
            "quarantine_path": report.quarantine_path,
        }

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Called by apache-airflow-providers-openlineage, where installed (see ``lineage.py``)."""
        return validation_lineage(self.data_path, self.output_path or None, self._stats)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        return validation_lineage(self.data_path, None, None)


def _optional_int(name: str, value: Any) -> int | None:
    """Templated numbers arrive as text; an unrendered or non-numeric one is a clear error."""
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
