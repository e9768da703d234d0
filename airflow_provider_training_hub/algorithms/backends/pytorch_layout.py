"""How the ``pytorch`` backend holds a run in memory, in numbers the trainer and the memory check
share: the trainer (``packed.py``) sizes its loss chunks and CPU rows by them, and ``memory.py``
estimates a run by them on an Airflow worker that has no torch.
"""

from __future__ import annotations

from airflow_provider_training_hub.algorithms.memory import FLOAT16_BYTES, FLOAT32_BYTES, MemoryLayout

LOGITS_BYTES = 1 << 28  # float32 logits per loss chunk: 256 MiB
CPU_ROW_TOKENS = 1024  # the most tokens of a packed row on a CPU (see packed.DevicePlan)


def pytorch_layout(bf16: bool = True) -> MemoryLayout:
    """DDP on a GPU: a whole float32 copy of the model on each GPU, with DDP's gradient buckets
    beside the gradients, no activation checkpointing, and the logits in chunks. Under bfloat16
    autocast (``bf16``, the default on a GPU that has it) the matrix products' activations are
    bfloat16, and autocast keeps a bfloat16 copy of each weight for the backward pass."""
    return MemoryLayout(sharded=False, gradient_copies=2, frozen_weight_bytes=FLOAT32_BYTES, saves_activations=True,
                        autocast_bytes=FLOAT16_BYTES if bf16 else 0, logits_chunk_bytes=LOGITS_BYTES)
