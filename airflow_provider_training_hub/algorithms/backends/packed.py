"""The ``pytorch`` backend's forward pass: a micro-batch's conversations packed into one row.

A row holds its conversations end to end, with no padding. Each conversation keeps its own
positions (0, 1, ...), and attention never crosses from one conversation into another: the
attention function registered here (``PACKED_ATTENTION``) runs each conversation's causal attention
on its own tokens, reading the boundaries from the ``cu_seq_lens_*``/``max_length_*`` keywords that
transformers' models pass down to their attention layers (the names of transformers' own
variable-length flash attention). Every other layer sees one long sequence: large matrix
multiplications instead of one small one per conversation, which is what a GPU needs.

The loss is computed at label positions only: the output head runs on those hidden states alone,
in chunks whose float32 logits stay under ``LOGITS_BYTES`` (a chunk's logits are recomputed in
the backward pass rather than kept).

What differs by device is chosen once, in ``device_plan``: the kernel (CUDA: torch's
variable-length flash attention, checked against the per-conversation kernel on the device before
it is trusted; elsewhere: SDPA per conversation), bfloat16 autocast over float32 master weights on
GPUs that have bfloat16, and the fused AdamW on CUDA.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import cache
from itertools import accumulate, chain, pairwise

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from airflow_provider_training_hub.algorithms.backends.pytorch_layout import CPU_ROW_TOKENS, LOGITS_BYTES

PACKED_ATTENTION = "training_hub_packed"
IGNORE = -100
PER_CONVERSATION = "sdpa per conversation"
VARLEN = "varlen flash attention"


@dataclass(frozen=True)
class PackedRow:
    """One micro-batch as the model takes it; tensors on the training device."""

    input_ids: torch.Tensor  # (1, T)
    position_ids: torch.Tensor  # (1, T): 0.. per conversation
    cu_seq_lens: torch.Tensor  # (n + 1,) int32: where each conversation starts, and T
    max_length: int  # the longest conversation
    label_positions: torch.Tensor  # (N,): rows whose next token is learned
    label_targets: torch.Tensor  # (N,): those next tokens
    label_sequences: torch.Tensor  # (N,): the conversation each of them belongs to

    def attention_kwargs(self) -> dict:
        return {"cu_seq_lens_q": self.cu_seq_lens, "cu_seq_lens_k": self.cu_seq_lens,
                "max_length_q": self.max_length, "max_length_k": self.max_length}


def pack(conversations: Sequence[tuple[Sequence[int], Sequence[int]]], device: torch.device) -> PackedRow:
    """``(input_ids, labels)`` pairs into one row. A token's target is the next label of its own
    conversation; the last token of each has none, so nothing is learned across a boundary."""
    lengths = [len(ids) for ids, _ in conversations]
    targets = list(chain.from_iterable([*labels[1:], IGNORE] for _, labels in conversations))
    positions = [i for i, t in enumerate(targets) if t != IGNORE]
    starts = list(accumulate(lengths, initial=0))
    cpu = {
        "input_ids": torch.tensor(list(chain.from_iterable(ids for ids, _ in conversations)))[None],
        "position_ids": torch.cat([torch.arange(n) for n in lengths])[None],
        "cu_seq_lens": torch.tensor(starts, dtype=torch.int32),
        "label_positions": torch.tensor(positions, dtype=torch.long),
        "label_targets": torch.tensor([targets[i] for i in positions], dtype=torch.long),
        "label_sequences": torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))[positions],
    }
    pinned = device.type == "cuda"
    moved = {k: (v.pin_memory() if pinned else v).to(device, non_blocking=True) for k, v in cpu.items()}
    return PackedRow(max_length=max(lengths), **moved)


# -- attention ---------------------------------------------------------------------------------


def _per_conversation(query, key, value, bounds: list[int], scaling: float | None,
                      dropout: float = 0.0) -> torch.Tensor:
    """Causal SDPA on each conversation's own tokens: exact, and no work across boundaries; the loop
    costs a kernel launch per conversation and layer, nothing next to a CPU's matrix work. The
    pieces are split off (the backward pass then concatenates their gradients once, instead of a
    full-size gradient per slice) and made contiguous: SDPA's CPU kernel kept 1.3 GB more for
    strided pieces in SmolLM2's LoRA step, and ran slower (measured, ``benchmarks/README.md``)."""
    lengths = [end - start for start, end in pairwise(bounds)]
    if key.dtype != query.dtype:
        key, value = key.to(query.dtype), value.to(query.dtype)
    pieces = zip(*(t.split(lengths, dim=2) for t in (query, key, value)), strict=True)
    out = torch.cat([
        F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous(), dropout_p=dropout,
                                       is_causal=True, scale=scaling, enable_gqa=True)
        for q, k, v in pieces
    ], dim=2)
    return out.transpose(1, 2)


@cache
def _varlen_takes_gqa() -> bool:
    """Whether this torch's ``varlen_attn`` takes grouped key/value heads (2.11's does not); asked
    once, not in every layer's call."""
    from torch.nn.attention.varlen import varlen_attn

    return "enable_gqa" in inspect.signature(varlen_attn).parameters


def _varlen(query, key, value, cu_seq_lens, max_length: int, scaling: float | None) -> torch.Tensor:
    """torch's variable-length flash attention (CUDA; torch >= 2.9), bfloat16 in and out."""
    from torch.nn.attention.varlen import varlen_attn

    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else query.dtype
    q, k, v = (t[0].transpose(0, 1).to(dtype) for t in (query, key, value))  # (T, heads, dim)
    gqa = {}
    if k.shape[1] != q.shape[1]:
        if _varlen_takes_gqa():
            gqa = {"enable_gqa": True}
        else:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = varlen_attn(q.contiguous(), k.contiguous(), v.contiguous(), cu_seq_lens, cu_seq_lens, max_length,
                      max_length, scale=scaling, window_size=(-1, 0), **gqa)
    return out[None]


_kernel = PER_CONVERSATION


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention-function interface: ``query`` is (1, heads, T, dim), ``key`` and
    ``value`` (1, kv_heads, T, dim); returns ((1, T, heads, dim), None). A call that is not a
    packed row (``generate`` on the training model) gets transformers' own SDPA, causal, with no
    padding mask (none is made for this implementation)."""
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    if cu_seq_lens is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    flash_head = query.shape[-1] <= 256 and query.shape[-1] % 8 == 0
    if _kernel == VARLEN and flash_head and not dropout:
        return _varlen(query, key, value, cu_seq_lens, kwargs["max_length_q"], scaling), None
    return _per_conversation(query, key, value, cu_seq_lens.tolist(), scaling, dropout), None


def register_packed_attention() -> str:
    """Register ``packed_attention`` with transformers (no mask function: the boundaries are the
    mask), and return the name to load models with."""
    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    return PACKED_ATTENTION


def _varlen_agrees(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the varlen kernel cannot be trusted on ``device``, or None: it must run, forward and
    backward, and match the per-conversation kernel on a row of three conversations with grouped
    key/value heads."""
    try:
        generator = torch.Generator(device=device).manual_seed(0)
        shape = {"q": (1, 4, 48, 64), "kv": (1, 2, 48, 64)}
        q = torch.randn(shape["q"], device=device, dtype=dtype, generator=generator, requires_grad=True)
        k, v = (torch.randn(shape["kv"], device=device, dtype=dtype, generator=generator, requires_grad=True)
                for _ in range(2))
        bounds = [0, 5, 30, 48]
        cu = torch.tensor(bounds, dtype=torch.int32, device=device)
        fast = _varlen(q, k, v, cu, 25, None)
        reference = _per_conversation(q, k, v, bounds, None)
        grads = torch.autograd.grad(fast.float().square().sum(), (q, k, v))
        expected = torch.autograd.grad(reference.float().square().sum(), (q, k, v))
    except Exception as exc:  # any failure means: not this kernel, here
        return f"{type(exc).__name__}: {exc}"
    pairs = [(fast, reference), *zip(grads, expected, strict=True)]
    worst = max(((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-6)).item() for a, b in pairs)
    return None if worst < 0.05 else f"differs from the per-conversation kernel by {worst:.3f} (relative)"


# -- loss --------------------------------------------------------------------------------------


def _chunk_loss(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def _chunk_losses(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="none")


def _chunked(chunk_fn, hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor) -> list[torch.Tensor]:
    """``chunk_fn`` over chunks of at most ``LOGITS_BYTES`` of float32 logits; with more than one
    chunk, each chunk's logits are recomputed in the backward pass instead of all being kept."""
    rows = max(1, LOGITS_BYTES // (4 * head.weight.shape[0]))
    if hidden.shape[0] <= rows:
        return [chunk_fn(hidden, head, targets)]
    return [checkpoint(chunk_fn, h, head, t, use_reentrant=False)
            for h, t in zip(hidden.split(rows), targets.split(rows), strict=True)]


def label_loss(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of ``head(hidden)`` against ``targets``, chunked (``_chunked``)."""
    return sum(_chunked(_chunk_loss, hidden, head, targets))


def label_log_probs(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at each row of ``hidden``, in float32, chunked (``_chunked``)."""
    return -torch.cat(_chunked(_chunk_losses, hidden, head, targets))


class PackedLabelLoss(nn.Module):
    """Summed next-token loss of one packed row; the unit DDP wraps and synchronises."""

    def __init__(self, causal_lm: nn.Module, autocast: AbstractContextManager | None = None) -> None:
        super().__init__()
        self.causal_lm = causal_lm
        self.autocast = autocast

    def forward(self, row: PackedRow, weight: float) -> torch.Tensor:
        decoder, head = self.causal_lm.base_model, self.causal_lm.get_output_embeddings()
        with self.autocast or nullcontext():
            hidden = decoder(input_ids=row.input_ids, position_ids=row.position_ids,
                             **row.attention_kwargs()).last_hidden_state[0]
            loss = label_loss(hidden[row.label_positions], head, row.label_targets)
        return loss * weight


class PackedSequenceLogps(nn.Module):
    """Each conversation's summed log-probability of its labels, for one packed row (DPO's unit:
    a pair's chosen and rejected sequences side by side in one forward)."""

    def __init__(self, causal_lm: nn.Module, autocast: AbstractContextManager | None = None) -> None:
        super().__init__()
        self.causal_lm = causal_lm
        self.autocast = autocast

    def forward(self, row: PackedRow) -> torch.Tensor:
        decoder, head = self.causal_lm.base_model, self.causal_lm.get_output_embeddings()
        with self.autocast or nullcontext():
            hidden = decoder(input_ids=row.input_ids, position_ids=row.position_ids,
                             **row.attention_kwargs()).last_hidden_state[0]
            logps = label_log_probs(hidden[row.label_positions], head, row.label_targets)
        sequences = row.cu_seq_lens.numel() - 1
        return torch.zeros(sequences, dtype=logps.dtype, device=logps.device).index_add(0, row.label_sequences, logps)


# -- per device --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DevicePlan:
    """How this device trains: its attention kernel (and why not the fast one, if not), the autocast
    dtype (None: float32 throughout), whether AdamW is fused, and the most tokens a packed row
    holds (None: a whole micro-batch of ``max_tokens_per_gpu``).

    On a CPU rows stop at ``CPU_ROW_TOKENS``: with rows of a whole step (1,369 tokens) SmolLM2's
    LoRA run peaked 1.1 GB higher (4.99 against 3.87 GB; glibc's heap keeps what many-megabyte
    activations leave behind) at the same tokens/s, measured in ``benchmarks/README.md``. A GPU
    needs the long rows."""

    kernel: str
    autocast_dtype: torch.dtype | None
    fused_adamw: bool
    row_tokens: int | None = None
    fallback_reason: str | None = None

    def autocast(self, device: torch.device) -> AbstractContextManager | None:
        return torch.autocast(device.type, dtype=self.autocast_dtype) if self.autocast_dtype else None

    def describe(self) -> str:
        precision = f"{str(self.autocast_dtype).removeprefix('torch.')} autocast" if self.autocast_dtype else "float32"
        kernel = f"{self.kernel} ({VARLEN} not used: {self.fallback_reason})" if self.fallback_reason else self.kernel
        rows = f", rows of at most {self.row_tokens} tokens" if self.row_tokens else ""
        return f"{kernel}, {precision}, {'fused' if self.fused_adamw else 'foreach'} AdamW{rows}"


def device_plan(device: torch.device, bf16: bool = True) -> DevicePlan:
    """The one place where CPU and GPU training differ; the kernel is also what ``packed_attention``
    runs from now on in this process. A GPU without bfloat16 (before Ampere), or asked not to use
    it (``bf16=False``), trains in float32: float16 would need loss scaling, which this loop does
    not do."""
    global _kernel
    _kernel = PER_CONVERSATION
    if device.type != "cuda":
        return DevicePlan(PER_CONVERSATION, None, fused_adamw=False, row_tokens=CPU_ROW_TOKENS)
    if not bf16 or not torch.cuda.is_bf16_supported():
        reason = "bf16=False" if not bf16 else "no bfloat16 on this GPU"
        return DevicePlan(PER_CONVERSATION, None, fused_adamw=True, fallback_reason=reason)
    reason = _varlen_agrees(device, torch.bfloat16)
    _kernel = PER_CONVERSATION if reason else VARLEN
    return DevicePlan(_kernel, torch.bfloat16, fused_adamw=True, fallback_reason=reason)
