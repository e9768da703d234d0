"""Streaming validation of messages JSONL: precise errors, statistics, and the skip policy.

Every line gets a typed decode (msgspec), the repeated-key check of ``repeated_keys.py`` and the
semantic checks of ``schema.py``; the run never stops at the first error. Memory stays flat: one
block of lines at a time, the first ``max_errors`` errors, and the statistics of ``stats.py``.

Lines are checked a block at a time, in C as far as possible (decode through ``map``, one numpy
pass for repeated keys), because a Python loop per line costs as much as decoding the line. A
block with any problem in it is checked again line by line, and only that path reports errors,
so the result does not depend on where blocks are cut.

That is still one core's work (about 0.5 GB/s on short lines here), so a large local file is cut
into shares, each checked by a forked worker (``workers.py``); their results are merged in file
order into what one process would have found.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import msgspec

from airflow_provider_training_hub.data.atomic import AtomicWriter
from airflow_provider_training_hub.data.reader import (
    DEFAULT_MAX_LINE_BYTES,
    Block,
    LineSource,
    LineTooLong,
    RangeReader,
    is_plain_local,
    iter_blocks,
    line_ranges,
    open_source,
)
from airflow_provider_training_hub.data.line_problems import NESTED_TOO_DEEPLY, line_problem, overlong_problem
from airflow_provider_training_hub.data.repeated_keys import may_repeat_a_key, repeated_key
from airflow_provider_training_hub.data.schema import Batch, Sample, semantic_problems
from airflow_provider_training_hub.data.stats import Statistics, chat_token_counter
from airflow_provider_training_hub.data.tables import RowProblem, table_blocks, table_kind
from airflow_provider_training_hub.data.workers import available_cpus, can_fork, run_forked

OnInvalid = Literal["fail", "skip"]
Write = Callable[[bytes], object]
DEFAULT_MAX_ERRORS = 20
# Automatic workers: one per CPU, at most 4 (each holds ~45 MB), each with at least 64 MiB to read
# (a fork, the merge and the concatenation of outputs cost a few ms; this keeps them well under 10%).
MAX_AUTO_WORKERS = 4
MIN_BYTES_PER_WORKER = 64 * 1024 * 1024
_decoder = msgspec.json.Decoder(Sample)
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class LineError:
    line: int
    location: str
    reason: str
    unit: str = "line"  # a table's samples are rows

    def __str__(self) -> str:
        where = f"{self.unit} {self.line}"
        return f"{where}: {self.location}: {self.reason}" if self.location else f"{where}: {self.reason}"


def describe_messages(s: dict[str, Any]) -> list[str]:
    """The summary lines of messages data's statistics."""
    lines = [
        f"  {s.get('samples', 0)} valid samples, {s.get('invalid_lines', 0)} invalid lines, "
        f"{s.get('blank_lines', 0)} blank lines, {s.get('duplicate_samples', 0)} exact duplicates",
        f"  messages by role: {s.get('messages_by_role', {})}; {s.get('characters', 0)} characters; "
        f"{s.get('unmask_samples', 0)} with unmask, {s.get('reasoning_samples', 0)} with reasoning",
    ]
    if "tokens" in s:
        t = s["tokens"]
        lines.append(f"  tokens p50 {t['p50']}, p95 {t['p95']}, max {t['max']}; "
                     f"{t['over_max_seq_len']} over max_seq_len={t['max_seq_len']}")
    return lines


@dataclass(frozen=True)
class DataFormat:
    """What each line of a kind of data holds, and how it is checked and counted: the reader,
    the workers, the skip policy and the error wording are the same for every kind.

    ``check_line`` gives a line's decoded item and its ``(location, reason)`` problems;
    ``valid_block`` the batch of a block whose every line is valid, else None; ``batch_of`` the
    batch of some valid items (with ``.samples``); ``statistics`` makes the counter (taking a
    token counter and a length limit) whose ``result()`` ``describe`` turns into summary lines."""

    name: str  # "messages", "preference"
    noun: str  # what a valid line is: "samples", "pairs"
    check_line: Callable[[bytes], tuple[Any, list[tuple[str, str]]]]
    valid_block: Callable[[Block], Any]
    batch_of: Callable[[list[Any]], Any]
    statistics: Callable[..., Any]
    describe: Callable[[dict[str, Any]], list[str]]
    tables: bool  # whether Parquet, CSV and saved datasets are read as this kind too


@dataclass
class ValidationReport:
    """Everything a pipeline needs to decide and to show; ``to_dict()`` is XCom-ready JSON."""

    data_path: str
    on_invalid: str
    valid: bool = False
    error_count: int = 0
    errors: list[LineError] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    output_path: str | None = None
    quarantine_path: str | None = None
    data_format: str = "messages"
    described: list[str] = field(default_factory=list, repr=False)  # the format's lines for ``stats``
    noun: str = field(default="samples", repr=False)  # what a valid line is

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["errors"] = [str(e) for e in self.errors]
        del data["described"], data["noun"]
        return data

    def summary_parts(self) -> tuple[list[str], list[str], list[str]]:
        """The summary's lines in three parts: what was read, the problems, where the outputs went
        (a task logs the problems at warning level, the rest at info)."""
        head = [f"{self.data_path}: {'VALID' if self.valid else 'INVALID'} ({self.on_invalid} policy)", *self.described]
        problems = [f"  {e}" for e in self.errors]
        if self.error_count > len(self.errors):
            problems.append(f"  ... and {self.error_count - len(self.errors)} more errors ({self.error_count} in total)")
        tail = []
        if self.output_path:
            tail.append(f"  valid {self.noun} written to {self.output_path}")
        if self.quarantine_path:
            tail.append(f"  invalid lines written to {self.quarantine_path}")
        return head, problems, tail

    def summary(self) -> str:
        return "\n".join(line for part in self.summary_parts() for line in part)


def check_line(line: bytes) -> tuple[Sample | None, list[tuple[str, str]]]:
    """The sample of one line (without its line ending) and its problems (``(location, reason)``
    pairs)."""
    try:
        sample = _decoder.decode(line)
    # msgspec.ValidationError is a DecodeError; a RecursionError is a line nested too deeply
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None, [line_problem(line)]
    try:
        repeated = may_repeat_a_key(line, Batch.of([sample])) and repeated_key(line)
    except RecursionError:  # msgspec skipped a deep unknown field that the standard library cannot read
        return None, [("", NESTED_TOO_DEEPLY)]
    if repeated:
        return None, [repeated]
    return sample, semantic_problems(sample)


def _valid_block(block: Block) -> Batch | None:
    """The samples of a block in which every line is a valid sample, else None."""
    if block.has_stand_ins:
        return None
    try:
        batch = Batch.of(list(map(_decoder.decode, block.lines)))  # a blank line fails too
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    if batch.has_problems() or may_repeat_a_key(block.data, batch):
        return None
    return batch


def _line_by_line(
    block: Block, fmt: DataFormat, report: ValidationReport, stats: Statistics, quarantine: Write | None,
    max_errors: int, max_line_bytes: int, unit: str,
) -> tuple[Batch, list[bytes]]:
    """Check each line of a block that holds a problem: record blank and invalid lines, and return
    the valid samples with their lines."""
    samples, lines = [], []
    for number, line in enumerate(block.lines, block.first_line):
        if isinstance(line, LineTooLong):
            sample, problems = None, [overlong_problem(line, max_line_bytes)]
        elif isinstance(line, RowProblem):
            sample, problems = None, [(line.location, line.reason)]
        elif line.isspace():
            stats.blank += 1
            continue
        else:
            sample, problems = fmt.check_line(line[:-1])
        if not problems:
            samples.append(sample)
            lines.append(line)
            continue
        stats.invalid += 1
        report.error_count += len(problems)
        room = max_errors - len(report.errors)
        report.errors.extend(LineError(number, loc, why, unit) for loc, why in problems[:room])
        if quarantine is not None:
            text = line[:10_000].decode("utf-8", "replace").rstrip("\n") if isinstance(line, bytes) else ""
            record = {unit: number, "errors": [f"{loc}: {why}" if loc else why for loc, why in problems], "text": text}
            quarantine(_encoder.encode(record) + b"\n")
    return fmt.batch_of(samples), lines


def _check_stream(
    f: LineSource, fmt: DataFormat, report: ValidationReport, stats: Statistics, out: Write | None,
    quarantine: Write | None, max_errors: int, max_line_bytes: int, at_file_start: bool = True,
) -> int:
    """Check every line of ``f`` into ``report`` and ``stats``; return how many lines it held."""
    blocks = iter_blocks(f, max_line_bytes, at_file_start=at_file_start)
    return _check_blocks(blocks, fmt, report, stats, out, quarantine, max_errors, max_line_bytes, "line")


def _check_blocks(
    blocks: Iterable[Block], fmt: DataFormat, report: ValidationReport, stats: Statistics, out: Write | None,
    quarantine: Write | None, max_errors: int, max_line_bytes: int, unit: str,
) -> int:
    """Check every line (or a table's row) of ``blocks``; return how many there were."""
    lines_read = 0
    for block in blocks:
        batch = fmt.valid_block(block)
        lines = block.lines
        if batch is None:
            batch, lines = _line_by_line(block, fmt, report, stats, quarantine, max_errors, max_line_bytes, unit)
        stats.add(batch, lines)
        if out is not None and batch.samples:
            out(_encoder.encode_lines(batch.samples))
        lines_read += len(block.lines)
    return lines_read


def _worker_ranges(data_path: str, workers: int | None) -> list[tuple[int, int]]:
    """The byte ranges of ``data_path`` to check in parallel; none when one process should read it
    all (a small, remote or compressed file, or where it cannot fork)."""
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if not (is_plain_local(data_path) and os.path.isfile(data_path) and can_fork()):
        return []
    if workers is None:
        workers = min(MAX_AUTO_WORKERS, available_cpus(), os.path.getsize(data_path) // MIN_BYTES_PER_WORKER)
    ranges = line_ranges(data_path, workers) if workers > 1 else []
    return ranges if len(ranges) > 1 else []


@dataclass
class _RangeResult:
    lines: int
    errors: list[LineError]
    error_count: int
    stats: Statistics


def _check_range(
    data_path: str, fmt: DataFormat, start: int, end: int, out_part: str | None, quarantine_part: str | None,
    stats: Statistics, max_errors: int, max_line_bytes: int,
) -> _RangeResult:
    """One worker's share: the lines that start in ``[start, end)``, numbered from 1, their valid
    samples and rejects written to the part files."""
    report = ValidationReport(data_path, "")
    part_stats = type(stats)(stats.token_length, stats.max_seq_len)  # the tokenizer comes with the fork
    with ExitStack() as stack:
        f = RangeReader(stack.enter_context(open(data_path, "rb")), start, end)
        out = stack.enter_context(open(out_part, "wb")).write if out_part else None
        quarantine = stack.enter_context(open(quarantine_part, "wb")).write if quarantine_part else None
        lines = _check_stream(f, fmt, report, part_stats, out, quarantine, max_errors, max_line_bytes, start == 0)
    return _RangeResult(lines, report.errors, report.error_count, part_stats)


def _check_in_workers(
    data_path: str, fmt: DataFormat, ranges: list[tuple[int, int]], report: ValidationReport, stats: Statistics,
    out: AtomicWriter | None, quarantine: AtomicWriter | None, max_errors: int, max_line_bytes: int,
) -> None:
    """Each range in a forked worker; their results merged in file order, as one process would have
    found them: line numbers shifted by the lines before, the first errors, the output parts."""
    parts = [(f"{out.tmp}.{k}" if out else None, f"{quarantine.tmp}.{k}" if quarantine else None)
             for k in range(len(ranges))]
    try:
        results = run_forked(_check_range, [
            (data_path, fmt, start, end, out_part, quarantine_part, stats, max_errors, max_line_bytes)
            for (start, end), (out_part, quarantine_part) in zip(ranges, parts, strict=True)
        ])
        before = 0
        for result, (out_part, quarantine_part) in zip(results, parts, strict=True):
            room = max_errors - len(report.errors)
            report.errors.extend(replace(e, line=e.line + before) for e in result.errors[:room])
            report.error_count += result.error_count
            stats.merge(result.stats)
            if out is not None:
                with open(out_part, "rb") as part:
                    shutil.copyfileobj(part, out.file, 1024 * 1024)
            if quarantine is not None:
                with open(quarantine_part, "rb") as part:
                    for line in part:  # rejects are numbered within their range
                        record = msgspec.json.decode(line)
                        record["line"] += before
                        quarantine.write(_encoder.encode(record) + b"\n")
            before += result.lines
    finally:
        for path in (p for pair in parts for p in pair if p):
            Path(path).unlink(missing_ok=True)


MESSAGES = DataFormat("messages", "samples", check_line, _valid_block, Batch.of, Statistics, describe_messages,
                      tables=True)


def validate_messages(
    data_path: str,
    *,
    on_invalid: OnInvalid = "fail",
    output_path: str | None = None,
    quarantine_path: str | None = None,
    model_path: str | None = None,
    max_seq_len: int | None = None,
    max_errors: int = DEFAULT_MAX_ERRORS,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    workers: int | None = None,
    field_messages: str = "messages",
) -> ValidationReport:
    """Validate ``data_path``; with ``output_path``, write its valid samples (normalised) there.

    Under ``on_invalid="skip"`` invalid lines go, with their reasons, to ``quarantine_path``
    (default: ``<output_path>.rejected.jsonl``) and the data is valid if any sample survives.

    ``data_path`` may also be a Parquet or CSV file or a saved Hugging Face dataset (``tables.py``):
    each row is checked as a line would be, and its problems name the row. ``field_messages`` is
    a table's column of the chats (a JSONL file's other field: ``records.with_messages_under``).

    A local uncompressed JSONL file is checked by ``workers`` forked processes, each over a share
    of its lines (default: one per CPU, up to 4, each with at least 64 MiB); the result is the
    same as one process gives.
    """
    if field_messages != "messages" and not table_kind(data_path):
        raise ValueError("field_messages names a table's column; a JSONL file's other field is given as messages by "
                         "records.with_messages_under first")
    return validate_data(
        data_path, MESSAGES, chat_token_counter(model_path) if model_path else None, max_seq_len,
        on_invalid=on_invalid, output_path=output_path, quarantine_path=quarantine_path, max_errors=max_errors,
        max_line_bytes=max_line_bytes, workers=workers, field_messages=field_messages)


def validate_data(
    data_path: str,
    fmt: DataFormat,
    token_length: Callable[[Any], Any] | None = None,
    max_length: int | None = None,
    *,
    on_invalid: OnInvalid = "fail",
    output_path: str | None = None,
    quarantine_path: str | None = None,
    max_errors: int = DEFAULT_MAX_ERRORS,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    workers: int | None = None,
    field_messages: str = "messages",
) -> ValidationReport:
    """``validate_messages`` for any ``DataFormat``: ``token_length`` counts an item's tokens
    for the statistics, against ``max_length``."""
    if on_invalid not in ("fail", "skip"):
        raise ValueError(f"on_invalid must be 'fail' or 'skip', got {on_invalid!r}")
    if on_invalid == "skip" and not output_path:
        raise ValueError(f"on_invalid='skip' needs output_path: where the valid {fmt.noun} go")
    if on_invalid == "skip":
        quarantine_path = quarantine_path or f"{output_path}.rejected.jsonl"
    table = table_kind(data_path)
    if table and not fmt.tables:
        raise ValueError(f"data_path {data_path!r} is a {table} table; {fmt.name} data is read from JSONL only")
    ranges = [] if table else _worker_ranges(data_path, workers)
    report = ValidationReport(data_path, on_invalid, output_path=output_path, quarantine_path=quarantine_path,
                              data_format=fmt.name, noun=fmt.noun)
    stats = fmt.statistics(token_length, max_length)

    with ExitStack() as stack:
        f = None if ranges or table else stack.enter_context(open_source(data_path))
        out = stack.enter_context(AtomicWriter(output_path)) if output_path else None
        quarantine = stack.enter_context(AtomicWriter(quarantine_path)) if quarantine_path else None
        write, reject = out.write if out else None, quarantine.write if quarantine else None
        if table:
            rows = table_blocks(data_path, table, field_messages)
            _check_blocks(rows, fmt, report, stats, write, reject, max_errors, max_line_bytes, "row")
        elif f is None:
            _check_in_workers(data_path, fmt, ranges, report, stats, out, quarantine, max_errors, max_line_bytes)
        else:
            _check_stream(f, fmt, report, stats, write, reject, max_errors, max_line_bytes)
        if stats.samples == 0 and stats.invalid == 0:
            report.error_count += 1
            report.errors.append(LineError(0, "", f"the file holds no {fmt.noun}"))
        report.stats = stats.result()
        report.described = fmt.describe(report.stats)
        report.valid = stats.samples > 0 and (stats.invalid == 0 or on_invalid == "skip")
        if not report.valid and out is not None:  # never leave an output a trainer could pick up
            out.discard()
            report.output_path = None
    return report
