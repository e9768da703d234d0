"""Deterministic synthetic chat JSONL, for the validation benchmark and the memory test.

short: 1-3 turns, 10-120 words per message (lines of about 1-2 KB, typical SFT data);
long:  1-10 turns, 10-600 words per message (lines of about 15 KB).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SHAPES = {"short": (3, 120), "long": (10, 600)}
_WORDS = ("the model learns from data while each training step updates weights using gradients computed "
          "on batches of tokens drawn from conversations between users and assistants about herons "
          "pipelines airflow kubernetes clusters and checkpoints").split()


def write(path: Path, shape: str, target_bytes: int, seed: int = 0) -> int:
    """Write lines until ``target_bytes``; returns the number of lines."""
    max_turns, max_words = SHAPES[shape]
    rng = random.Random(seed)
    pool = [" ".join(rng.choice(_WORDS) for _ in range(n)) for n in range(10, max_words + 1)]
    written = lines = 0
    with path.open("w", encoding="utf-8") as f:
        while written < target_bytes:
            messages = []
            if rng.random() < 0.3:
                messages.append({"role": "system", "content": "You are a helpful assistant."})
            for _ in range(rng.randint(1, max_turns)):
                messages.append({"role": "user", "content": f"{lines}: " + rng.choice(pool)})
                messages.append({"role": "assistant", "content": rng.choice(pool)})
            record = {"messages": messages}
            if rng.random() < 0.1:
                record["unmask"] = True
            line = json.dumps(record) + "\n"
            f.write(line)
            written += len(line)
            lines += 1
    return lines


if __name__ == "__main__":
    print(write(Path(sys.argv[1]), sys.argv[2], int(float(sys.argv[3]))))
