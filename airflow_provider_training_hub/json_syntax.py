"""What is wrong with a JSON text, in this project's words, from the standard library's
``JSONDecodeError``: its position is structured, but its message is the library's English, which
differs between Python versions (3.13 added the trailing-comma messages). Data lines, config
files, ``--config-env`` and connection fields all word their syntax errors here.
"""

from __future__ import annotations

import json
from typing import Any

# JSONDecodeError.msg (Python 3.11 to 3.14) -> this project's phrase.
_PHRASES = {
    "Expecting value": "expected a value",
    "Expecting ',' delimiter": "expected ',' or a closing bracket",
    "Expecting ':' delimiter": "expected ':' after a key",
    "Expecting property name enclosed in double quotes": "expected a key in double quotes",
    "Illegal trailing comma before end of object": "a comma before '}'",
    "Illegal trailing comma before end of array": "a comma before ']'",
    "Extra data": "more text after the end of the JSON value",
    "Unterminated string": "a string is not closed",
    "Invalid control character at": "a control character inside a string must be escaped (e.g. \\t, \\n)",
    "Invalid \\escape": "invalid escape sequence in a string",
    "Invalid \\uXXXX escape": "invalid \\u escape in a string",
    "Unexpected UTF-8 BOM": "a byte order mark (BOM) before the value",
}
UNKNOWN = "not valid JSON here"  # a message the table does not know (a newer Python's)


def ends_early(exc: json.JSONDecodeError) -> bool:
    """Whether the text stops inside a value (a cut line or file), rather than holding a mistake."""
    return exc.pos >= len(exc.doc.rstrip()) or exc.msg.startswith("Unterminated string")


def syntax_phrase(exc: json.JSONDecodeError) -> str:
    """The problem at ``exc.pos``, e.g. "expected ':' after a key"."""
    if ends_early(exc):
        return "the text ends inside a value"
    before, at = exc.doc[: exc.pos].rstrip(), exc.doc[exc.pos : exc.pos + 1]
    if before.endswith(",") and at in ("]", "}"):  # Python < 3.13 says only "Expecting value"
        return f"a comma before '{at}'"
    return next((mine for theirs, mine in _PHRASES.items() if exc.msg.startswith(theirs)), UNKNOWN)


def at_character(exc: json.JSONDecodeError) -> str:
    """``is not valid JSON: character N: phrase``, for a value given as one line of text."""
    return f"is not valid JSON: character {exc.pos + 1}: {syntax_phrase(exc)}"


def describe(exc: json.JSONDecodeError) -> str:
    """``line L, column C: phrase``, for a text of several lines (a config file)."""
    return f"line {exc.lineno}, column {exc.colno}: {syntax_phrase(exc)}"


def loads(text: str, what: str) -> Any:
    """A value given as JSON text (a CLI flag): a syntax error is a ``ValueError`` ``"<what>: <phrase>"``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what}: {syntax_phrase(exc)}") from None
