"""Parameter schemas: one pydantic model per algorithm is the whole parameter story.

The model is the single source of truth for names, types, defaults, bounds and help text. The
Python API, the ``training-hub`` CLI flags, the Airflow operator's templated fields and the DAG
trigger-form ``Param``s are all derived from it, so a parameter is declared exactly once.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError


class ParamSchema(BaseModel):
    """Base for algorithm parameter models: unknown names are errors, never silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    @classmethod
    def parse(cls, values: Mapping[str, Any]) -> Self:
        """Validate user input; every problem becomes one ``ValueError`` naming the parameters."""
        cls._reject_unknown(values)
        try:
            return cls.model_validate(dict(values))
        except ValidationError as exc:
            raise ValueError(format_validation_error(exc)) from None

    @classmethod
    def check_some(cls, values: Mapping[str, Any]) -> None:
        """Check the parameters given, ignoring missing required ones: a trigger form's subset."""
        cls._reject_unknown(values)
        try:
            cls.model_validate(dict(values))
        except ValidationError as exc:
            errors = [e for e in exc.errors() if e["type"] != "missing"]
            if errors:
                raise ValueError(format_validation_error(ValidationError.from_exception_data(exc.title, errors))) from None

    @classmethod
    def _reject_unknown(cls, values: Mapping[str, Any]) -> None:
        unknown = [name for name in values if name not in cls.model_fields]
        if unknown:
            raise ValueError("; ".join(unknown_parameter_message(cls, name) for name in unknown))

    def check_local_paths(self) -> None:
        """Raise ``ValueError`` for an input path missing on this machine (where training runs)."""


def unknown_parameter_message(schema: type[ParamSchema], name: str) -> str:
    hint = difflib.get_close_matches(name, list(schema.model_fields), n=1, cutoff=0.6)
    suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
    return f"Unknown parameter {name!r}.{suggestion}"


def format_validation_error(exc: ValidationError) -> str:
    """``name: reason (got value)`` per problem, without pydantic's URLs and class names."""
    problems = []
    for err in exc.errors(include_url=False):
        name = ".".join(str(part) for part in err["loc"])
        reason = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            problems.append(f"Missing required parameter {name!r}.")
        elif err["type"] == "value_error":  # our own validators already quote the value
            problems.append(f"Invalid parameter {name!r}: {reason}." if name else reason)
        elif name:
            problems.append(f"Invalid parameter {name!r}: {reason} (got {err['input']!r}).")
        else:  # a cross-field check, whose message names its parameters itself
            problems.append(reason)
    return " ".join(problems)


def param_types(schema: type[BaseModel], *, required: bool) -> dict[str, Any]:
    """``{name: type}`` for the required (or the optional) parameters, in declaration order."""
    return {
        name: field.annotation for name, field in schema.model_fields.items() if field.is_required() is required
    }


def base_types(annotation: Any) -> tuple[type, ...]:
    """The concrete types of an annotation, ``None`` excluded: ``int | str | None`` -> ``(int, str)``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return tuple(t for t in typing.get_args(annotation) if t is not type(None))
    return (annotation,)
