"""Reading JSONL from anywhere fsspec can open, many whole lines at a time, in bounded memory.

Lines come in blocks because reading them one by one costs about 1.7 us per line here (as much
as decoding a 2 KB line), where ``BytesIO(block).readlines()`` splits a block at memchr speed.

Handled on purpose: a UTF-8 BOM on the first line (stripped), CRLF endings and a last line
without a newline (both given a plain LF, so that the same sample reads the same bytes),
``.gz`` and other compressions (by extension), and lines longer than ``max_line_bytes``
(reported, and skipped without ever being held in memory whole).

A local uncompressed file can also be cut into byte ranges that start at line starts
(:func:`line_ranges`), each read on its own (:class:`RangeReader`) by a worker process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from itertools import pairwise
from typing import BinaryIO, Protocol

import fsspec
from fsspec.utils import infer_compression

BOM = b"\xef\xbb\xbf"
DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
DEFAULT_BLOCK_BYTES = 256 * 1024  # small enough to stay in the CPU cache between the passes over it
_DRAIN = 1024 * 1024


def is_plain_local(path: str) -> bool:
    """A local path to an uncompressed file: one that can be read from any offset."""
    return "://" not in path and infer_compression(path) is None


@contextmanager
def open_source(path: str) -> Iterator[BinaryIO]:
    """A binary stream of ``path``: a local path or any fsspec URL (``memory://``, ``s3://``...)."""
    try:
        if is_plain_local(path):
            f = open(path, "rb")  # noqa: SIM115 (closed below); fsspec's wrapper adds nothing locally
        else:
            f = fsspec.open(path, "rb", compression="infer").open()
    except FileNotFoundError:
        raise ValueError(f"data_path {path!r} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"data_path {path!r} is a directory: give the JSONL file in it") from None
    with f:
        yield f


class LineSource(Protocol):
    """What :func:`iter_blocks` reads from: a binary file, or a :class:`RangeReader` of one."""

    def read(self, size: int, /) -> bytes: ...

    def readline(self, size: int, /) -> bytes: ...


class LineTooLong(Exception):
    def __init__(self, length: int) -> None:
        self.length = length


@dataclass(frozen=True)
class Block:
    """Consecutive whole lines. ``data`` is their raw bytes (for scans over the whole block);
    ``lines`` are the same lines, each ending in one LF, an overlong one replaced by a
    ``LineTooLong`` (``has_stand_ins`` says so; a table's blocks put a ``RowProblem`` in place of
    a row that is no line)."""

    first_line: int
    data: bytes
    lines: list[bytes | LineTooLong]
    has_stand_ins: bool = False


def iter_blocks(
    f: LineSource, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, block_bytes: int = DEFAULT_BLOCK_BYTES,
    *, at_file_start: bool = True,
) -> Iterator[Block]:
    """Blocks of about ``block_bytes``, cut at line ends, numbered from line 1. A BOM is stripped
    only ``at_file_start``: anywhere else it is a byte of a line."""
    number = 1
    first = at_file_start
    while chunk := f.read(block_bytes):
        drained = None
        if not chunk.endswith(b"\n"):  # complete the last line, or find that it is too long to hold
            start = chunk.rfind(b"\n") + 1
            want = max(0, max_line_bytes - (len(chunk) - start)) + 1
            rest = f.readline(want)
            if rest.endswith(b"\n") or len(rest) < want:
                chunk += rest
            else:
                length = len(chunk) - start + len(rest) + _skip_rest_of_line(f)
                chunk, drained = chunk[:start], LineTooLong(length)
        if first:  # once the first line is whole, even with a block smaller than the BOM
            chunk, first = chunk.removeprefix(BOM), False
        lines: list[bytes | LineTooLong] = BytesIO(chunk).readlines()
        if lines and not chunk.endswith(b"\n"):
            lines[-1] += b"\n"
        if b"\r" in chunk:
            lines = [line[:-2] + b"\n" if line.endswith(b"\r\n") else line for line in lines]
        has_stand_ins = drained is not None
        if len(chunk) > max_line_bytes + 1 and max(map(len, lines)) > max_line_bytes + 1:
            has_stand_ins = True
            lines = [LineTooLong(len(line)) if len(line) > max_line_bytes + 1 else line for line in lines]
        if drained is not None:
            lines.append(drained)
        yield Block(number, chunk, lines, has_stand_ins)
        number += len(lines)


def _skip_rest_of_line(f: LineSource) -> int:
    """Read to the end of the current line without ever holding it whole; its length."""
    length = 0
    while piece := f.readline(_DRAIN):
        length += len(piece)
        if piece.endswith(b"\n"):
            break
    return length


def _next_line_start(f: BinaryIO, position: int) -> int:
    """The offset of the first line that starts at or after ``position``."""
    if position == 0:
        return 0
    f.seek(position - 1)
    _skip_rest_of_line(f)
    return f.tell()


def line_ranges(path: str, parts: int) -> list[tuple[int, int]]:
    """Up to ``parts`` non-empty byte ranges of about equal size that cover a local file and start
    at line starts, so that each can be read on its own (see :class:`RangeReader`)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        cuts = sorted({_next_line_start(f, size * k // parts) for k in range(parts)} | {size})
    return list(pairwise(cuts))


class RangeReader:
    """``read`` and ``readline`` of a binary file that end at ``end``, as ``iter_blocks`` uses them."""

    def __init__(self, f: BinaryIO, start: int, end: int) -> None:
        f.seek(start)
        self._f, self._left = f, end - start

    def read(self, size: int) -> bytes:
        data = self._f.read(min(size, self._left))
        self._left -= len(data)
        return data

    def readline(self, size: int) -> bytes:
        data = self._f.readline(min(size, self._left))
        self._left -= len(data)
        return data
