"""MkDocs hooks: the pages' tables of parameters, connection fields and validation reasons are
generated from the code at build time, so the site cannot fall behind the schema.

A page asks for a table with a line ``<!-- generated: NAME -->``; an unknown NAME fails the build.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

REPO = Path(__file__).resolve().parent.parent
BAD_DATA = REPO / "tests" / "data" / "bad"  # the validation tests' corpus: one bad file per reason
_MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.M)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _type(annotation: Any) -> str:
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return " | ".join(_type(a) for a in typing.get_args(annotation))
    return re.sub(r"\btyping\.|\bcollections\.abc\.", "", str(annotation))


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    value = field.default_factory() if field.default_factory is not None else field.default
    return "unset" if value is None else f"`{value!r}`"


def _fields_table(schema: type[BaseModel], first_column: str) -> str:
    """One row per field; a field's form label (its ``title``), where it has one, leads its text."""
    rows = [f"| {first_column} | type | default | description |", "| --- | --- | --- | --- |"]
    for name, field in schema.model_fields.items():
        text = f"**{field.title}.** {field.description or ''}" if field.title else field.description or ""
        rows.append(f"| `{name}` | {_cell(_type(field.annotation))} | {_cell(_default(field))} | {_cell(text)} |")
    return "\n".join(rows)


def parameters() -> str:
    """Every registered algorithm (plugins' too), its backends and every parameter of its schema."""
    from airflow_provider_training_hub import AlgorithmRegistry

    out = []
    for name in AlgorithmRegistry.list_algorithms():
        algorithm = AlgorithmRegistry.get_algorithm(name)
        backends = ", ".join(f"`{b}`" for b in AlgorithmRegistry.list_backends(name))
        out += [
            f"### `{name}` parameters",
            "",
            f"Schema `{algorithm.params_schema.__name__}`; backends {backends} (default "
            f"`{AlgorithmRegistry.default_backend(name)}`).",
            "",
            _fields_table(algorithm.params_schema, "parameter"),
            "",
        ]
    return "\n".join(out)


def connection() -> str:
    from airflow_provider_training_hub.connection import ConnectionSettings

    return _fields_table(ConnectionSettings, "field")


def _example(line: bytes) -> str:
    text = line.decode("utf-8", errors="backslashreplace").rstrip("\r\n")
    return text if len(text) <= 110 else text[:107] + "..."


def line_problems() -> str:
    """The first problem reported for each file of the corpus, with the line that has it."""
    from airflow_provider_training_hub.data import validate_messages

    rows = ["| the line | what `training-hub validate` reports |", "| --- | --- |"]
    for path in sorted(BAD_DATA.glob("*.jsonl")):
        report = validate_messages(str(path))
        problem = report.errors[0]
        lines = path.read_bytes().split(b"\n")
        line = f"`{_cell(_example(lines[problem.line - 1]))}`" if 0 < problem.line <= len(lines) else "(the whole file)"
        where = f"line {problem.line}: " if problem.line else ""
        location = f"{problem.location}: " if problem.location else ""
        rows.append(f"| {line} | {_cell(f'{where}{location}{problem.reason}')} |")
    return "\n".join(rows)


_GENERATORS = {"parameters": parameters, "connection": connection, "line-problems": line_problems}


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    def generate(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in _GENERATORS:
            raise ValueError(f"{page.file.src_path}: no generated table named {name!r} (known: {sorted(_GENERATORS)})")
        return _GENERATORS[name]()

    return _MARKER.sub(generate, markdown)
