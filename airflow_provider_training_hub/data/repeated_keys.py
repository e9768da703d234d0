"""Repeated keys: JSON allows them and every fast decoder keeps only the last value, silently.

We refuse them, since a line whose ``role`` says two things is a mistake upstream. Finding them
must cost little, because it runs on every block of every file:

1. Every string the schema expects was decoded, so a block holds exactly that many strings,
   unless it holds more: a repeated key, or a key the schema does not know. Counting the quotes
   that delimit strings (all quotes but the escaped ones) is one numpy pass, about 0.2 s per GB.
2. Only when there are more strings (extra keys, which are allowed) is each of the schema's keys
   counted on its own; a count above what was decoded means a repeat may be there.
3. Only then is the line parsed again with ``json`` to name the repeated key, or clear it.
"""

from __future__ import annotations

import json
import re

import msgspec
import numpy as np

from airflow_provider_training_hub.data.schema import Batch, Message, Sample

_QUOTE, _BACKSLASH = ord('"'), ord("\\")
# Extra keys are ignored, so a repeated one is too.
_SCHEMA_KEYS = {f.encode_name for struct in (Sample, Message) for f in msgspec.structs.fields(struct)}
# A key's letters written as \u escapes ("rol\u0065" is "role" to any JSON decoder).
_ESCAPED_KEY_CHARACTER = re.compile(rb"\\u00[5-7]")


def expected_strings(batch: Batch) -> int:
    """The strings a batch holds if it holds only the schema's keys, each once."""
    return (
        len(batch.samples)  # "messages"
        + batch.unmask_given  # "unmask" (its value is not a string)
        + 4 * len(batch.messages)  # "role", its value, "content", its value
        + 2 * batch.reasoning_given - batch.reasoning_null  # "reasoning_content" and its value unless null
    )


def delimited_strings(data: bytes) -> int | None:
    """How many strings ``data`` (valid JSON lines) holds; None when escaped backslashes make the
    count need a parse."""
    codes = np.frombuffer(data, np.uint8)
    quotes = int(np.count_nonzero(codes == _QUOTE))
    if b"\\" in data:  # memchr: quick to rule out
        escaped = codes[np.flatnonzero(codes == _BACKSLASH) + 1]  # what each backslash escapes
        if np.any(escaped == _BACKSLASH):
            return None
        quotes -= int(np.count_nonzero(escaped == _QUOTE))
    return quotes // 2


def _schema_keys_counted_once(data: bytes, batch: Batch) -> bool:
    n, samples = len(batch.messages), len(batch.samples)
    return (
        data.count(b'"role"') == n
        and data.count(b'"content"') == n
        and data.count(b'"messages"') == samples
        and data.count(b'"unmask"') == batch.unmask_given
        and data.count(b'"reasoning_content"') == batch.reasoning_given
        and not (b"\\u00" in data and _ESCAPED_KEY_CHARACTER.search(data))
    )


def may_repeat_a_key(data: bytes, batch: Batch) -> bool:
    """Whether ``data`` (one line or a block, decoded into ``batch``) could repeat a key.

    False is certain; True only means that :func:`repeated_key` must look, line by line.
    """
    if delimited_strings(data) == expected_strings(batch):
        return False
    return not _schema_keys_counted_once(data, batch)


class _Repeated(Exception):
    def __init__(self, where: str, key: str) -> None:
        self.where, self.key = where, key


def repeated_key(line: bytes) -> tuple[str, str] | None:
    """``(location, reason)`` of the first repeated key of the format in a line, if it has one."""
    seen_messages = 0

    def hook(pairs):
        nonlocal seen_messages
        keys = [k for k, _ in pairs]
        repeated = next((k for k in keys if k in _SCHEMA_KEYS and keys.count(k) > 1), None)
        is_message = "role" in keys or "content" in keys
        if repeated is not None:
            raise _Repeated(f"messages[{seen_messages}]" if is_message else "", repeated)
        seen_messages += is_message
        return dict(pairs)

    try:
        json.loads(line, object_pairs_hook=hook)
    except _Repeated as r:
        return (f"{r.where}.{r.key}" if r.where else r.key), "duplicate key (only one value would be used)"
    return None
