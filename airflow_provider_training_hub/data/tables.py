"""Data teams' tables as messages data: Parquet, CSV and a saved Hugging Face dataset.

Each row is the sample that one JSONL line would hold, so the validation checks it with the same
decoder and reasons (``validate.py``), numbered as a row: "row 3: messages[0].role: ...". A null
is an absent value (a table has every column in every row). A table is read one record batch at
a time, never whole.

- ``.parquet``: the columns as they are (``messages`` a list of structs).
- ``.csv``: the ``messages`` column (``field_messages``) holds each chat as JSON text; other
  columns are plain values.
- a directory that ``datasets.Dataset.save_to_disk`` wrote (``state.json`` and Arrow files),
  read with pyarrow alone.

Parquet and CSV come from a local path or any fsspec URL, as JSONL does; a saved dataset is a
local directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

from airflow_provider_training_hub.data.reader import Block, open_source
from airflow_provider_training_hub.json_syntax import at_character

ROWS_PER_BLOCK = 1024
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class RowProblem:
    """A row that cannot become a line at all (a CSV cell that is not JSON), with why."""

    location: str
    reason: str


def table_kind(path: str) -> str | None:
    """``"parquet"``, ``"csv"`` or ``"dataset"`` for a table this module reads, else None (JSONL)."""
    if os.path.isdir(path):
        return "dataset" if os.path.isfile(os.path.join(path, "state.json")) else None
    suffix = os.path.splitext(path)[1].lower()
    return {".parquet": "parquet", ".csv": "csv"}.get(suffix)


def table_blocks(path: str, kind: str, field_messages: str = "messages") -> Iterator[Block]:
    """Blocks of rows as the JSON lines they stand for (each ending in LF), numbered from row 1;
    a row that cannot be one is a ``RowProblem`` in its place. ``field_messages`` is the column of
    the chats, given as ``messages`` as ``records.with_messages_under`` gives a JSONL line's."""
    number = 1
    for batch in _batches(path, kind, field_messages):
        deep = kind == "csv" or any(_nested_nulls(column) for column in batch.columns)
        lines = [_line(row, kind, field_messages, deep) for row in batch.to_pylist()]
        problem = any(isinstance(line, RowProblem) for line in lines)
        data = b"".join(line for line in lines if isinstance(line, bytes))
        yield Block(number, data, lines, has_stand_ins=problem)
        number += len(lines)


def _line(row: dict[str, Any], kind: str, field_messages: str, deep: bool) -> bytes | RowProblem:
    text = row.get(field_messages)
    if kind == "csv" and isinstance(text, str):  # the chats' column holds JSON text
        try:
            row[field_messages] = json.loads(text)
        except json.JSONDecodeError as exc:
            return RowProblem("messages", at_character(exc))
    if field_messages != "messages":  # a "messages" of the row's own is an extra column
        row.pop("messages", None)
        if field_messages in row:
            row["messages"] = row.pop(field_messages)
    if deep:
        return _encoder.encode(_without_nulls(row)) + b"\n"
    return _encoder.encode({key: value for key, value in row.items() if value is not None}) + b"\n"


def _nested_nulls(array: Any) -> bool:
    """Whether a column holds a null below its top level (a message's missing field): only then
    does a row need ``_without_nulls``' walk, which costs more than the rest of its reading."""
    import pyarrow as pa

    kind = array.type
    if pa.types.is_struct(kind):
        return any(child.null_count or _nested_nulls(child) for child in array.flatten())
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        values = array.flatten()
        return bool(values.null_count) or _nested_nulls(values)
    return False


def _without_nulls(value: Any) -> Any:
    """A table gives every row every column (and every message every field of the struct), null
    where the record had none: a null is an absent value, as in the JSONL line it stands for."""
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


def _batches(path: str, kind: str, json_column: str) -> Iterator[Any]:
    """pyarrow record batches of at most ``ROWS_PER_BLOCK`` rows."""
    import pyarrow as pa

    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            with open_source(path) as f:  # a local path or any fsspec URL, as JSONL
                yield from pq.ParquetFile(f).iter_batches(ROWS_PER_BLOCK)
        elif kind == "csv":
            from pyarrow import csv

            # the JSON column stays text, whatever its cells look like
            options = csv.ConvertOptions(column_types={json_column: pa.string()})
            with open_source(path) as f:
                for batch in csv.open_csv(f, convert_options=options):
                    yield from _slices(batch)
        else:
            for arrow_file in _dataset_files(path):
                with pa.OSFile(arrow_file) as source:  # read, not mapped: the process holds one batch
                    for batch in pa.ipc.open_stream(source):
                        yield from _slices(batch)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"data_path {path!r} is not a readable {kind} table: {exc}") from None


def _slices(batch: Any) -> Iterator[Any]:
    for start in range(0, batch.num_rows, ROWS_PER_BLOCK):
        yield batch.slice(start, ROWS_PER_BLOCK)


def _dataset_files(path: str) -> list[str]:
    """The Arrow files of a saved dataset, in its order (``state.json``'s ``_data_files``)."""
    try:
        with open(os.path.join(path, "state.json"), encoding="utf-8") as f:
            files = [entry["filename"] for entry in json.load(f)["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"data_path {path!r}: its state.json does not list the dataset's files ({exc})") from None
    return [os.path.join(path, name) for name in files]
