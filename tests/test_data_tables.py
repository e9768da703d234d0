"""Parquet, CSV and saved Hugging Face datasets as messages data: the same checks, reasons and
statistics as JSONL, problems named by row, and the same prepared data for training."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, SAMPLE_DATA

from airflow_provider_training_hub.algorithms import SFTParams
from airflow_provider_training_hub.data import validate_messages
from airflow_provider_training_hub.data.tables import ROWS_PER_BLOCK, table_blocks

BAD = REPO / "tests" / "data" / "bad"
EXPECTED = json.loads((BAD / "EXPECTED.json").read_text(encoding="utf-8"))
# The bad corpus's files whose rows a table can hold as they are (one type per column). A null in
# a table is an absent value, so content_null's explicit null is not among them.
AS_TABLES = ["bad_role.jsonl", "bom_then_bad_line.jsonl", "crlf_with_bad_line.jsonl", "empty_messages.jsonl",
             "message_not_object.jsonl", "messages_not_list.jsonl", "missing_content.jsonl",
             "missing_messages.jsonl", "missing_role.jsonl", "no_assistant.jsonl", "only_system_unmask.jsonl",
             "pretraining_without_markers.jsonl", "reasoning_not_string.jsonl", "unmask_string.jsonl"]


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]


def write_table(rows: list[dict], path: Path, kind: str, field: str = "messages") -> Path:
    """``rows`` as a data team would publish them: every column in every row (pyarrow and datasets
    take the columns from the first row), null where a record has none."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    rows = [{key: row.get(key) for key in columns} for row in rows]
    if kind == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=7)  # several row groups
    elif kind == "csv":  # the chats as JSON text, the other columns as plain values
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({**{k: "" if v is None else json.dumps(v) for k, v in row.items()},
                                 field: json.dumps(row[field])})
    else:
        from datasets import Dataset

        Dataset.from_list(rows).save_to_disk(str(path))
    return path


SUFFIX = {"parquet": ".parquet", "csv": ".csv", "dataset": ""}


@pytest.mark.parametrize("kind", ["parquet", "csv", "dataset"])
def test_a_table_validates_as_its_jsonl_does(kind, tmp_path):
    """The same samples, statistics and normalised output as the JSONL file the table was made from."""
    table = write_table(records(SAMPLE_DATA), tmp_path / f"train{SUFFIX[kind]}", kind)
    from_table = validate_messages(str(table), output_path=str(tmp_path / "table.jsonl"))
    from_jsonl = validate_messages(str(SAMPLE_DATA), output_path=str(tmp_path / "jsonl.jsonl"))
    assert from_table.valid and from_table.errors == []
    assert from_table.stats == from_jsonl.stats
    assert (tmp_path / "table.jsonl").read_bytes() == (tmp_path / "jsonl.jsonl").read_bytes()


@pytest.mark.parametrize("name", AS_TABLES)
@pytest.mark.parametrize("kind", ["parquet", "dataset"])
def test_a_bad_row_is_named_by_row_with_the_jsonl_reason(kind, name, tmp_path):
    expected = EXPECTED[name]
    table = write_table(records(BAD / name), tmp_path / f"bad{SUFFIX[kind]}", kind)
    report = validate_messages(str(table))
    assert not report.valid
    first = report.errors[0]
    # blank lines are no rows: the row is the record's place among the records
    row = sum(1 for line in (BAD / name).read_text(encoding="utf-8-sig").splitlines()[:expected["line"]]
              if line.strip())
    assert (first.unit, first.line) == ("row", row)
    assert str(first).startswith(f"row {row}: ")
    assert re.fullmatch(expected["location"], first.location), first
    assert re.search(expected["reason"], first.reason), first


def test_a_csv_cell_that_is_not_json_is_named_with_its_reason(tmp_path):
    """The skip policy keeps the good rows, and the quarantine names the bad one by row."""
    path = tmp_path / "chats.csv"
    good = json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    path.write_text(f'id,messages\n1,"{good.replace(chr(34), 2 * chr(34))}"\n2,"[{{""role"": ""user""}},]"\n',
                    encoding="utf-8")
    report = validate_messages(str(path), on_invalid="skip", output_path=str(tmp_path / "valid.jsonl"))
    assert [str(e) for e in report.errors] == ["row 2: messages: is not valid JSON: character 19: a comma before ']'"]
    assert report.valid and report.stats["samples"] == 1
    rejected = json.loads((tmp_path / "valid.jsonl.rejected.jsonl").read_text(encoding="utf-8"))
    assert rejected == {"row": 2, "errors": ["messages: is not valid JSON: character 19: a comma before ']'"],
                        "text": ""}


def test_a_table_is_read_a_batch_at_a_time(tmp_path):
    rows = records(SAMPLE_DATA) * 50  # 2,400 rows
    table = write_table(rows, tmp_path / "big.parquet", "parquet")
    blocks = list(table_blocks(str(table), "parquet"))
    assert [b.first_line for b in blocks][:3] == [1, 1 + len(blocks[0].lines), 1 + 2 * len(blocks[0].lines)]
    assert sum(len(b.lines) for b in blocks) == len(rows)
    assert max(len(b.lines) for b in blocks) <= ROWS_PER_BLOCK


def test_what_is_no_table_is_refused_by_name(tmp_path):
    fake = tmp_path / "train.parquet"
    fake.write_text('{"messages": []}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"^data_path '.*train.parquet' is not a readable parquet table: "):
        validate_messages(str(fake))
    with pytest.raises(ValueError, match="field_messages names a table's column"):
        validate_messages(str(SAMPLE_DATA), field_messages="conversation")


def test_a_table_is_prepared_for_training_as_its_jsonl(tiny_model, tmp_path):
    """Under another column name (field_messages), through instructlab-training's own processing:
    the same data.jsonl, byte for byte; a saved dataset directory passes the path checks."""
    from airflow_provider_training_hub.data.prepare import prepare_for_training

    rows = [{**row, "conversation": row.pop("messages"), "source": "crm"} for row in records(SAMPLE_DATA)]
    table = write_table(rows, tmp_path / "train.parquet", "parquet", field="conversation")
    from_table = prepare_for_training(str(table), str(tiny_model), str(tmp_path / "t"), 256, num_proc=1,
                                      field_messages="conversation")
    from_jsonl = prepare_for_training(str(SAMPLE_DATA), str(tiny_model), str(tmp_path / "j"), 256, num_proc=1)
    assert from_table.samples == from_jsonl.samples > 0
    assert Path(from_table.path).read_bytes() == Path(from_jsonl.path).read_bytes()

    bad = [{"conversation": [{"role": "bot", "content": "x"}]}]
    with pytest.raises(ValueError, match=r"is not valid messages parquet table:\n(.|\n)*"
                                         r"row 1: conversation\[0\]\.role: invalid value 'bot'"):
        prepare_for_training(str(write_table(bad, tmp_path / "bad.parquet", "parquet", field="conversation")),
                             str(tiny_model), str(tmp_path / "b"), 256, num_proc=1, field_messages="conversation")

    dataset = write_table(records(SAMPLE_DATA), tmp_path / "saved", "dataset")
    SFTParams.parse({"model_path": str(tiny_model), "data_path": str(dataset), "ckpt_output_dir": "c"}
                    ).check_local_paths()


def test_other_dataset_types_are_refused_as_tables(tmp_path):
    from airflow_provider_training_hub.data.prepare import prepare_text

    table = write_table([{"text": "a document long enough to train on"}], tmp_path / "docs.parquet", "parquet",
                        field="text")
    with pytest.raises(ValueError, match=r"is a parquet table, read here as messages only: give passthrough "
                                         r"data as JSONL\.$"):
        prepare_text(str(table), "unused-model", str(tmp_path / "out"), 256)


def test_a_table_is_read_through_fsspec_as_jsonl_is(tmp_path):
    """Parquet from an fsspec URL (memory://, as s3:// would be), and a missing one named."""
    import fsspec

    table = write_table(records(SAMPLE_DATA), tmp_path / "train.parquet", "parquet")
    with fsspec.open("memory://bucket/train.parquet", "wb") as f:
        f.write(table.read_bytes())
    assert validate_messages("memory://bucket/train.parquet").stats == validate_messages(str(table)).stats
    with pytest.raises(ValueError, match=r"^data_path 'memory://bucket/none.parquet' does not exist$"):
        validate_messages("memory://bucket/none.parquet")
