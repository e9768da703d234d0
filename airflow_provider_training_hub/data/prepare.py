"""Tokenize and mask messages into instructlab-training's processed format, atomically.

The data is validated first (``validate.py``): a bad line is a ``ValueError`` naming the line,
field and reason, not upstream's "Malformed or missing data"; and only the normalised valid
samples (extra keys dropped) reach upstream's processing. The steps are upstream's own
(``instructlab.training.data_process``), so labels are exactly what its trainer expects; we run
them one by one to count what upstream drops without saying so (samples under its 20-token
minimum or at/over ``max_seq_len``), and write ``data.jsonl`` atomically.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from airflow_provider_training_hub.data.atomic import AtomicWriter
from airflow_provider_training_hub.data.records import messages_location, with_messages_under
from airflow_provider_training_hub.data.tables import table_kind
from airflow_provider_training_hub.data.workers import workers_die_on_sigterm

if TYPE_CHECKING:
    from airflow_provider_training_hub.data.records import RecordFormat, RecordsReport

log = logging.getLogger(__name__)

PROCESSED_FILE = "data.jsonl"
VALIDATED_FILE = "validated.jsonl"
ALPACA_MESSAGES_FILE = "alpaca_messages.jsonl"
RENAMED_FILE = "renamed_messages.jsonl"  # field_messages' chats, under "messages"
PASSTHROUGH_FIELD = "text"  # what training_hub's passthrough data holds (TRL's dataset_text_field)
UPSTREAM_MIN_SEQ_LEN = 20  # data_process.filter_samples_by_length's default


@dataclass(frozen=True)
class PreparedData:
    path: str
    samples: int
    kept: int
    dropped_too_short: int
    dropped_too_long: int


def default_num_proc() -> int:
    return max(1, min(16, os.cpu_count() or 1))


def prepare_for_training(
    data_path: str, model_path: str, output_dir: str, max_seq_len: int, num_proc: int | None = None,
    unmask_messages: bool = False, field_messages: str = "messages",
) -> PreparedData:
    """Write ``<output_dir>/data.jsonl`` (input_ids, labels, len) and report what was dropped. With
    ``unmask_messages``, every sample is learned as one marked ``"unmask": true`` is: every turn but
    the system's. ``field_messages`` names the field that holds each chat's messages."""
    from instructlab.training import data_process as dp

    from airflow_provider_training_hub.data.validate import validate_messages

    num_proc = num_proc or default_num_proc()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    source, table = data_path, table_kind(data_path)
    if field_messages != "messages" and not table:  # a table's column is renamed as it is read
        source = str(out / RENAMED_FILE)
        with_messages_under(data_path, field_messages, source)
    report = validate_messages(source, output_path=str(out / VALIDATED_FILE),
                               field_messages=field_messages if table else "messages")
    if not report.valid:
        if field_messages != "messages":  # the user's file and field, not our copy's
            report.data_path = data_path
            report.errors = [replace(e, location=messages_location(e.location, field_messages)) for e in report.errors]
        kind = f"{table} table" if table else "JSONL"
        raise ValueError(f"data_path {data_path!r} is not valid messages {kind}:\n{report.summary()}")
    with workers_die_on_sigterm():
        dataset = dp.load_and_validate_dataset(report.output_path, num_proc)
        if unmask_messages:
            dataset = dataset.map(lambda _: {"unmask": True}, num_proc=num_proc, desc="unmask_messages")
        tokenizer = dp.configure_tokenizer(model_path)
        processed = dp.process_samples(dataset, tokenizer, num_proc)
        lengths = processed["len"]
        too_short = sum(1 for n in lengths if n < UPSTREAM_MIN_SEQ_LEN)
        too_long = sum(1 for n in lengths if n >= max_seq_len)
        if too_short or too_long:
            log.warning(
                "%d of %d samples dropped: %d shorter than %d tokens, %d at or over max_seq_len=%d",
                too_short + too_long, len(lengths), too_short, UPSTREAM_MIN_SEQ_LEN, too_long, max_seq_len,
            )
        kept = dp.filter_samples_by_length(processed, max_seq_len, num_proc=num_proc)
        if kept.num_rows == 0:
            raise ValueError(
                f"No sample of {data_path!r} is between {UPSTREAM_MIN_SEQ_LEN} and max_seq_len={max_seq_len} tokens; "
                "raise max_seq_len or check the data."
            )
        final = dp.prepare_final_dataset(kept, tokenizer, num_proc)
        with AtomicWriter(str(out / PROCESSED_FILE)) as writer:
            final.to_json(writer.file, lines=True, orient="records")
    log.info("prepared %d of %d samples into %s", kept.num_rows, len(lengths), out / PROCESSED_FILE)
    return PreparedData(str(out / PROCESSED_FILE), len(lengths), kept.num_rows, too_short, too_long)


def _checked_records(data_path: str, fmt: RecordFormat, output: Path, what: str) -> RecordsReport:
    """``validate_records`` into ``output`` (its directory made), or a ``ValueError`` listing each
    bad line of the ``what`` data."""
    from airflow_provider_training_hub.data.records import validate_records

    if table := table_kind(data_path):
        raise ValueError(f"data_path {data_path!r} is a {table} table, read here as messages only: give {what} data "
                         "as JSONL.")
    output.parent.mkdir(parents=True, exist_ok=True)
    report = validate_records(data_path, fmt, str(output))
    if not report.valid:
        raise ValueError(f"data_path {data_path!r} is not valid {what} JSONL:\n{report.summary()}")
    return report


def prepare_documents(
    data_path: str, model_path: str, output_dir: str, document_column_name: str, num_proc: int | None = None
) -> PreparedData:
    """``is_pretraining``: write ``<output_dir>/data.jsonl`` (input_ids, len per document) with
    upstream's ``process_documents_for_pretraining``; training cuts it into ``block_size`` blocks."""
    from instructlab.training import data_process as dp

    from airflow_provider_training_hub.data.records import documents

    num_proc = num_proc or default_num_proc()
    out = Path(output_dir)
    report = _checked_records(data_path, documents(document_column_name), out / VALIDATED_FILE, "pretraining")
    # upstream writes in place
    with tempfile.TemporaryDirectory(prefix=".documents-", dir=out) as tmp, workers_die_on_sigterm():
        dp.process_documents_for_pretraining(
            data_path=str(out / VALIDATED_FILE), data_output_path=tmp, model_path=model_path,
            num_cpu_procs=num_proc, document_column_name=document_column_name,
        )
        os.replace(Path(tmp) / PROCESSED_FILE, out / PROCESSED_FILE)
    log.info("prepared %d documents into %s", report.records, out / PROCESSED_FILE)
    return PreparedData(str(out / PROCESSED_FILE), report.records, report.records, 0, 0)


def prepare_alpaca(data_path: str, model_path: str, output_dir: str, max_seq_len: int,
                   fields: tuple[str, str, str], unmask_messages: bool = False) -> PreparedData:
    """``dataset_type="alpaca"``: each record (``fields``: instruction, input, output) checked and
    turned into a user and an assistant turn, then prepared as messages are."""
    from airflow_provider_training_hub.data.records import alpaca

    messages = Path(output_dir) / ALPACA_MESSAGES_FILE
    _checked_records(data_path, alpaca(*fields), messages, "alpaca")
    return prepare_for_training(str(messages), model_path, output_dir, max_seq_len, unmask_messages=unmask_messages)


def prepare_text(data_path: str, model_path: str, output_dir: str, max_seq_len: int) -> PreparedData:
    """``dataset_type="passthrough"``: each line's ``text``, formatted by its author, tokenized as
    it is (plus the end-of-sequence token) and learned whole; samples are dropped and counted by
    length as chats are."""
    from airflow_provider_training_hub.data.records import documents

    out = Path(output_dir)
    report = _checked_records(data_path, documents(PASSTHROUGH_FIELD, "passthrough texts"), out / VALIDATED_FILE,
                              "passthrough")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    kept = too_short = too_long = 0
    with open(out / VALIDATED_FILE, encoding="utf-8") as source, AtomicWriter(str(out / PROCESSED_FILE)) as writer:
        for line in source:
            ids = tokenizer(json.loads(line)[PASSTHROUGH_FIELD])["input_ids"]
            ids += eos if not ids or ids[-1] not in eos else []
            if len(ids) < UPSTREAM_MIN_SEQ_LEN or len(ids) >= max_seq_len:
                too_short += len(ids) < UPSTREAM_MIN_SEQ_LEN
                too_long += len(ids) >= max_seq_len
                continue
            writer.write((json.dumps({"input_ids": ids, "labels": ids, "len": len(ids)}) + "\n").encode())
            kept += 1
        if not kept:
            raise ValueError(f"No text of {data_path!r} is between {UPSTREAM_MIN_SEQ_LEN} and max_seq_len={max_seq_len} "
                             "tokens; raise max_seq_len or check the data.")
    if too_short or too_long:
        log.warning("%d of %d texts dropped: %d shorter than %d tokens, %d at or over max_seq_len=%d",
                    too_short + too_long, report.records, too_short, UPSTREAM_MIN_SEQ_LEN, too_long, max_seq_len)
    log.info("prepared %d of %d texts into %s", kept, report.records, out / PROCESSED_FILE)
    return PreparedData(str(out / PROCESSED_FILE), report.records, kept, too_short, too_long)
