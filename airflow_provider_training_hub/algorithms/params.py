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
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo


class ParamSchema(BaseModel):
    """Base for algorithm parameter models: unknown names are errors, never silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())
    # The parameters that leave the trained weights alone (where to write, how often, how to spread
    # the work); every other one is part of the run's identity (``run_identity.py``). ``None``:
    # the algorithm writes no resumable checkpoints, so it has no identity to keep.
    RESULT_NEUTRAL: ClassVar[frozenset[str] | None] = None
    # Another name training_hub gives a parameter in some of its functions -> ours.
    ALIASES: ClassVar[dict[str, str]] = {}

    @classmethod
    def parse(cls, values: Mapping[str, Any]) -> Self:
        """Validate user input; every problem becomes one ``ValueError`` naming the parameters.
        ``None`` means "not given", as in training_hub, whose functions default every optional
        parameter to ``None``: the field keeps its default (a required one is missing)."""
        values = cls._given(values)
        cls._reject_unknown(values)
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ValueError(format_validation_error(exc)) from None

    @classmethod
    def check_some(cls, values: Mapping[str, Any]) -> None:
        """Check the parameters given, ignoring missing required ones: a trigger form's subset."""
        values = cls._given(values)
        cls._reject_unknown(values)
        try:
            cls.model_validate(values)
        except ValidationError as exc:
            errors = [e for e in exc.errors() if e["type"] != "missing"]
            if errors:
                raise ValueError(format_validation_error(ValidationError.from_exception_data(exc.title, errors))) from None

    @classmethod
    def _given(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters actually given, by our names: training_hub passes ``None`` for each one
        left out, and names some differently in some functions (``ALIASES``). An unknown name
        stays, ``None`` or not, to be refused."""
        out: dict[str, Any] = {}
        for name, value in values.items():
            ours = cls.ALIASES.get(name, name)
            if value is None and ours in cls.model_fields:
                continue
            if ours in out:
                alias = next(a for a, o in cls.ALIASES.items() if o == ours)
                raise ValueError(f"{alias!r} and {ours!r} are one parameter (training_hub names it both ways): give one.")
            out[ours] = value
        return out

    @classmethod
    def _reject_unknown(cls, values: Mapping[str, Any]) -> None:
        unknown = [name for name in values if name not in cls.model_fields]
        if unknown:
            raise ValueError("; ".join(unknown_parameter_message(cls, name) for name in unknown))

    def check_local_paths(self) -> None:
        """Raise ``ValueError`` for an input path missing on this machine (where training runs)."""

    def check_remote_paths(self) -> None:
        """Raise ``ValueError`` for a path in object storage that these credentials cannot open."""


def unknown_parameter_message(schema: type[ParamSchema], name: str) -> str:
    hint = difflib.get_close_matches(name, list(schema.model_fields), n=1, cutoff=0.6)
    suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
    return f"Unknown parameter {name!r}.{suggestion}"


# Each pydantic error type that a parameter can raise, in this project's words: pydantic's own
# messages ("Input should be ...") are its wording, which a release may change.
_REASONS = {
    "missing": "is required",
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "literal_error": "must be {expected}",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "extra_forbidden": "is not one of its options",
}
UNWORDED = "has a value of the wrong kind"  # for an error type missing above; a test keeps it unused
_UNION_TAGS = ("int", "float", "str", "bool", "list", "dict", "literal[", "list[", "dict[")


def _plain(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _reason(err: Mapping[str, Any]) -> str:
    template = _REASONS.get(err["type"])
    ctx = {k: _plain(v) for k, v in err.get("ctx", {}).items()}
    return template.format(**ctx) if template else UNWORDED


def _location(loc: tuple[Any, ...]) -> str:
    """``tolerations[0].key``; a union member's tag (``rdzv_id.int``) is not a place."""
    parts = [p for p in loc[1:] if not (isinstance(p, str) and p.startswith(_UNION_TAGS))]
    return str(loc[0]) + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts) if loc else ""


def format_validation_error(exc: ValidationError) -> str:
    """``Invalid parameter 'name': reason (got value).`` per parameter; the alternatives of a
    union are one problem ("must be a whole number or a string")."""
    problems: dict[str, tuple[list[str], Any, bool]] = {}
    for err in exc.errors(include_url=False):
        ours = err["type"] == "value_error"  # our own validators, whose message quotes the value
        reason = err["msg"].removeprefix("Value error, ") if ours else _reason(err)
        reasons, _, _ = problems.setdefault(_location(err["loc"]), ([], err["input"], ours))
        if reason not in reasons:
            reasons.append(reason.removeprefix("must be ") if reasons and reason.startswith("must be ") else reason)
    out = []
    for name, (reasons, value, ours) in problems.items():
        reason = " or ".join(reasons)
        if reason == _REASONS["missing"]:
            out.append(f"Missing required parameter {name!r}.")
        elif not name:  # a cross-field check, whose message names its parameters itself
            out.append(reason)
        elif ours:
            out.append(f"Invalid parameter {name!r}: {reason.rstrip('.')}.")
        else:
            out.append(f"Invalid parameter {name!r}: {reason} (got {value!r}).")
    return " ".join(out)


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


def reused_field(schema: type[BaseModel], name: str, **changes: Any) -> Any:
    """``schema``'s field ``name`` (its type, bounds and help text) for another schema, with
    ``changes`` (another default, or help text that says why it differs there)."""
    return FieldInfo.merge_field_infos(schema.model_fields[name], **changes)
