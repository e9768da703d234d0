"""Records of one flat JSON object per line, each field a string: pretraining documents
(``is_pretraining``, the field ``document_column_name``), and training_hub's other dataset types,
``passthrough`` (its ``text``) and ``alpaca`` (instruction, optional input, output); and chats whose
messages are under another name (``field_messages``), renamed for the messages checks.

Checked like messages data (the line, the field, the reason, in this project's words), and
written back with the declared fields alone, or converted (``alpaca`` into messages): upstream's
``datasets`` loader infers one Arrow type per column across all lines, so a stray extra key of
mixed types would fail deep in its processing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from airflow_provider_training_hub.data.atomic import AtomicWriter
from airflow_provider_training_hub.data.line_problems import line_problem, overlong_problem
from airflow_provider_training_hub.data.reader import DEFAULT_MAX_LINE_BYTES, LineTooLong, iter_blocks, open_source
from airflow_provider_training_hub.data.validate import DEFAULT_MAX_ERRORS, LineError


@dataclass
class RecordsReport:
    data_path: str
    kind: str  # "pretraining documents", "alpaca records"...
    records: int = 0
    characters: int = 0
    error_count: int = 0
    errors: list[LineError] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.records > 0 and self.error_count == 0

    def summary(self) -> str:
        lines = [f"{self.data_path}: {'VALID' if self.valid else 'INVALID'} {self.kind}",
                 f"  {self.records} valid records, {self.characters} characters, {self.error_count} errors"]
        lines += [f"  {e}" for e in self.errors]
        if self.error_count > len(self.errors):
            lines.append(f"  ... and {self.error_count - len(self.errors)} more errors ({self.error_count} in total)")
        return "\n".join(lines)


@dataclass(frozen=True)
class RecordFormat:
    """What a line must hold: string ``fields`` (those in ``optional`` may be left out, as ""), of
    which ``non_empty`` must say something; ``convert`` makes the line that is written."""

    kind: str
    fields: tuple[str, ...]
    non_empty: tuple[str, ...]
    optional: tuple[str, ...] = ()
    convert: Callable[[msgspec.Struct], Any] = lambda record: record

    def struct(self) -> type[msgspec.Struct]:
        return msgspec.defstruct(
            "Record", [(name, str, "") if name in self.optional else (name, str) for name in self.fields],
            gc=False, kw_only=True,
        )


def documents(column: str, kind: str = "pretraining documents") -> RecordFormat:
    """One non-empty text per line: ``is_pretraining``'s documents, and ``passthrough``'s texts."""
    return RecordFormat(kind, (column,), (column,))


def alpaca(instruction: str, input_: str, output: str) -> RecordFormat:
    """Alpaca records as a two-turn chat: the instruction (with its input after a blank line) is
    the user's turn, the output the assistant's, which is what is learned."""

    def to_messages(record: msgspec.Struct) -> dict[str, Any]:
        prompt = getattr(record, instruction)
        if getattr(record, input_).strip():
            prompt += "\n\n" + getattr(record, input_)
        return {"messages": [{"role": "user", "content": prompt},
                             {"role": "assistant", "content": getattr(record, output)}]}

    return RecordFormat("alpaca records", (instruction, input_, output), (instruction, output), (input_,), to_messages)


def _lines(data_path: str) -> Iterator[tuple[int, bytes | LineTooLong]]:
    with open_source(data_path) as f:
        for block in iter_blocks(f, DEFAULT_MAX_LINE_BYTES):
            yield from enumerate(block.lines, block.first_line)


def validate_records(
    data_path: str, fmt: RecordFormat, output_path: str, max_errors: int = DEFAULT_MAX_ERRORS
) -> RecordsReport:
    """Check every line; when all are valid, write each converted to ``output_path``."""
    struct = fmt.struct()
    decoder, encoder = msgspec.json.Decoder(struct), msgspec.json.Encoder()
    report = RecordsReport(data_path, fmt.kind)

    def refuse(number: int, location: str, reason: str) -> None:
        report.error_count += 1
        if len(report.errors) < max_errors:
            report.errors.append(LineError(number, location, reason))

    with AtomicWriter(output_path) as out:
        for number, line in _lines(data_path):
            if isinstance(line, LineTooLong):
                refuse(number, *overlong_problem(line, DEFAULT_MAX_LINE_BYTES))
                continue
            if line.isspace():
                continue
            try:
                record = decoder.decode(line[:-1])
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                refuse(number, *line_problem(line[:-1], struct))
                continue
            if empty := [name for name in fmt.non_empty if not getattr(record, name).strip()]:
                refuse(number, empty[0], "must not be empty")
                continue
            report.records += 1
            report.characters += sum(len(getattr(record, name)) for name in fmt.fields)
            out.write(encoder.encode(fmt.convert(record)) + b"\n")
        if report.records == 0 and report.error_count == 0:
            refuse(0, "", "the file holds no records")
        if not report.valid:
            out.discard()
    return report


def with_messages_under(data_path: str, field: str, output_path: str) -> None:
    """Each line's ``field`` as ``messages``, into ``output_path``; a ``messages`` of the line's own
    is an extra key, dropped, so a line without ``field`` is missing its messages. A line that is
    not an object is copied as it is. The messages checks then report each line at its own number
    (``messages_location`` names the field again); a line over the length limit is refused here,
    since it cannot be copied."""
    with AtomicWriter(output_path) as out:
        for number, line in _lines(data_path):
            if isinstance(line, LineTooLong):
                _, reason = overlong_problem(line, DEFAULT_MAX_LINE_BYTES)
                raise ValueError(f"data_path {data_path!r}: line {number}: {reason}")
            try:
                record = msgspec.json.decode(line)
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                record = None
            if isinstance(record, dict):  # a "messages" of its own is an extra key: without field, it is missing
                record.pop("messages", None)
                if field in record:
                    record["messages"] = record.pop(field)
                line = msgspec.json.encode(record) + b"\n"
            out.write(line if line.endswith(b"\n") else line + b"\n")


def messages_location(location: str, field: str) -> str:
    """A messages problem's place, ``messages[2].role``, under the data's own name for the field."""
    return field + location.removeprefix("messages") if location.startswith("messages") else location
