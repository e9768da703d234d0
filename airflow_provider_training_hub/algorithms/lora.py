"""LoRA (and QLoRA) fine-tuning: ``lora_sft()``, training_hub 0.11.2's names and defaults.

The schema is ``SFTParams`` plus the adapter's own fields, so every SFT training and topology
parameter means the same here and is declared once; a few take training_hub's ``lora_sft``
defaults instead (epochs, warmup, weight decay, seed, checkpoints kept), and its ``seed`` is our
``random_seed``.

What a checkpoint holds depends on the backend, and the result says which:
- ``pytorch`` (peft) saves the adapter (``adapter_config.json`` + ``adapter_model.safetensors``)
  in ``hf_format/samples_N``, and with ``merge_adapter=True`` also the merged model in its
  ``merged/``;
- ``instructlab-training`` always saves the merged model (its own behaviour), so it refuses
  ``merge_adapter=False``.
"""

from __future__ import annotations

import importlib.util
from typing import Any, ClassVar

from pydantic import Field, model_validator

from airflow_provider_training_hub.algorithms.memory import FLOAT4_BYTES, FLOAT8_BYTES, MemoryEstimate
from airflow_provider_training_hub.algorithms.params import reused_field
from airflow_provider_training_hub.algorithms.registry import (
    Algorithm,
    AlgorithmRegistry,
    Backend,
    create_algorithm,
    register_algorithm,
)
from airflow_provider_training_hub.algorithms.sft import SFTParams, run_memory_estimate

DEFAULT_BACKEND = "pytorch"  # the one that runs everywhere; instructlab-training needs CUDA


def _with_default(name: str, default: Any, description: str | None = None) -> Any:
    """``SFTParams``' field ``name`` with another default, and the help text that says why where it
    needs another."""
    return reused_field(SFTParams, name, default=default, **({"description": description} if description else {}))


class LoRAParams(SFTParams):
    """Every parameter of ``lora_sft()``: those of ``sft()`` and the adapter's."""

    RESULT_NEUTRAL: ClassVar[frozenset[str]] = SFTParams.RESULT_NEUTRAL | {
        "save_steps", "merge_adapter", "enable_model_splitting"}
    ALIASES: ClassVar[dict[str, str]] = SFTParams.ALIASES | {"seed": "random_seed"}

    # training_hub 0.11.2's lora_sft defaults (its Unsloth backend's), where they differ from sft's
    num_epochs: int = _with_default("num_epochs", 3)
    learning_rate: float = _with_default(
        "learning_rate",
        2e-4,
        "Peak learning rate of the adapters, reached after warmup_steps; adapters start from zero, "
        "so they want a larger step than full fine-tuning.",
    )
    warmup_steps: int = _with_default("warmup_steps", 10)
    weight_decay: float = _with_default("weight_decay", 0.01)
    save_total_limit: int = _with_default("save_total_limit", 3)
    random_seed: int = _with_default(
        "random_seed", 3407, "Seed for data order and the adapters' initialisation (training_hub's name: seed)."
    )

    lora_r: int = Field(16, ge=1, description="LoRA rank: the inner dimension of each adapter.")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha: an adapter's update is scaled by lora_alpha / lora_r.")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapters' input.")
    target_modules: list[str] | None = Field(
        None,
        description="Names of the modules to adapt; unset: every linear projection of the attention and MLP blocks.",
    )
    load_in_4bit: bool = Field(False, description="QLoRA: load the frozen base model in 4-bit NF4 (CUDA, bitsandbytes).")
    load_in_8bit: bool = Field(False, description="Load the frozen base model in 8-bit (CUDA, bitsandbytes).")
    save_steps: int = Field(500, ge=0, description="Save a checkpoint every N optimizer steps; 0 disables it.")
    merge_adapter: bool | None = Field(
        None,
        description=(
            "Also save the base model with the adapter merged in; unset: the backend's own way "
            "(pytorch: the adapter only; instructlab-training: the merged model only)."
        ),
    )

    enable_model_splitting: bool = Field(
        False,
        description=(
            "Spread one model over the GPUs, for a model too large for one (training_hub's Unsloth: "
            "device_map='balanced'). instructlab-training always does, with FSDP; the pytorch backend keeps a "
            "whole copy per GPU (DDP) and refuses it."
        ),
    )

    @model_validator(mode="after")
    def _one_quantization(self) -> LoRAParams:
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit are both set: the base model is loaded in one of them.")
        return self


def check_quantization_supported(params: LoRAParams) -> None:
    """A quantized base model needs bitsandbytes and a CUDA GPU: refused here, before any work,
    instead of deep in a model load (either backend) once the data is prepared."""
    if not (name := "load_in_4bit" if params.load_in_4bit else "load_in_8bit" if params.load_in_8bit else None):
        return
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"{name} needs a CUDA GPU and this machine has none; set {name}=False.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"{name} needs bitsandbytes: pip install bitsandbytes.")


@register_algorithm("lora_sft")
class LoRASFTAlgorithm(Algorithm):
    """Supervised fine-tuning of low-rank adapters on a frozen (optionally 4-bit) base model."""

    params_schema = LoRAParams

    @classmethod
    def memory_estimate(cls, params: LoRAParams, backend: type[Backend]) -> MemoryEstimate:
        quantized = FLOAT4_BYTES if params.load_in_4bit else FLOAT8_BYTES if params.load_in_8bit else None
        return run_memory_estimate(params, backend, "qlora" if quantized else "lora", lora_r=params.lora_r,
                                   target_modules=params.target_modules,
                                   quantized_weight_bytes=quantized or FLOAT4_BYTES)


# training_hub's default LoRA backend: a ported script that names it runs, and its log says how
# what runs differs.
AlgorithmRegistry.register_backend_alias(
    "lora_sft", "unsloth", DEFAULT_BACKEND,
    "this package does not ship Unsloth; the pytorch backend trains peft LoRA adapters with the same "
    "parameters, without Unsloth's kernels, and learns the assistant turns only (unmask_messages=True: every turn but "
    "the system's) where Unsloth learns every token of the rendered chat",
)


def lora_sft(model_path: str, data_path: str, ckpt_output_dir: str, backend: str = DEFAULT_BACKEND, **kwargs: Any):
    """LoRA fine-tuning of ``model_path`` on ``data_path``; see ``LoRAParams`` for every parameter."""
    algorithm = create_algorithm("lora_sft", backend)
    return algorithm.train(model_path=model_path, data_path=data_path, ckpt_output_dir=ckpt_output_dir, **kwargs)
