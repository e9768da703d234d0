"""The messages format (the seed's "Data Format Requirements"), as instructlab-training accepts it.

One JSON object per line: a non-empty ``messages`` list of ``{role, content, reasoning_content?}``
and an optional boolean ``unmask``. Decided here, and documented in the README:

- extra keys, on the line or in a message, are allowed and ignored: they are dropped from the
  validated output, so they never reach training (where ``datasets`` would try to infer one
  Arrow type for them across all lines and fail on the first disagreement);
- ``reasoning_content: null`` means "absent", as upstream treats it;
- a ``pretraining`` message must hold its conversation in its content with the role markers that
  upstream's ``extract_messages_from_pretraining_text`` parses; otherwise upstream silently turns
  it into nothing, and a sample of only that would crash its tokenisation.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

ROLES = ("system", "user", "assistant", "pretraining")
# The patterns of instructlab.training.data_process.extract_messages_from_pretraining_text.
_LEGACY_TURN = re.compile(r"<\|(user|assistant)\|>\n([^<]+)")
_GENERIC_TURN = re.compile(r"<\|start_of_role\|>(user|assistant)<\|end_of_role\|>\n([^<]+)")


class Message(msgspec.Struct, omit_defaults=True):
    role: Literal["system", "user", "assistant", "pretraining"]
    content: str
    reasoning_content: str | None = None


class Sample(msgspec.Struct, omit_defaults=True):
    messages: list[Message]
    unmask: bool = False


def pretraining_turns(content: str) -> int:
    """How many user/assistant turns upstream would extract from a pretraining message."""
    pattern = _LEGACY_TURN if ("<|user|>" in content or "<|assistant|>" in content) else _GENERIC_TURN
    return sum(1 for _ in pattern.finditer(content))


def semantic_problems(sample: Sample) -> list[tuple[str, str]]:
    """``(location, reason)`` for what types alone do not catch."""
    messages = sample.messages
    if not messages:
        return [("messages", "must not be empty")]
    roles = {m.role for m in messages}
    if "pretraining" not in roles and ("assistant" in roles or (sample.unmask and roles != {"system"})):
        return []  # the common case, decided without a loop in Python
    problems = []
    for i, message in enumerate(messages):
        if message.role == "pretraining" and pretraining_turns(message.content) == 0:
            problems.append((
                f"messages[{i}].content",
                "a pretraining message must contain its turns with role markers, e.g. "
                "'<|user|>\\n...<|assistant|>\\n...' or '<|start_of_role|>user<|end_of_role|>\\n...'",
            ))
    learnable = roles - {"system"} if (sample.unmask or "pretraining" in roles) else roles & {"assistant"}
    if not learnable:
        reason = (
            "nothing to learn from: no assistant message (set \"unmask\": true to train on user turns)"
            if not sample.unmask
            else "nothing to learn from: only system messages"
        )
        problems.append(("messages", reason))
    return problems
