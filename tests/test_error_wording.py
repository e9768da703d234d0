"""What users read when their input is wrong is worded by this project, not by pydantic, msgspec or
the json module, whose English changes between releases (msgspec 0.23 reworded invalid UTF-8).

The fallbacks for wording we do not know (``UNWORDED``, ``json_syntax.UNKNOWN``) exist for a
future library release; these tests keep them unreached on the versions installed.
"""

from __future__ import annotations

import json
import re

import pytest

from airflow_provider_training_hub import json_syntax
from airflow_provider_training_hub.algorithms.params import UNWORDED
from airflow_provider_training_hub.algorithms.sft import SFTParams
from airflow_provider_training_hub.connection import ConnectionSettings
from airflow_provider_training_hub.data.line_problems import line_problem
from airflow_provider_training_hub.data.validate import check_line

# Phrases of the libraries' own messages; none may reach a user.
LIBRARY_WORDING = re.compile(r"Input should|Value error|Expected `|`, got `|Input data was|JSON is malformed|"
                             r"Invalid UTF-8 encoded|Expecting |Extra data|pydantic|msgspec|\[type=")
REQUIRED = {"model_path": "m", "data_path": "d", "ckpt_output_dir": "c"}
# A value of each JSON kind, and the out-of-range numbers the bounds refuse.
KINDS = ["x", -1, 0, 1.5, True, None, [], {}, [1], {"a": 1}, float("nan")]


def _message(parse, values) -> str | None:
    try:
        parse(values)
    except ValueError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize(("schema", "parse", "base"), [
    (SFTParams, SFTParams.parse, REQUIRED),
    (ConnectionSettings, ConnectionSettings.from_extra, {}),
], ids=["sft", "connection"])
def test_every_parameter_error_is_worded_here(schema, parse, base):
    seen = 0
    for name in schema.model_fields:
        for value in KINDS:
            message = _message(parse, {**base, name: value})
            if message is None:
                continue
            seen += 1
            assert UNWORDED not in message and not LIBRARY_WORDING.search(message), (name, value, message)
            assert name in message, message
    assert seen > 5 * len(schema.model_fields)  # most kinds are refused by most fields


def test_union_alternatives_are_one_problem():
    assert _message(SFTParams.parse, {**REQUIRED, "rdzv_id": []}) == (
        "Invalid parameter 'rdzv_id': must be a whole number or a string (got [])."
    )


@pytest.mark.parametrize(("extra", "message"), [
    ({"node_selector": "{gpu: h100}"},
     "Invalid parameter 'node_selector': is not valid JSON: character 2: expected a key in double quotes."),
    ({"tolerations": '[{"key": "a"},]'},  # 3.13 points at the comma, 3.11 at the bracket
     "Invalid parameter 'tolerations': is not valid JSON: character 1[45]: a comma before ']'."),
    ({"image_pull_secrets": '["regcred"'}, "Invalid parameter 'image_pull_secrets': is not valid JSON: character 11: the text ends inside a value."),
    ({"execution": "k8s"}, "Invalid parameter 'execution': must be 'local' or 'kubernetes' (got 'k8s')."),
    ({"node_selector": {"gpu": 1}}, "Invalid parameter 'node_selector.gpu': must be a string (got 1)."),
    ({"job_url_template": "https://console/ns/{namespace}/jobs/{jobname}"},
     "Invalid parameter 'job_url_template': may contain {namespace} and {job_name} only, not {jobname}: "
     "'https://console/ns/{namespace}/jobs/{jobname}'."),
    ({"job_url_template": "console/{job_name}"},
     "Invalid parameter 'job_url_template': must be an http(s) URL, got 'console/{job_name}'."),
])
def test_connection_field_errors(extra, message):
    pattern = re.escape(f"connection of type 'training_hub': {message}").replace("1\\[45\\]", "1[45]")
    assert re.fullmatch(pattern, _message(ConnectionSettings.from_extra, extra))


# One text for each mistake the standard library reports, as 3.11 to 3.14 report it.
BAD_JSON = {
    "{": "the text ends inside a value",
    '{"a": 1,}': "a comma before '}'",
    "[1, 2,]": "a comma before ']'",
    '{"a" 1}': "expected ':' after a key",
    "{'a': 1}": "expected a key in double quotes",
    '{"a": 1 "b": 2}': "expected ',' or a closing bracket",
    '{"a": }': "expected a value",
    '{"a": 1} x': "more text after the end of the JSON value",
    '{"a": "x\ty"}': "a control character inside a string must be escaped (e.g. \\t, \\n)",
    '{"a": "\\q"}': "invalid escape sequence in a string",
    '{"a": "\\u12"}': "invalid \\u escape in a string",
    '{"a": "open': "the text ends inside a value",
    '\ufeff{}': "a byte order mark (BOM) before the value",
}


@pytest.mark.parametrize("text", sorted(BAD_JSON))
def test_json_syntax_phrases_cover_this_python(text):
    with pytest.raises(json.JSONDecodeError) as exc:
        json.loads(text)
    assert json_syntax.syntax_phrase(exc.value) == BAD_JSON[text]


@pytest.mark.parametrize(("line", "problem"), [
    (b'{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "y"}]}',
     ("", "a \\u escape stands for half of a surrogate pair, which is not valid Unicode")),
    (b"[" * 5000, ("", "JSON nested too deeply to read (over Python's recursion limit)")),
    # valid JSON, but deeper than the standard library reads: msgspec skips the unknown key
    (b'{"messages": [{"role": "user", "content": "x"}], "meta": ' + b"[" * 5000 + b"]" * 5000 + b"}",
     ("", "JSON nested too deeply to read (over Python's recursion limit)")),
    (b'{"messages": [{"role": 5, "content": "x"}]}',
     ("messages[0].role", "expected one of 'system', 'user', 'assistant', 'pretraining', got a number")),
    (b'{"messages": [{"content": "x", "role": "user", "reasoning_content": []}]}',
     ("messages[0].reasoning_content", "expected a string or null, got an array")),
    (b'{"messages": [{"role": "user"}], "unmask": "yes"}', ("messages[0].content", "missing required field")),
    (b'{"unmask": "yes", "messages": [{"role": "user"}]}', ("unmask", "expected true or false, got a string")),
    (b'{"messages": [{"role": "user", "content": "caf\xc3\xa9 \xff"}]}', ("", "invalid UTF-8 at byte 49")),
    (b'{"messages": [{"role": "user", "content": "caf\xc3\xa9"}], x}', ("", "malformed JSON at byte 53: expected a key in double quotes")),
])
def test_line_problems(line, problem):
    assert line_problem(line) == problem
    assert check_line(line) == (None, [problem])  # what validation reports for the line


@pytest.mark.parametrize("workers", [1, 2])
def test_a_line_nested_too_deeply_is_skipped_like_any_invalid_line(tmp_path, workers):
    from airflow_provider_training_hub.data.validate import validate_messages

    good = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    deep = b'{"messages": [{"role": "user", "content": "x"}], "meta": ' + b"[" * 5000 + b"]" * 5000 + b"}\n"
    (tmp_path / "d.jsonl").write_bytes(good + deep + good)
    report = validate_messages(str(tmp_path / "d.jsonl"), on_invalid="skip", output_path=str(tmp_path / "out.jsonl"),
                               workers=workers)
    assert report.valid and [(e.line, e.reason) for e in report.errors] == [
        (2, "JSON nested too deeply to read (over Python's recursion limit)")]
    assert (tmp_path / "out.jsonl").read_bytes().count(b"\n") == 2
