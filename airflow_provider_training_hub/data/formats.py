"""The kinds of training data, by the name a CLI flag or an operator argument gives them."""

from __future__ import annotations

from typing import Any

from airflow_provider_training_hub.data.validate import ValidationReport, validate_messages

DATA_FORMATS = ("messages", "preference")  # sft and lora_sft's chats; dpo's preference pairs


def validate_any(data_path: str, data_format: str = "messages", *, max_seq_len: int | None = None,
                 **options: Any) -> ValidationReport:
    """``validate_messages`` or, for ``"preference"``, ``validate_preferences`` (JSONL only),
    whose token limit is dpo's ``max_length`` (given here as ``max_seq_len``)."""
    if data_format == "messages":
        return validate_messages(data_path, max_seq_len=max_seq_len, **options)
    if data_format == "preference":
        from airflow_provider_training_hub.data.preference import validate_preferences

        return validate_preferences(data_path, max_length=max_seq_len, **options)
    raise ValueError(f"data_format must be one of {', '.join(map(repr, DATA_FORMATS))}, got {data_format!r}")
