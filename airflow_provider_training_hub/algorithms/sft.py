"""Supervised fine-tuning: its parameter schema, the algorithm, and the ``sft()`` shortcut.

``SFTParams`` is ``TrainingParams`` (the parameters every algorithm shares) plus what SFT data and
evaluation need. Where ``TrainingArgs`` has no default, docs/algorithms.md's parameter table says what
was chosen and why (a test holds it there). The descriptions say what a value does: they are the
help text of the CLI and of every trigger form, whose defaults may be a DAG's own.
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from airflow_provider_training_hub import json_syntax, object_storage
from airflow_provider_training_hub.algorithms.memory import (
    CannotEstimate,
    MemoryEstimate,
    ModelShape,
    memory_estimate,
    tokens_per_gpu,
)
from airflow_provider_training_hub.algorithms.registry import (
    Algorithm,
    AlgorithmRegistry,
    Backend,
    create_algorithm,
    register_algorithm,
)
from airflow_provider_training_hub.algorithms.training_params import TrainingParams

log = logging.getLogger(__name__)
DEFAULT_BACKEND = "instructlab-training"


class FSDPOptions(BaseModel):
    """instructlab-training's ``FSDPOptions`` as plain values, so that a DAG's parameters stay JSON;
    upstream's own object, as training_hub's examples pass it, is taken too."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu_offload_params: bool = Field(False, description="Keep the sharded parameters in CPU memory between uses.")
    sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"] = Field(
        "HYBRID_SHARD", description="How FSDP shards the model, gradients and optimizer state over the GPUs."
    )


class SFTParams(TrainingParams):
    """Every parameter of ``sft()``; the seed's parameter reference, field for field."""

    # training_hub's lora_sft calls the evaluation interval eval_steps; its sft, validation_frequency.
    ALIASES: ClassVar[dict[str, str]] = {"eval_steps": "validation_frequency"}
    RESULT_NEUTRAL: ClassVar[frozenset[str]] = TrainingParams.RESULT_NEUTRAL | {
        "validation_frequency", "eval_data_path", "fsdp_options"}
    DATA_INPUTS: ClassVar[tuple[str, ...]] = ("data_path", "eval_data_path")

    max_seq_len: int = Field(
        2048, ge=1, description="Longest sample, in tokens; longer samples are dropped (and counted) before training."
    )
    sample_packing: bool = Field(
        True,
        description=(
            "Pack samples into rows with attention kept within each sample: both backends always do, so it must "
            "stay true."
        ),
    )
    validation_split: float = Field(
        0.0,
        ge=0,
        lt=1,
        description=(
            "Fraction of the training data held out to evaluate val_loss on (a split seeded with random_seed, "
            "the one instructlab-training makes); 0: none."
        ),
    )
    eval_data_path: str | None = Field(
        None,
        min_length=1,
        description=(
            "A separate evaluation set to evaluate val_loss on, in data_path's format and checked like it, instead of "
            "a validation_split (pytorch backend)."
        ),
    )
    validation_frequency: int | None = Field(
        None,
        ge=1,
        description=(
            "Evaluate val_loss every N optimizer steps (training_hub's lora_sft name: eval_steps); required with "
            "validation_split or eval_data_path. The pytorch backend also evaluates after the last step."
        ),
    )

    dataset_type: Literal["chat_template", "alpaca", "passthrough"] = Field(
        "chat_template",
        description=(
            "What data_path holds: 'chat_template', messages (the assistant turns are learned); 'alpaca', records "
            "of field_instruction, field_input (optional) and field_output, trained as a user turn and the "
            "assistant's answer; 'passthrough', a 'text' per line, formatted by you and learned whole."
        ),
    )
    unmask_messages: bool = Field(
        False,
        description=(
            "Learn every turn of every chat but the system's (as a line marked \"unmask\": true is learned), not only "
            "the assistant's; passthrough texts and pretraining documents are learned whole either way."
        ),
    )
    field_messages: str = Field("messages", min_length=1, description="The chats' field that holds each one's messages.")
    field_instruction: str = Field("instruction", min_length=1, description="The alpaca records' instruction field.")
    field_input: str = Field("input", min_length=1, description="The alpaca records' optional input field.")
    field_output: str = Field("output", min_length=1, description="The alpaca records' output field.")

    fsdp_options: FSDPOptions | None = Field(
        None,
        description=(
            "instructlab-training's FSDP options, e.g. {\"cpu_offload_params\": true, \"sharding_strategy\": "
            "\"FULL_SHARD\"}; unset: its defaults (no offload, HYBRID_SHARD). The pytorch backend (DDP) refuses them."
        ),
    )

    is_pretraining: bool = Field(
        False,
        description=(
            "Document-style continual pretraining: every token of the documents in document_column_name "
            "is learned, in blocks of block_size tokens (no chat template)."
        ),
    )
    block_size: int | None = Field(None, ge=1, description="Tokens per pretraining block; required with is_pretraining.")
    document_column_name: str = Field(
        "document", min_length=1, description="The JSONL field holding each raw document, with is_pretraining."
    )


    @field_validator("fsdp_options", mode="before")
    @classmethod
    def _plain_options(cls, value: Any) -> Any:
        """Upstream's ``FSDPOptions`` (its enum included) as values; a CLI flag's JSON text parsed."""
        if hasattr(value, "model_dump"):
            return value.model_dump(mode="json")
        if isinstance(value, str):
            return json_syntax.loads(value, "fsdp_options is not a JSON object")
        return value

    @field_validator("sample_packing")
    @classmethod
    def _always_packed(cls, value: bool) -> bool:
        if not value:
            raise ValueError(
                "both backends always pack samples, with attention kept within each sample (instructlab-training's "
                "padding-free batches, the pytorch backend's packed rows), so packing changes nothing a sample "
                "learns; leave sample_packing at true"
            )
        return value

    @field_validator("eval_data_path")
    @classmethod
    def _eval_bucket_uri(cls, value: str | None) -> str | None:
        return object_storage.check_uri("eval_data_path", value) if object_storage.is_remote(value) else value

    @model_validator(mode="after")
    def _consistent(self) -> SFTParams:
        evaluates = self.validation_split > 0 or self.eval_data_path is not None
        if self.validation_split > 0 and self.eval_data_path is not None:
            raise ValueError(f"validation_split ({self.validation_split}) and eval_data_path ({self.eval_data_path!r}) "
                             "both name the evaluation set: give one.")
        if evaluates and self.validation_frequency is None:
            raise ValueError("validation_frequency (training_hub's lora_sft name: eval_steps) is required with "
                             "validation_split or eval_data_path: evaluate every how many optimizer steps?")
        if not evaluates and self.validation_frequency is not None:
            raise ValueError(f"validation_frequency ({self.validation_frequency}) has nothing to evaluate: set "
                             "validation_split or eval_data_path too.")
        if self.field_messages != "messages" and (self.is_pretraining or self.dataset_type != "chat_template"):
            raise ValueError(f"field_messages ({self.field_messages!r}) names the messages of chats: it does not apply "
                             f"to {'is_pretraining' if self.is_pretraining else f'dataset_type={self.dataset_type!r}'}.")
        if self.is_pretraining and self.dataset_type != "chat_template":
            raise ValueError(f"is_pretraining reads documents ({self.document_column_name!r} per line): "
                             f"dataset_type={self.dataset_type!r} does not apply to it.")
        if self.is_pretraining and self.block_size is None:
            raise ValueError("block_size is required when is_pretraining=True.")
        if self.is_pretraining and self.block_size > self.batch_token_cap:
            raise ValueError(
                f"block_size ({self.block_size}) must be at most max_tokens_per_gpu ({self.batch_token_cap}): "
                "a block must fit on a GPU."
            )
        return self

    @property
    def longest_sample(self) -> int:
        return self.max_seq_len

    @property
    def longest_sample_name(self) -> str:
        return "max_seq_len"


EVAL_DATA_DIR = "eval"  # under processed_data_dir: the prepared eval_data_path


def prepare_data(params: SFTParams):
    """``<processed_data_dir>/data.jsonl``, and with ``eval_data_path`` the evaluation set's in its
    ``eval/``, checked and prepared the same way."""
    report = _prepare(params, params.data_path, params.processed_data_dir)
    if params.eval_data_path is not None:
        log.info("evaluation set: %s",
                 _prepare(params, params.eval_data_path, os.path.join(params.processed_data_dir, EVAL_DATA_DIR)))
    return report


def _prepare(params: SFTParams, data_path: str, output_dir: str):
    """Each kind of data: chats, or alpaca records made chats (tokenized and masked); passthrough
    texts, or with ``is_pretraining`` documents (tokenized whole)."""
    from airflow_provider_training_hub.data import prepare

    if params.is_pretraining:
        return prepare.prepare_documents(data_path, params.model_path, output_dir, params.document_column_name)
    if params.dataset_type == "alpaca":
        return prepare.prepare_alpaca(data_path, params.model_path, output_dir, params.max_seq_len,
                                      (params.field_instruction, params.field_input, params.field_output),
                                      params.unmask_messages)
    if params.dataset_type == "passthrough":
        return prepare.prepare_text(data_path, params.model_path, output_dir, params.max_seq_len)
    return prepare.prepare_for_training(data_path, params.model_path, output_dir, params.max_seq_len,
                                        unmask_messages=params.unmask_messages, field_messages=params.field_messages)


@register_algorithm("sft")
class SFTAlgorithm(Algorithm):
    """Supervised fine-tuning on messages-format data."""

    params_schema = SFTParams

    @classmethod
    def memory_estimate(cls, params: SFTParams, backend: type[Backend]) -> MemoryEstimate:
        return run_memory_estimate(params, backend, "sft")


def run_memory_estimate(params: SFTParams, backend: type[Backend], method: str, **adapters: Any) -> MemoryEstimate:
    """``memory_estimate`` of this run: its GPUs (``nnodes`` x ``nproc_per_node``), the tokens a GPU
    holds at once by training_hub's rule, and the backend's layout."""
    layout = backend.memory_layout(params)
    if layout is None:
        raise CannotEstimate(f"the {backend.name!r} backend does not say how it holds a run in GPU memory")
    nproc = params.nproc_per_node or 1
    if not isinstance(nproc, int):
        raise CannotEstimate(f"nproc_per_node={nproc!r} is no number of GPUs")
    num_gpus = (params.nnodes or 1) * nproc
    batch = (params.micro_batch_size * params.gradient_accumulation_steps * num_gpus
             if params.micro_batch_size and params.gradient_accumulation_steps else params.effective_batch_size)
    tokens = tokens_per_gpu(num_gpus, batch, params.max_seq_len, params.batch_token_cap)
    if params.micro_batch_size:
        tokens = min(tokens, params.micro_batch_size * params.max_seq_len)
    return memory_estimate(ModelShape.read(params.model_path), method, num_gpus=num_gpus, tokens_per_gpu=tokens,
                           layout=layout, **adapters)


def sft(
    model_path: str,
    data_path: str,
    ckpt_output_dir: str,
    backend: str = DEFAULT_BACKEND,
    **kwargs: Any,
):
    """Fine-tune ``model_path`` on ``data_path``; see ``SFTParams`` for every optional parameter."""
    algorithm = create_algorithm("sft", backend)
    return algorithm.train(model_path=model_path, data_path=data_path, ckpt_output_dir=ckpt_output_dir, **kwargs)


__all__ = ["SFTAlgorithm", "SFTParams", "sft", "AlgorithmRegistry"]
