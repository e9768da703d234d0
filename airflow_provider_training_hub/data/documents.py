"""Pretraining documents (``is_pretraining``): one JSON object per line, its raw text in the field
that ``document_column_name`` names, as training_hub and instructlab-training read them.

Checked like messages data (the line, the field, the reason, in this project's words), and
written back with that field alone: upstream's ``datasets`` loader infers one Arrow type per
column across all lines, so a stray extra key of mixed types would fail deep in its processing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import msgspec

from airflow_provider_training_hub.data.atomic import AtomicWriter
from airflow_provider_training_hub.data.line_problems import line_problem, overlong_problem
from airflow_provider_training_hub.data.reader import DEFAULT_MAX_LINE_BYTES, LineTooLong, iter_blocks, open_source
from airflow_provider_training_hub.data.validate import DEFAULT_MAX_ERRORS, LineError


@dataclass
class DocumentsReport:
    data_path: str
    documents: int = 0
    characters: int = 0
    error_count: int = 0
    errors: list[LineError] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.documents > 0 and self.error_count == 0

    def summary(self) -> str:
        lines = [f"{self.data_path}: {'VALID' if self.valid else 'INVALID'} pretraining documents",
                 f"  {self.documents} valid documents, {self.characters} characters, {self.error_count} errors"]
        lines += [f"  {e}" for e in self.errors]
        if self.error_count > len(self.errors):
            lines.append(f"  ... and {self.error_count - len(self.errors)} more errors ({self.error_count} in total)")
        return "\n".join(lines)


def document_struct(column: str) -> type[msgspec.Struct]:
    """A struct with the one required string field ``column``."""
    return msgspec.defstruct("Document", [(column, str)], gc=False)


def _lines(data_path: str) -> Iterator[tuple[int, bytes | LineTooLong]]:
    with open_source(data_path) as f:
        for block in iter_blocks(f, DEFAULT_MAX_LINE_BYTES):
            yield from enumerate(block.lines, block.first_line)


def validate_documents(
    data_path: str, column: str, output_path: str, max_errors: int = DEFAULT_MAX_ERRORS
) -> DocumentsReport:
    """Check every line; when all are valid, write them, ``column`` only, to ``output_path``."""
    struct = document_struct(column)
    decoder, encoder = msgspec.json.Decoder(struct), msgspec.json.Encoder()
    report = DocumentsReport(data_path)

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
                document = decoder.decode(line[:-1])
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                refuse(number, *line_problem(line[:-1], struct))
                continue
            text = getattr(document, column)
            if not text.strip():
                refuse(number, column, "must not be empty")
                continue
            report.documents += 1
            report.characters += len(text)
            out.write(encoder.encode(document) + b"\n")
        if report.documents == 0 and report.error_count == 0:
            refuse(0, "", "the file holds no documents")
        if not report.valid:
            out.discard()
    return report
