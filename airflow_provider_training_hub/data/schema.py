"""The messages format (the seed's "Data Format Requirements"), as instructlab-training accepts it.

One JSON object per line: a non-empty ``messages`` list of ``{role, content, reasoning_content?}``
and an optional boolean ``unmask``. Decided here, and documented in docs/data.md:

- extra keys, on the line or in a message, are allowed and ignored: they are dropped from the
  validated output, so they never reach training (where ``datasets`` would try to infer one
  Arrow type for them across all lines and fail on the first disagreement);
- ``reasoning_content: null`` means "absent", as upstream treats it. Both optional fields keep
  whether they were given at all (``UNSET``, which is falsy, when not), so that the strings of a
  line can be counted exactly (see ``repeated_keys.py``);
- a ``pretraining`` message must hold its conversation in its content with the role markers that
  upstream's ``extract_messages_from_pretraining_text`` parses; otherwise upstream silently turns
  it into nothing, and a sample of only that would crash its tokenisation.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Literal

import msgspec

Role = Literal["system", "user", "assistant", "pretraining"]
# The patterns of instructlab.training.data_process.extract_messages_from_pretraining_text.
_LEGACY_TURN = re.compile(r"<\|(user|assistant)\|>\n([^<]+)")
_GENERIC_TURN = re.compile(r"<\|start_of_role\|>(user|assistant)<\|end_of_role\|>\n([^<]+)")


# gc=False: these hold only strings and lists, so can never be part of a cycle; untracked, they
# decode faster and cost the garbage collector nothing.
class Message(msgspec.Struct, omit_defaults=True, gc=False):
    role: Role
    content: str
    reasoning_content: str | None | msgspec.UnsetType = msgspec.UNSET


class Sample(msgspec.Struct, omit_defaults=True, gc=False):
    messages: list[Message]
    unmask: bool | msgspec.UnsetType = msgspec.UNSET


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


_messages, _unmask, _role, _reasoning = (attrgetter(name) for name in ("messages", "unmask", "role", "reasoning_content"))
_last = itemgetter(-1)


@dataclass(frozen=True)
class Batch:
    """Decoded samples with the counts that the key check and the statistics both read, made
    once, in C (``map``, ``Counter``, ``list.count``), rather than by a Python loop per message."""

    samples: list[Sample]
    messages: list[Message]
    roles: Counter[str]
    unmask_given: int
    unmask_true: int
    reasoning_given: int
    reasoning_null: int

    @classmethod
    def of(cls, samples: list[Sample]) -> Batch:
        messages = list(chain.from_iterable(map(_messages, samples)))
        unmask = list(map(_unmask, samples))
        reasoning = list(map(_reasoning, messages))
        unmask_given = len(unmask) - unmask.count(msgspec.UNSET)  # counting UNSET is by identity: quick
        reasoning_given = len(reasoning) - reasoning.count(msgspec.UNSET)
        return cls(
            samples, messages, Counter(map(_role, messages)),
            unmask_given, unmask_true=unmask.count(True) if unmask_given else 0,
            reasoning_given=reasoning_given, reasoning_null=reasoning.count(None) if reasoning_given else 0,
        )

    def has_problems(self) -> bool:
        """Whether :func:`semantic_problems` finds anything in any sample. Decided in C when no
        message is pretraining and every conversation ends with an assistant turn (the usual
        shape of SFT data); otherwise sample by sample."""
        if not self.roles["pretraining"]:
            try:
                last_roles = list(map(_role, map(_last, map(_messages, self.samples))))
            except IndexError:  # an empty messages list
                return True
            if last_roles.count("assistant") == len(last_roles):
                return False
        return any(map(semantic_problems, self.samples))
