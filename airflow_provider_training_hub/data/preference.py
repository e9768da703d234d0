"""Preference pairs for DPO: TRL's conversational preference format, checked like messages data.

A line is ``{"prompt": [messages], "chosen": [messages], "rejected": [messages]}``, or TRL's
implicit-prompt form ``{"chosen": [...], "rejected": [...]}``, whose shared leading messages are
the prompt (TRL's ``extract_prompt``). The messages are ``schema.Message``s; extra keys are
allowed and dropped, as in messages data. The validated output always has the explicit form.

The reader, the forked workers, the skip/quarantine policy and the error wording are
``validate.py``'s (a ``DataFormat``); what is checked beyond the types: no ``pretraining`` role,
a prompt that ends on a user turn, replies that start with an assistant turn and say something,
and chosen and rejected that differ.

Preparation renders each pair with the model's chat template as TRL 1.16's ``DPOTrainer`` does:
the prompt with the generation prompt, prompt + chosen and prompt + rejected; each completion
starts where its tokens leave the prompt's (TRL's ``common_prefix_length``). Sequences are cut
to ``max_length`` keeping their start, and a pair whose prompt alone fills ``max_length`` is
dropped (and counted), as TRL's ``truncation_mode="keep_start"`` does.
"""

from __future__ import annotations

import json
import logging
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from xxhash import xxh3_64_intdigest

from airflow_provider_training_hub.data.atomic import AtomicWriter
from airflow_provider_training_hub.data.prepare import PreparedData
from airflow_provider_training_hub.data.reader import Block, iter_blocks, open_source
from airflow_provider_training_hub.data.repeated_keys import delimited_strings
from airflow_provider_training_hub.data.schema import Message
from airflow_provider_training_hub.data.validate import (
    DEFAULT_MAX_ERRORS,
    DataFormat,
    OnInvalid,
    ValidationReport,
    validate_data,
)
from airflow_provider_training_hub.data.line_problems import line_problem

log = logging.getLogger(__name__)

PAIRS_FILE = "pairs.jsonl"  # prepared: prompt_ids, chosen_ids, rejected_ids per line
VALIDATED_PAIRS_FILE = "validated_pairs.jsonl"
Problem = tuple[str, str]
_DUPLICATE_KEY = "duplicate key (only one value would be used)"
_IDENTICAL = ("rejected", "is identical to chosen: the pair prefers neither")


class PreferencePair(msgspec.Struct, omit_defaults=True, gc=False, kw_only=True):
    prompt: list[Message] | msgspec.UnsetType = msgspec.UNSET
    chosen: list[Message]
    rejected: list[Message]


_decoder = msgspec.json.Decoder(PreferencePair)


def split_prompt(pair: PreferencePair) -> tuple[list[Message], list[Message], list[Message], int]:
    """The prompt and the two replies; the last item is where the replies start within the
    line's ``chosen`` and ``rejected`` (0 for the explicit form)."""
    if pair.prompt is not msgspec.UNSET:
        return pair.prompt, pair.chosen, pair.rejected, 0
    shared = _common_prefix(pair.chosen, pair.rejected)
    return pair.chosen[:shared], pair.chosen[shared:], pair.rejected[shared:], shared


def pair_problems(pair: PreferencePair) -> list[Problem]:
    """``(location, reason)`` for what types alone do not catch; locations are the line's own."""
    for name in ("prompt", "chosen", "rejected"):
        messages = getattr(pair, name)
        for i, message in enumerate(messages or ()):
            if message.role == "pretraining":
                return [(f"{name}[{i}].role", "'pretraining' has no place in a preference pair: its roles are system, "
                                              "user and assistant")]
    prompt, chosen, rejected, start = split_prompt(pair)
    explicit = pair.prompt is not msgspec.UNSET
    if not explicit and pair.chosen == pair.rejected:
        return [_IDENTICAL]
    if explicit and not prompt:
        return [("prompt", "must not be empty")]
    if not explicit and not prompt:
        return [("chosen", "has no prompt: without a \"prompt\" field, chosen and rejected must begin with the same "
                           "messages (the prompt), and they differ from their first message")]
    if prompt[-1].role != "user":
        where = f"prompt[{len(prompt) - 1}].role" if explicit else f"chosen[{start - 1}].role"
        return [(where, f"the prompt must end on a user turn, got {prompt[-1].role!r}")]
    problems = []
    for name, reply in (("chosen", chosen), ("rejected", rejected)):
        if not reply:
            reason = "must not be empty" if explicit else "holds only the prompt: no reply after the messages it " \
                                                          "shares with the other"
            problems.append((name, reason))
        elif reply[0].role != "assistant":
            problems.append((f"{name}[{start}].role", f"a reply must start with an assistant turn, got "
                                                      f"{reply[0].role!r}"))
        elif not reply[0].content.strip():
            problems.append((f"{name}[{start}].content", "the assistant's reply must not be empty"))
    if not problems and chosen == rejected:
        problems.append(_IDENTICAL)
    return problems


def normalised(pair: PreferencePair) -> PreferencePair:
    """The explicit form of a valid pair."""
    prompt, chosen, rejected, _ = split_prompt(pair)
    return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected)


def _expected_strings(pairs: Sequence[PreferencePair]) -> int:
    """The strings lines hold if they hold only the format's keys, each once."""
    count = 0
    for pair in pairs:
        count += 2 + (pair.prompt is not msgspec.UNSET)
        for messages in (pair.prompt or (), pair.chosen, pair.rejected):
            for m in messages:
                count += 4 + (m.reasoning_content is not msgspec.UNSET) + isinstance(m.reasoning_content, str)
    return count


class _Object(dict):
    repeated: str | None = None


def repeated_key(line: bytes) -> Problem | None:
    """The first key of the format given twice in one object of a line, and where."""
    def hook(pairs: list[tuple[str, Any]]) -> _Object:
        keys = [k for k, _ in pairs]
        obj = _Object(pairs)
        obj.repeated = next((k for k in keys if keys.count(k) > 1), None)
        return obj

    value = json.loads(line, object_pairs_hook=hook)
    if value.repeated:
        return value.repeated, _DUPLICATE_KEY
    for name in ("prompt", "chosen", "rejected"):
        for i, message in enumerate(value.get(name) or ()):
            if isinstance(message, _Object) and message.repeated:
                return f"{name}[{i}].{message.repeated}", _DUPLICATE_KEY
    return None


def check_line(line: bytes) -> tuple[PreferencePair | None, list[Problem]]:
    """The explicit pair of one line (without its line ending) and its problems."""
    try:
        pair = _decoder.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None, [line_problem(line, PreferencePair)]
    if delimited_strings(line) != _expected_strings([pair]) and (repeated := repeated_key(line)):
        return None, [repeated]
    problems = pair_problems(pair)
    return (None if problems else normalised(pair)), problems


class PairBatch:
    def __init__(self, samples: list[PreferencePair]) -> None:
        self.samples = samples


def valid_block(block: Block) -> PairBatch | None:
    """The explicit pairs of a block whose every line is a valid pair, else None."""
    if block.has_stand_ins:
        return None
    try:
        pairs = list(map(_decoder.decode, block.lines))
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    if any(map(pair_problems, pairs)) or delimited_strings(block.data) != _expected_strings(pairs):
        return None
    return PairBatch(list(map(normalised, pairs)))


TokenLengths = Callable[[PreferencePair], tuple[int, int, int]]


class PairStatistics:
    """Counts of the valid pairs, in bounded memory: a hash per line (exact duplicates) and, with
    a tokenizer, the token lengths of each pair's prompt, chosen and rejected reply."""

    def __init__(self, token_length: TokenLengths | None = None, max_seq_len: int | None = None) -> None:
        self.samples = self.invalid = self.blank = 0
        self.token_length = token_length
        self.max_seq_len = max_seq_len  # the name validate.py's workers read: here, max_length
        self.hashes = array("Q")
        self.tokens = {part: array("I") for part in ("prompt", "chosen", "rejected")}

    def add(self, batch: PairBatch, lines: list[bytes]) -> None:
        self.samples += len(batch.samples)
        self.hashes.extend(map(xxh3_64_intdigest, lines))
        if self.token_length is not None:
            for pair in batch.samples:
                for part, n in zip(self.tokens, self.token_length(pair), strict=True):
                    self.tokens[part].append(n)

    def __getstate__(self) -> dict[str, Any]:  # a worker's counts travel; its tokenizer stays
        return {**self.__dict__, "token_length": None}

    def merge(self, other: PairStatistics) -> None:
        self.samples += other.samples
        self.invalid += other.invalid
        self.blank += other.blank
        self.hashes.extend(other.hashes)
        for part, lengths in other.tokens.items():
            self.tokens[part].extend(lengths)

    def result(self) -> dict[str, Any]:
        hashes = np.sort(np.frombuffer(self.hashes, dtype=np.uint64))
        stats: dict[str, Any] = {
            "pairs": self.samples,
            "samples": self.samples,
            "invalid_lines": self.invalid,
            "blank_lines": self.blank,
            "duplicate_pairs": int(np.count_nonzero(hashes[1:] == hashes[:-1])),
        }
        if self.token_length is not None and self.samples:
            prompt, chosen, rejected = (np.frombuffer(self.tokens[p], dtype=np.uint32).astype(np.int64)
                                        for p in self.tokens)
            stats["tokens"] = {part: {"p50": int(np.percentile(v, 50)), "p95": int(np.percentile(v, 95)),
                                      "max": int(v.max())}
                               for part, v in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected))}
            if self.max_seq_len:
                longest = prompt + np.maximum(chosen, rejected)
                stats["tokens"] |= {"max_length": self.max_seq_len,
                                    "truncated": int(((longest > self.max_seq_len) & (prompt < self.max_seq_len)).sum()),
                                    "prompt_fills_max_length": int((prompt >= self.max_seq_len).sum())}
        return stats


def describe_pairs(s: dict[str, Any]) -> list[str]:
    lines = [f"  {s.get('pairs', 0)} valid pairs, {s.get('invalid_lines', 0)} invalid lines, "
             f"{s.get('blank_lines', 0)} blank lines, {s.get('duplicate_pairs', 0)} exact duplicates"]
    if "tokens" in s:
        t = s["tokens"]
        lines.append("  tokens " + "; ".join(f"{part} p50 {t[part]['p50']}, p95 {t[part]['p95']}, max {t[part]['max']}"
                                             for part in ("prompt", "chosen", "rejected")))
        if "max_length" in t:
            lines.append(f"  max_length={t['max_length']}: {t['truncated']} pairs cut to fit, "
                         f"{t['prompt_fills_max_length']} whose prompt alone fills it (dropped from training)")
    return lines


PREFERENCE = DataFormat("preference", "pairs", check_line, valid_block, PairBatch, PairStatistics, describe_pairs,
                        tables=False)


def _chat(messages: list[Message]) -> list[dict[str, Any]]:
    return msgspec.to_builtins(messages)


def load_tokenizer(model_path: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if not tokenizer.chat_template:
        raise ValueError(f"model_path {model_path!r} has no chat template: preference pairs are rendered with it")
    return tokenizer


def tokenize_pair(tokenizer: Any, pair: PreferencePair) -> tuple[list[int], list[int], list[int]]:
    """``(prompt_ids, chosen_ids, rejected_ids)`` of an explicit pair, as TRL 1.16 tokenizes it."""
    def ids(messages: list[Message], **kwargs: Any) -> list[int]:
        return list(tokenizer.apply_chat_template(_chat(messages), tokenize=True, return_dict=True,
                                                  **kwargs)["input_ids"])

    prompt = ids(pair.prompt, add_generation_prompt=True)
    with_chosen, with_rejected = ids(pair.prompt + pair.chosen), ids(pair.prompt + pair.rejected)
    shared = min(_common_prefix(prompt, with_chosen), _common_prefix(prompt, with_rejected))
    return prompt[:shared], with_chosen[shared:], with_rejected[shared:]


def _common_prefix(a: Sequence[Any], b: Sequence[Any]) -> int:
    """How many leading items ``a`` and ``b`` share: messages (TRL's ``extract_prompt``) or
    token ids (its ``common_prefix_length``)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def pair_token_counter(model_path: str) -> TokenLengths:
    tokenizer = load_tokenizer(model_path)

    def count(pair: PreferencePair) -> tuple[int, int, int]:
        return tuple(map(len, tokenize_pair(tokenizer, pair)))  # type: ignore[return-value]

    return count


def validate_preferences(
    data_path: str,
    *,
    on_invalid: OnInvalid = "fail",
    output_path: str | None = None,
    quarantine_path: str | None = None,
    model_path: str | None = None,
    max_length: int | None = None,
    max_errors: int = DEFAULT_MAX_ERRORS,
    workers: int | None = None,
) -> ValidationReport:
    """``validate_messages`` for preference pairs (JSONL): each problem names its line, field and
    reason; with ``model_path``, token lengths of prompts and replies, against ``max_length``."""
    return validate_data(data_path, PREFERENCE, pair_token_counter(model_path) if model_path else None, max_length,
                         on_invalid=on_invalid, output_path=output_path, quarantine_path=quarantine_path,
                         max_errors=max_errors, workers=workers)


def read_valid_pairs(data_path: str) -> list[PreferencePair]:
    """The explicit pairs of a file that must be valid throughout (a ``ValueError`` lists its problems)."""
    pairs: list[PreferencePair] = []
    report = validate_data(data_path, PREFERENCE)
    if not report.valid:
        raise ValueError(f"data_path {data_path!r} is not valid preference JSONL:\n{report.summary()}")
    with open_source(data_path) as f:
        for block in iter_blocks(f):
            pairs.extend(normalised(_decoder.decode(line)) for line in block.lines if not line.isspace())
    return pairs


def prepare_preferences(data_path: str, model_path: str, output_dir: str, max_length: int) -> PreparedData:
    """Validate, then write ``<output_dir>/pairs.jsonl``: each pair's token ids, cut to
    ``max_length`` keeping the start; a pair whose prompt fills ``max_length`` is dropped."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = validate_preferences(data_path, output_path=str(out / VALIDATED_PAIRS_FILE))
    if not report.valid:
        raise ValueError(f"data_path {data_path!r} is not valid preference JSONL:\n{report.summary()}")
    tokenizer = load_tokenizer(model_path)
    decoder = msgspec.json.Decoder(PreferencePair)
    kept = dropped = truncated = 0
    with open(out / VALIDATED_PAIRS_FILE, "rb") as source, AtomicWriter(str(out / PAIRS_FILE)) as writer:
        for line in source:
            prompt, chosen, rejected = tokenize_pair(tokenizer, decoder.decode(line))
            if len(prompt) >= max_length:
                dropped += 1
                continue
            room = max_length - len(prompt)
            truncated += len(chosen) > room or len(rejected) > room
            writer.write(msgspec.json.encode({"prompt_ids": prompt, "chosen_ids": chosen[:room],
                                              "rejected_ids": rejected[:room]}) + b"\n")
            kept += 1
        if not kept:
            raise ValueError(f"every pair of {data_path!r} has a prompt of at least max_length={max_length} tokens; "
                             "raise max_length")
    if dropped or truncated:
        log.warning("max_length=%d: %d of %d pairs dropped (the prompt alone fills it), %d cut to fit",
                    max_length, dropped, report.stats["pairs"], truncated)
    log.info("prepared %d of %d pairs into %s", kept, report.stats["pairs"], out / PAIRS_FILE)
    return PreparedData(str(out / PAIRS_FILE), report.stats["pairs"], kept, 0, dropped)
