"""The training operators' own templated settings, converted and checked like any parameter.

A template renders to text unless the DAG sets ``render_template_as_native_obj``: ``"120"`` for a
number, ``"{'gpu': 'h100'}"`` (Python's repr) for a mapping. The algorithm's parameters are
converted by their schema; these settings get the same treatment here, so both kinds of DAG work
and a bad value fails the task with its name before anything starts.
"""

from __future__ import annotations

import ast
import json
from typing import Any

from pydantic import Field, field_validator

from airflow_provider_training_hub.algorithms.params import ParamSchema


class TaskSettings(ParamSchema):
    connection_overrides: dict[str, Any] = Field(default_factory=dict)
    pending_timeout: float = Field(gt=0)
    job_backoff_limit: int = Field(ge=0)
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    # At least a minute: the Job and its pods hold the result until the task has read it.
    ttl_seconds_after_finished: int | None = Field(None, ge=60)
    active_deadline_seconds: int | None = Field(None, ge=1)  # from execution_timeout
    # (local) How long a run waits for a task to watch it again, after its task died, before it
    # stops with its state saved: time for the next try to come and adopt it.
    unwatched_timeout: float = Field(gt=0)

    @field_validator("connection_overrides", "pod_annotations", mode="before")
    @classmethod
    def _rendered_mapping(cls, value: Any) -> Any:
        """A mapping rendered as text: JSON, or the Python literal Jinja prints for a dict."""
        if not isinstance(value, str):
            return value or {}
        if not value.strip():
            return {}
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            pass
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"is neither a JSON object nor a Python dict (got {value!r})") from None
