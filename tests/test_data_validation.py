"""Messages JSONL validation: a bad-input corpus with exact lines and reasons, good files, policies."""

import gzip
import json
import re
import shutil
from pathlib import Path

import pytest

from airflow_provider_training_hub.data import validate_messages

DATA = Path(__file__).resolve().parent / "data"
EXPECTED = json.loads((DATA / "bad" / "EXPECTED.json").read_text())


def test_the_corpus_is_complete():
    files = {p.name for p in (DATA / "bad").iterdir()} - {"EXPECTED.json"}
    assert files == set(EXPECTED) and len(files) >= 30


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_file_names_line_location_and_reason(name):
    expected = EXPECTED[name]
    report = validate_messages(str(DATA / "bad" / name))
    assert not report.valid
    first_bad = report.errors[0]
    assert first_bad.line == expected["line"], report.summary()
    assert re.search(expected["location"], first_bad.location), (first_bad, report.summary())
    assert re.search(expected["reason"], first_bad.reason), (first_bad, report.summary())


@pytest.mark.parametrize("name", sorted([*EXPECTED, *(f"../good/{p.name}" for p in (DATA / "good").iterdir())]))
def test_workers_report_what_one_process_reports(name):
    """Each file of the corpus cut in up to three shares, each checked by a forked worker."""
    path = str(DATA / "bad" / name)
    assert validate_messages(path, workers=3).to_dict() == validate_messages(path, workers=1).to_dict()


@pytest.mark.parametrize("name", sorted(p.name for p in (DATA / "good").iterdir()))
def test_good_files_pass(name):
    report = validate_messages(str(DATA / "good" / name))
    assert report.valid, report.summary()
    assert report.error_count == 0


def test_statistics(tmp_path):
    report = validate_messages(str(DATA / "good" / "system_reasoning_unmask.jsonl"))
    stats = report.stats
    assert stats["samples"] == 6 and stats["invalid_lines"] == 0
    assert stats["messages_by_role"] == {"assistant": 4, "pretraining": 2, "system": 1, "user": 4}
    assert stats["unmask_samples"] == 1 and stats["reasoning_samples"] == 1
    assert json.loads(json.dumps(report.to_dict())) == report.to_dict()  # XCom-safe
    bom = validate_messages(str(DATA / "good" / "bom_crlf_blank_no_final_newline.jsonl")).stats
    assert (bom["samples"], bom["blank_lines"], bom["duplicate_samples"]) == (2, 1, 0)


def test_duplicates_are_counted(tmp_path):
    line = (DATA / "good" / "system_reasoning_unmask.jsonl").read_text().splitlines()[0]
    # byte-exact duplicates whatever their line ending; a different byte makes a different sample
    (tmp_path / "dups.jsonl").write_bytes(("\n".join([line] * 4 + [line + " "]) + "\r\n" + line).encode())
    assert validate_messages(str(tmp_path / "dups.jsonl")).stats["duplicate_samples"] == 4


def test_all_errors_counted_first_n_listed(tmp_path):
    bad = '{"messages": [{"role": "bot", "content": "x"}]}'
    (tmp_path / "many.jsonl").write_text("\n".join([bad] * 50) + "\n")
    report = validate_messages(str(tmp_path / "many.jsonl"), max_errors=5)
    assert report.error_count == 50 and [e.line for e in report.errors] == [1, 2, 3, 4, 5]
    assert "... and 45 more errors (50 in total)" in report.summary()


def test_skip_policy_writes_valid_lines_and_quarantines_the_rest(tmp_path):
    src = DATA / "bad" / "bad_role.jsonl"
    out = tmp_path / "clean.jsonl"
    report = validate_messages(str(src), on_invalid="skip", output_path=str(out))
    assert report.valid and report.stats["samples"] == 1 and report.stats["invalid_lines"] == 1
    assert len(out.read_text().splitlines()) == 1
    rejected = [json.loads(l) for l in Path(report.quarantine_path).read_text().splitlines()]
    assert rejected[0]["line"] == 2 and "invalid value 'bot'" in rejected[0]["errors"][0]
    assert '"bot"' in rejected[0]["text"]


def test_fail_policy_leaves_no_output_behind(tmp_path):
    out = tmp_path / "clean.jsonl"
    report = validate_messages(str(DATA / "bad" / "bad_role.jsonl"), output_path=str(out))
    assert not report.valid and report.output_path is None
    assert list(tmp_path.iterdir()) == []


def test_extra_keys_are_dropped_from_the_output(tmp_path):
    out = tmp_path / "clean.jsonl"
    validate_messages(str(DATA / "good" / "system_reasoning_unmask.jsonl"), output_path=str(out))
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert all(set(r) <= {"messages", "unmask"} for r in rows)
    assert all(set(m) <= {"role", "content", "reasoning_content"} for r in rows for m in r["messages"])


def test_very_long_line_is_reported_without_being_held(tmp_path):
    good = (DATA / "good" / "system_reasoning_unmask.jsonl").read_text().splitlines()[0]
    long_line = '{"messages": [{"role": "user", "content": "' + "x" * 300_000 + '"}]}'
    (tmp_path / "long.jsonl").write_text("\n".join([good, long_line, good]) + "\n")
    report = validate_messages(str(tmp_path / "long.jsonl"), max_line_bytes=100_000)
    assert [(e.line, e.reason.split(",")[0]) for e in report.errors] == [(2, "line is 300048 bytes")]
    assert report.stats["samples"] == 2


def test_gzip_and_fsspec_sources(tmp_path):
    import fsspec

    src = DATA / "bad" / "missing_content.jsonl"
    with open(src, "rb") as f, gzip.open(tmp_path / "data.jsonl.gz", "wb") as g:
        shutil.copyfileobj(f, g)
    for url in (str(tmp_path / "data.jsonl.gz"), f"file://{src}"):
        report = validate_messages(url)
        assert [(e.line, e.reason) for e in report.errors] == [(3, "missing required field")], url
    with fsspec.open("memory://bucket/train.jsonl", "wb") as f:
        f.write((DATA / "good" / "system_reasoning_unmask.jsonl").read_bytes())
    assert validate_messages("memory://bucket/train.jsonl").stats["samples"] == 6
    with pytest.raises(ValueError, match="does not exist"):
        validate_messages("memory://bucket/nope.jsonl")


def test_bad_policy_arguments():
    with pytest.raises(ValueError, match="on_invalid must be 'fail' or 'skip'"):
        validate_messages("x", on_invalid="ignore")
    with pytest.raises(ValueError, match="needs output_path"):
        validate_messages("x", on_invalid="skip")


def test_token_statistics_with_the_model_tokenizer(tiny_model, sample_data):
    report = validate_messages(str(sample_data), model_path=str(tiny_model), max_seq_len=40)
    tokens = report.stats["tokens"]
    assert 0 < tokens["p50"] <= tokens["p95"] <= tokens["max"]
    assert tokens["max_seq_len"] == 40 and 0 < tokens["over_max_seq_len"] < report.stats["samples"]
    assert "over max_seq_len=40" in report.summary()
    # forked workers count with the tokenizer loaded before the fork
    assert validate_messages(str(sample_data), model_path=str(tiny_model), max_seq_len=40, workers=2).stats == report.stats
