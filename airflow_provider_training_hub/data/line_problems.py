"""Why a line is not a sample, in this project's words.

msgspec decodes every line, but when it refuses one its message is English of its own, which has
changed between releases (0.23 reworded invalid UTF-8) and carries no structured position or path.
So a refused line, a rare event, is examined again here:

1. its bytes as UTF-8 (the offset comes from ``UnicodeDecodeError.start``);
2. its text as JSON, with the standard library (the byte offset from ``JSONDecodeError.pos``,
   the phrase from ``json_syntax.py``);
3. its value against the struct it should decode to (``schema.Sample`` for messages), walking the
   struct's own annotations, so the format is still declared once.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

import msgspec

from airflow_provider_training_hub.data.reader import LineTooLong
from airflow_provider_training_hub.data.schema import Sample
from airflow_provider_training_hub.json_syntax import ends_early, syntax_phrase

Problem = tuple[str, str]  # (location, reason), e.g. ("messages[1].content", "missing required field")

_TRUNCATED = "truncated JSON: the line ends inside a value"


NESTED_TOO_DEEPLY = "JSON nested too deeply to read (over Python's recursion limit)"


class _NonFiniteNumber(ValueError):
    pass


def _reject_constant(name: str) -> None:
    raise _NonFiniteNumber(name)


def line_problem(line: bytes, struct: type[msgspec.Struct] = Sample) -> Problem:
    """The first problem of a line (without its line ending) that msgspec refused to decode as
    ``struct`` (a messages ``Sample``, or a pretraining document's)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return "", f"invalid UTF-8 at byte {exc.start}"
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except _NonFiniteNumber:
        return "", "NaN and Infinity are not valid JSON numbers"
    except json.JSONDecodeError as exc:
        return "", _syntax_reason(text, exc)
    except RecursionError:
        return "", NESTED_TOO_DEEPLY
    problem = _shape_problem(value, struct, "")
    if problem:
        return problem
    if _has_lone_surrogate(value):
        return "", "a \\u escape stands for half of a surrogate pair, which is not valid Unicode"
    return "", "not a valid sample"  # msgspec refused what the checks above accept: say no more than that


def overlong_problem(line: LineTooLong, max_line_bytes: int) -> Problem:
    """A line the reader would not hold (``reader.LineTooLong``)."""
    return "", f"line is {line.length} bytes, over the {max_line_bytes}-byte limit"


def _syntax_reason(text: str, exc: json.JSONDecodeError) -> str:
    if ends_early(exc):
        return _TRUNCATED
    return f"malformed JSON at byte {len(text[: exc.pos].encode('utf-8'))}: {syntax_phrase(exc)}"


def json_kind(value: Any) -> str:
    """What a decoded JSON value is, as JSON names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _members(annotation: Any) -> tuple[Any, ...]:
    """The alternatives of a union annotation, ``UnsetType`` (an absent field) left out."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return tuple(t for t in typing.get_args(annotation) if t is not msgspec.UnsetType)
    return (annotation,)


def _describe(annotation: Any) -> str:
    if annotation is str:
        return "a string"
    if annotation is bool:
        return "true or false"
    if annotation is type(None):
        return "null"
    if typing.get_origin(annotation) is list:
        return "an array"
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(annotation)))
    return "an object"  # a Struct


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _shape_problem(value: Any, annotation: Any, where: str) -> Problem | None:
    """The first place where ``value`` is not what ``annotation`` (a struct's field type) says, in
    the order msgspec reads it: an object's keys in the line's order, then its missing fields."""
    members = _members(annotation)
    if len(members) > 1:
        if any(_shape_problem(value, m, where) is None for m in members):
            return None
        return where, f"expected {' or '.join(map(_describe, members))}, got {json_kind(value)}"
    annotation = members[0]
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return _struct_problem(value, annotation, where)
    if typing.get_origin(annotation) is list:
        if not isinstance(value, list):
            return where, f"expected an array, got {json_kind(value)}"
        item_type = typing.get_args(annotation)[0]
        return next(filter(None, (_shape_problem(v, item_type, f"{where}[{i}]") for i, v in enumerate(value))), None)
    if typing.get_origin(annotation) is typing.Literal:
        allowed = typing.get_args(annotation)
        if isinstance(value, str) and value in allowed:
            return None
        if isinstance(value, str):
            return where, f"invalid value {value!r} (allowed: {', '.join(allowed)})"
        return where, f"expected {_describe(annotation)}, got {json_kind(value)}"
    ok = value is None if annotation is type(None) else isinstance(value, annotation)
    return None if ok else (where, f"expected {_describe(annotation)}, got {json_kind(value)}")


def _struct_problem(value: Any, struct: type[msgspec.Struct], where: str) -> Problem | None:
    if not isinstance(value, dict):
        if not where:
            return "", f"each line must be a JSON object, got {json_kind(value)}"
        return where, f"expected an object, got {json_kind(value)}"
    fields = {f.encode_name: f for f in msgspec.structs.fields(struct)}
    for key, item in value.items():
        if key in fields and (problem := _shape_problem(item, fields[key].type, _join(where, key))):
            return problem
    missing = next((name for name, f in fields.items() if f.required and name not in value), None)
    return (_join(where, missing), "missing required field") if missing else None


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, dict):
        return any(map(_has_lone_surrogate, value)) or any(map(_has_lone_surrogate, value.values()))
    return isinstance(value, list) and any(map(_has_lone_surrogate, value))
