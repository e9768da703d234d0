"""GPU memory per device for a training run, from the model's ``config.json`` alone.

``estimate()`` is training_hub 0.11.2's function: same name, keywords and result (the lower
bound, the expected value and the upper bound, in bytes per GPU), and by default the same
arithmetic (weights, gradients and AdamW state sharded over ``num_gpus`` as FSDP shards them,
one hidden state per layer and token as activation checkpointing keeps, and the logits). Unlike
training_hub it never loads the model, not even on the meta device: the parameter count comes
from the architecture's shapes in ``config.json``, so the check runs on an Airflow worker
without torch, before any GPU is held.

A backend may train differently from training_hub's assumption; it says how with a
``MemoryLayout`` (``Backend.memory_layout``). The ``pytorch`` backend's DDP keeps a whole copy
per GPU and saves every activation; ``pytorch_layout()`` in ``backends/pytorch_layout.py`` says
so, and ``benchmarks/memory_estimate.py`` sets it beside measured peaks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_provider_training_hub import object_storage

GIB = 1 << 30
FLOAT32_BYTES = 4
FLOAT16_BYTES = 2
FLOAT8_BYTES = 1
FLOAT4_BYTES = 0.5
ADAMW_STATES = 2  # exp_avg and exp_avg_sq, each the size of a trained parameter
H100_MEMORY = 85899345920  # training_hub's default gpu_memory: 80 GiB
METHODS = ("sft", "lora", "qlora")  # training_hub's names; its "basic" is "sft"

# training_hub's bounds around the summed parts: (lower, expected, upper) multipliers
_BOUNDS = {"sft": (1.0, 1.1, 1.3), "lora": (0.95, 1.1, 1.2), "qlora": (0.95, 1.1, 1.3)}
# training_hub scales the logits by these for the softmax and its gradient
_OUTPUT_FACTOR = {"sft": 8 / 3, "lora": 2.0, "qlora": 2.0}


class CannotEstimate(ValueError):
    """The model's ``config.json`` is missing, unreadable, or of an architecture not counted here."""


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer as its ``config.json`` describes it (Llama, Mistral, Qwen2/3,
    Granite, SmolLM...: attention with grouped key/value heads, a gated MLP, RMS norms)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool

    @classmethod
    def from_config(cls, config: dict[str, Any], source: str = "config.json") -> ModelShape:
        config = config.get("text_config") or config  # a multimodal model's language part
        for key in ("num_local_experts", "num_experts", "n_routed_experts"):
            if config.get(key):
                raise CannotEstimate(f"{source}: a mixture-of-experts model ({key}={config[key]}) is not counted "
                                     "here; only dense decoders are.")
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if not isinstance(config.get(k), int)]
        if missing:
            kind = config.get("model_type", "unknown")
            raise CannotEstimate(f"{source}: no integer {', '.join(missing)} (model_type {kind!r}); the estimate "
                                 "counts dense decoders with a gated MLP, as Llama's config.json describes them.")
        model_type = str(config.get("model_type", ""))
        heads = config["num_attention_heads"]
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            # absent: the default of Llama's family (transformers writes only what differs from it)
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=bool(config.get("attention_bias", model_type == "qwen2")),  # Qwen2 always has them
            o_bias=bool(config.get("attention_bias", False)) and model_type != "qwen2",
            mlp_bias=bool(config.get("mlp_bias", False)),
            qk_norm=model_type.startswith("qwen3"),
        )

    @classmethod
    def read(cls, model_path: str) -> ModelShape:
        """The shape of a model directory's ``config.json``; ``CannotEstimate`` saying why not."""
        path = Path(model_path) / "config.json"
        try:
            if object_storage.is_remote(model_path):  # one small object, read where it is
                path = object_storage.join(model_path, "config.json")
                fs, key = object_storage.filesystem(path)
                config = json.loads(fs.cat_file(key))
            else:
                config = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CannotEstimate(f"{path} is not readable here") from None
        except (OSError, ValueError) as exc:
            raise CannotEstimate(f"{path}: {exc}") from None
        if not isinstance(config, dict):
            raise CannotEstimate(f"{path} holds no JSON object")
        return cls.from_config(config, str(path))

    def projections(self) -> dict[str, tuple[int, int]]:
        """Each linear layer of one decoder layer, as (inputs, outputs): what LoRA adapts."""
        h, q, kv, i = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, \
            self.intermediate_size
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def layer_params(self) -> int:
        linear = sum(n_in * n_out for n_in, n_out in self.projections().values())
        biases = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim * self.qkv_bias \
            + self.hidden_size * self.o_bias + (2 * self.intermediate_size + self.hidden_size) * self.mlp_bias
        norms = 2 * self.hidden_size + 2 * self.head_dim * self.qk_norm
        return linear + biases + norms

    @property
    def num_params(self) -> int:
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * self.layer_params + self.hidden_size + embeddings

    def lora_params(self, rank: int, target_modules: list[str] | None) -> int:
        """Trained parameters of rank-``rank`` adapters on ``target_modules`` (default: all seven)."""
        shapes = self.projections()
        names = target_modules or list(shapes)
        unknown = [n for n in names if n not in shapes]
        if unknown:
            raise CannotEstimate(f"target_modules {unknown} are none of this model's projections {list(shapes)}")
        return self.num_layers * rank * sum(sum(shapes[n]) for n in names)

    def activation_bytes(self, autocast_bytes: float = 0) -> float:
        """What autograd keeps per token and layer without activation checkpointing, in float32 or,
        with ``autocast_bytes``, under autocast. In float32: the two norms' inputs and outputs, the
        rotary embedding's cosines and sines, the query, key and value before and after it, the
        attention output twice (the kernel's and o_proj's input), and the gated MLP's four. Under
        autocast the norms and the residual stream stay float32, the matrix products' inputs and
        outputs take ``autocast_bytes``, and each norm's output is kept once more, cast.
        ``tests/test_memory_estimate.py`` holds this to what autograd really saves."""
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        residual = 4 * self.hidden_size + 2 * self.head_dim
        products = 4 * q + 3 * kv + 4 * self.intermediate_size
        if not autocast_bytes:
            return (residual + products) * FLOAT32_BYTES
        return residual * FLOAT32_BYTES + (products + 2 * self.hidden_size) * autocast_bytes


@dataclass(frozen=True)
class MemoryLayout:
    """How a backend holds a run in GPU memory, where that differs from training_hub's assumption
    (the default: FSDP shards, float32, activation checkpointing, whole logits).

    :param sharded: weights, gradients and optimizer state split over the GPUs (FSDP); else each
        GPU holds all of them (DDP).
    :param gradient_copies: gradient buffers per trained parameter (DDP's buckets add one).
    :param frozen_weight_bytes: bytes per parameter of a LoRA run's frozen base model
        (training_hub: float16).
    :param saves_activations: autograd keeps every activation (no checkpointing), as
        ``ModelShape.activation_bytes`` counts them.
    :param autocast_bytes: bytes per element of autocast's lower precision (0: none). Autocast
        also keeps a copy of each weight in it for the backward pass.
    :param logits_chunk_bytes: the loss computes the logits in chunks of at most this many bytes.
    """

    sharded: bool = True
    gradient_copies: int = 1
    frozen_weight_bytes: float = FLOAT16_BYTES
    saves_activations: bool = False
    autocast_bytes: float = 0
    logits_chunk_bytes: int | None = None


TRAINING_HUB_LAYOUT = MemoryLayout()


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU, part by part, and training_hub's bounds around their sum."""

    method: str
    num_params: int
    trained_params: int
    weights: float
    gradients: float
    optimizer: float
    activations: float
    outputs: float
    multipliers: tuple[float, float, float]
    floor: float = 0.0  # QLoRA: the pre-quantized model must fit while it is loaded

    @property
    def subtotal(self) -> float:
        return max(self.weights + self.gradients + self.optimizer + self.activations + self.outputs, self.floor)

    @property
    def bounds(self) -> tuple[int, int, int]:
        """(lower bound, expected, upper bound) in bytes per GPU: ``estimate()``'s result."""
        low, mid, high = (int(m * self.subtotal) for m in self.multipliers)
        return low, mid, high

    def parts(self) -> str:
        names = ("weights", "gradients", "optimizer", "activations", "outputs")
        return ", ".join(f"{name} {size_text(getattr(self, name))}" for name in names)

    def summary(self) -> str:
        low, mid, high = self.bounds
        return (f"{self.method} of {count_text(self.num_params)} parameters ({count_text(self.trained_params)} "
                f"trained): about {size_text(mid)} per GPU, {size_text(low)} to {size_text(high)} ({self.parts()})")


def size_text(size: float) -> str:
    """Bytes as a person compares them with a GPU's: GiB, or MiB below one GiB."""
    return f"{size / GIB:.2f} GiB" if size >= GIB else f"{size / (1 << 20):.1f} MiB"


def count_text(count: int) -> str:
    return f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count:,}"


def memory_estimate(shape: ModelShape, method: str = "sft", *, num_gpus: int = 1, tokens_per_gpu: float,
                    lora_r: int = 32, target_modules: list[str] | None = None, use_liger: bool = False,
                    quantized_weight_bytes: float = FLOAT4_BYTES,
                    layout: MemoryLayout = TRAINING_HUB_LAYOUT) -> MemoryEstimate:
    """The parts of one GPU's memory for ``method`` on ``num_gpus`` GPUs, ``tokens_per_gpu`` at once."""
    if method not in METHODS:
        raise ValueError(f"training_method {method!r}: expected one of {', '.join(METHODS)} (this package has no "
                         "OSFT, training_hub's 'osft').")
    shards = num_gpus if layout.sharded else 1
    total = shape.num_params
    # training_hub's main dtype: float32, but float16 for LoRA (a DDP layout keeps float32)
    main = FLOAT16_BYTES if method != "sft" and layout.sharded else FLOAT32_BYTES
    if method == "sft":
        trained, weights = total, total * FLOAT32_BYTES
    else:
        trained = shape.lora_params(lora_r, target_modules)
        frozen = quantized_weight_bytes if method == "qlora" else layout.frozen_weight_bytes
        weights = total * frozen + trained * FLOAT32_BYTES
    weights += total * layout.autocast_bytes
    gradients = trained * main * layout.gradient_copies
    optimizer = trained * main * ADAMW_STATES
    if layout.saves_activations:
        activations = tokens_per_gpu * shape.num_layers * shape.activation_bytes(layout.autocast_bytes)
    else:  # training_hub: one hidden state per layer and token (activation checkpointing)
        activations = tokens_per_gpu * main * shape.num_layers * shape.hidden_size
    logits = tokens_per_gpu * shape.vocab_size * main
    if layout.logits_chunk_bytes:
        logits = min(logits, layout.logits_chunk_bytes)
    outputs = 0.0 if use_liger else logits * _OUTPUT_FACTOR[method]
    if method != "sft" and layout.sharded:
        # training_hub: a LoRA run's logits and gradients are not alive at once; the larger counts
        if gradients / shards > outputs:
            outputs = 0.0
        else:
            gradients = 0.0
    floor = total * FLOAT8_BYTES / shards if method == "qlora" else 0.0
    return MemoryEstimate(method, total, trained, weights / shards, gradients / shards, optimizer / shards,
                          activations, outputs, _BOUNDS[method], floor)


def tokens_per_gpu(num_gpus: int, batch_size: int | None, max_seq_len: int | None,
                   max_tokens_per_gpu: int | None) -> float:
    """training_hub's rule: the batch's tokens spread over the GPUs, capped by ``max_tokens_per_gpu``."""
    spread = batch_size * max_seq_len / num_gpus if batch_size and max_seq_len else None
    if spread is None and max_tokens_per_gpu is None:
        raise ValueError("At least one of (batch_size, max_seq_len) or max_tokens_per_gpu must be provided")
    return min(x for x in (spread, max_tokens_per_gpu) if x is not None)


def estimate(
    training_method: str = "sft",
    num_gpus: int = 8,
    gpu_memory: int = H100_MEMORY,
    model_path: str = "ibm-granite/granite-3.3-8b-instruct",
    batch_size: int | None = None,
    max_seq_len: int | None = None,
    max_tokens_per_gpu: int | None = None,
    use_liger: bool | None = None,
    verbose: int = 1,
    trust_remote_code: bool = False,
    unfreeze_rank_ratio: float = 0.25,
    lora_r: int = 32,
) -> tuple[int, int, int]:
    """training_hub's ``estimate``: (lower bound, expected, upper bound) bytes per GPU for
    ``training_method`` ("sft" or "basic", "lora", "qlora") of ``model_path``.

    ``model_path`` is a model directory (its ``config.json`` is all that is read, so
    ``trust_remote_code`` runs nothing). ``verbose`` 1 prints whether the run fits
    ``gpu_memory``, 2 the parts as well. ``unfreeze_rank_ratio`` belongs to OSFT, which this
    package does not have.
    """
    method = "sft" if training_method.lower() == "basic" else training_method.lower()
    if method in {"lora", "qlora"} and not (batch_size and max_seq_len):
        raise ValueError("batch_size and max_seq_len must be provided")
    tokens = tokens_per_gpu(num_gpus, batch_size, max_seq_len, None if method != "sft" else max_tokens_per_gpu)
    shape = ModelShape.read(model_path)
    result = memory_estimate(shape, method, num_gpus=num_gpus, tokens_per_gpu=tokens, lora_r=lora_r,
                             use_liger=bool(use_liger))
    if verbose > 1:
        print(f"Estimations for {model_path}: {result.summary()}")
    if verbose > 0:
        print(verdict(result, gpu_memory, num_gpus))
    return result.bounds


def verdict(result: MemoryEstimate, gpu_memory: int, num_gpus: int | None = None) -> str:
    """training_hub's four answers, with the numbers behind them."""
    low, mid, high = result.bounds
    if high <= gpu_memory:
        answer = "should work"
    elif mid <= gpu_memory:
        answer = "will likely work"
    elif low <= gpu_memory:
        answer = "may work but isn't recommended"
    else:
        answer = "is impossible"
    where = f"{num_gpus} GPU(s)" if num_gpus else "GPUs"
    return (f"The proposed training setup {answer} on {where} of {size_text(gpu_memory)}: it needs "
            f"{size_text(low)} to {size_text(high)} per GPU, about {size_text(mid)}.")

