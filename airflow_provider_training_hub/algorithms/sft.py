"""Supervised fine-tuning: its parameter schema, the algorithm, and the ``sft()`` shortcut.

Defaults are instructlab-training's ``TrainingArgs`` defaults where it has one (a test holds
them equal). Where ``TrainingArgs`` has none, the README's parameter table says what was chosen
and why (a test holds it there). The descriptions say what a value does: they are the help text
of the CLI and of every trigger form, whose defaults may be a DAG's own.
The torchrun fields default to ``None``: "take ``PET_*`` from the environment, else run on one
node" (see ``torchrun.py``), which is what a pod launched by Kubeflow or our Indexed Job needs.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from airflow_provider_training_hub import json_syntax, object_storage
from airflow_provider_training_hub.algorithms.callbacks import import_path, load_class
from airflow_provider_training_hub.algorithms.memory import (
    CannotEstimate,
    MemoryEstimate,
    ModelShape,
    memory_estimate,
    tokens_per_gpu,
)
from airflow_provider_training_hub.algorithms.params import ParamSchema
from airflow_provider_training_hub.algorithms.registry import (
    Algorithm,
    AlgorithmRegistry,
    Backend,
    create_algorithm,
    register_algorithm,
)
from airflow_provider_training_hub.algorithms.tracking import check_tracking_uri
from airflow_provider_training_hub.data.tables import table_kind

log = logging.getLogger(__name__)
DEFAULT_BACKEND = "instructlab-training"
_HOST_PORT = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def check_host_port(name: str, value: str) -> str:
    """``host:port`` with a port in 1..65535; ``name`` is the parameter or variable to blame."""
    match = _HOST_PORT.match(value)
    if not match or not 0 < int(match.group(1)) < 65536:
        raise ValueError(f"{name} must be 'host:port' (e.g. 'node0:29500'), got {value!r}")
    return value


class FSDPOptions(BaseModel):
    """instructlab-training's ``FSDPOptions`` as plain values, so that a DAG's parameters stay JSON;
    upstream's own object, as training_hub's examples pass it, is taken too."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu_offload_params: bool = Field(False, description="Keep the sharded parameters in CPU memory between uses.")
    sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"] = Field(
        "HYBRID_SHARD", description="How FSDP shards the model, gradients and optimizer state over the GPUs."
    )


class SFTParams(ParamSchema):
    """Every parameter of ``sft()``; the seed's parameter reference, field for field."""

    # training_hub's lora_sft calls the evaluation interval eval_steps; its sft, validation_frequency.
    ALIASES: ClassVar[dict[str, str]] = {"eval_steps": "validation_frequency"}

    RESULT_NEUTRAL: ClassVar[frozenset[str]] = frozenset({
        "ckpt_output_dir", "data_output_dir", "save_samples", "accelerate_full_state_at_epoch", "checkpoint_at_epoch",
        "save_total_limit", "keep_last_checkpoint_only", "logging_steps", "validation_frequency", "eval_data_path",
        "restart_changed_run", "max_tokens_per_gpu", "mlflow_tracking_uri", "mlflow_experiment_name",
        "mlflow_run_name", "wandb_project", "wandb_entity", "wandb_run_name", "tensorboard_log_dir",
        "nproc_per_node", "nnodes", "node_rank", "rdzv_id", "rdzv_endpoint", "master_addr", "master_port",
        "fsdp_options", "callbacks", "enable_jit_checkpoint", "checkpoint_storage",
    })

    model_path: str = Field(description="Model to fine-tune: a Hugging Face model directory.")
    data_path: str = Field(description=(
        "Training data in messages format: a JSONL, Parquet or CSV file (a messages column of JSON), or a "
        "saved Hugging Face dataset directory."))
    ckpt_output_dir: str = Field(description="Directory to save checkpoints and metrics in.")

    num_epochs: int = Field(1, ge=1, description="Number of training epochs.")
    effective_batch_size: int = Field(
        128,
        ge=1,
        description=(
            "Samples per optimizer step, summed over all ranks; gradient accumulation makes up what one "
            "mini-batch cannot hold."
        ),
    )
    learning_rate: float = Field(
        2e-5, gt=0, description="Peak learning rate, reached after warmup_steps; higher learns faster and less stably."
    )
    max_seq_len: int = Field(
        2048, ge=1, description="Longest sample, in tokens; longer samples are dropped (and counted) before training."
    )
    max_tokens_per_gpu: int | None = Field(
        None,
        ge=1,
        description=(
            "Hard cap on tokens per GPU in a mini-batch; sets mini-batch size and gradient accumulation. "
            "Unset: max(10000, max_seq_len)."
        ),
    )

    micro_batch_size: int | None = Field(
        None,
        ge=1,
        description=(
            "At most N samples in a micro-batch on each rank, besides max_tokens_per_gpu's cap (pytorch backend). "
            "With gradient_accumulation_steps it also sets the effective batch."
        ),
    )
    gradient_accumulation_steps: int | None = Field(
        None,
        ge=1,
        description=(
            "Micro-batches per optimizer step on each rank, with micro_batch_size: the effective batch is then "
            "micro_batch_size x gradient_accumulation_steps x the number of ranks, instead of effective_batch_size "
            "(pytorch backend)."
        ),
    )

    data_output_dir: str | None = Field(
        None, description="Where processed data goes; unset means <ckpt_output_dir>/data."
    )
    save_samples: int = Field(0, ge=0, description="Save an HF checkpoint every N samples; 0 disables it.")
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warmup steps.")
    accelerate_full_state_at_epoch: bool = Field(
        True, description="Save the full training state each epoch, for automatic resumption."
    )
    checkpoint_at_epoch: bool = Field(True, description="Save an HF checkpoint at the end of each epoch.")
    enable_jit_checkpoint: bool = Field(
        True,
        description=(
            "On SIGTERM (a preempted pod, a stopped task), save the full state at the step in progress before "
            "exiting, so that a retry resumes there; false: exit at once, and a retry resumes from the last "
            "full state saved."
        ),
    )
    checkpoint_storage: str | None = Field(
        None,
        min_length=1,
        description=(
            "Object storage to upload each checkpoint and full state to, whole and marked complete "
            "(.upload_complete), e.g. 's3://bucket/runs/a'; ckpt_output_dir is then the local disk they are "
            "written to first, and a retry resumes from the newest complete state uploaded. 'pvc' or unset: "
            "they stay in ckpt_output_dir. A ckpt_output_dir in object storage does the same on a scratch."
        ),
    )
    save_total_limit: int = Field(
        0,
        ge=0,
        description=(
            "Keep only the newest N checkpoints and the newest N full states, removing older ones once a newer one "
            "is complete; 0 keeps all. instructlab-training: applied when the run ends."
        ),
    )
    keep_last_checkpoint_only: bool = Field(
        False, description="Save every checkpoint as hf_format/last_epoch, replacing the one before."
    )
    random_seed: int = Field(42, description="Seed for data order and initialisation.")
    logging_steps: int | None = Field(
        None,
        ge=1,
        description=(
            "A progress line every N optimizer steps (and for the first and the last); unset: at most one per "
            "TRAINING_HUB_PROGRESS_SECONDS. The metrics file and the trackers get every step either way."
        ),
    )
    bf16: bool = Field(
        True,
        description=(
            "Compute in bfloat16 (autocast, float32 master weights) where the device has it: a CUDA GPU from "
            "Ampere on. A CPU or an older GPU computes in float32 either way, and the log says which."
        ),
    )
    sample_packing: bool = Field(
        True,
        description=(
            "Pack samples into rows with attention kept within each sample: both backends always do, so it must "
            "stay true."
        ),
    )
    restart_changed_run: bool = Field(
        False,
        description=(
            "When ckpt_output_dir holds the checkpoints of a run with another model, data or parameters: "
            "False refuses to start; True moves that run's files into ckpt_output_dir/superseded/ and starts "
            "afresh. The same run always resumes from its newest full state."
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

    callbacks: list[str] | None = Field(
        None,
        description=(
            "TrainingHubCallback classes by import path, e.g. [\"my_pkg.hooks:Notify\"] (a class or an instance is "
            "taken as its class's path): each training process makes one with no arguments and calls its hooks on "
            "rank 0. The class must be importable where training runs."
        ),
    )
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

    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1: decay of the gradient's running mean.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2: decay of the squared gradient's running mean.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon, added to the denominator for numerical stability.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW (decoupled) weight decay.")

    # Experiment tracking (see ``tracking.py``): each tracker is on when its parameters are set.
    mlflow_tracking_uri: str | None = Field(
        None,
        min_length=1,
        description=(
            "MLflow tracking server to log parameters and per-step metrics to, e.g. 'http://mlflow:5000'. "
            "Credentials come from the environment (MLFLOW_TRACKING_TOKEN), never from this URI."
        ),
    )
    mlflow_experiment_name: str | None = Field(
        None, min_length=1, description="MLflow experiment of the run; unset: MLFLOW_EXPERIMENT_NAME, else 'Default'."
    )
    mlflow_run_name: str | None = Field(
        None, min_length=1,
        description="MLflow run name; {time}, {utc_time}, {rank} and {local_rank} are filled in.",
    )
    wandb_project: str | None = Field(
        None, min_length=1,
        description="Weights & Biases project to log to (API key: WANDB_API_KEY in the environment).",
    )
    wandb_entity: str | None = Field(
        None, min_length=1, description="Weights & Biases team or user owning the project."
    )
    wandb_run_name: str | None = Field(
        None, min_length=1,
        description="Weights & Biases run name; {time}, {utc_time}, {rank} and {local_rank} are filled in.",
    )
    tensorboard_log_dir: str | None = Field(
        None, min_length=1, description="Directory to write TensorBoard event files in (one subdirectory per run)."
    )

    nproc_per_node: int | Literal["auto", "gpu"] | None = Field(
        None,
        description=(
            "Processes per node: an integer, or 'auto'/'gpu' for one per GPU (CUDA only); "
            "unset: PET_NPROC_PER_NODE, else the backend's default."
        ),
    )
    nnodes: int | None = Field(None, ge=1, description="Nodes in the job; unset: PET_NNODES, else 1.")
    node_rank: int | None = Field(None, ge=0, description="This node's rank; unset: PET_NODE_RANK, else 0.")
    rdzv_id: int | str | None = Field(
        None, description="Rendezvous id shared by all nodes; unset: PET_RDZV_ID, else 'training-hub'."
    )
    rdzv_endpoint: str | None = Field(
        None, description="Master node 'host:port'; empty or unset: PET_RDZV_ENDPOINT, else single node."
    )
    master_addr: str | None = Field(
        None,
        description=(
            "Master node address, instead of rdzv_endpoint; unset: PET_MASTER_ADDR or MASTER_ADDR. "
            "Setting both here is an error; across levels the parameter beats the environment."
        ),
    )
    master_port: int | None = Field(
        None, ge=1, le=65535, description="Master node port, used with master_addr; unset: PET_MASTER_PORT or MASTER_PORT."
    )

    @field_validator("nproc_per_node", mode="before")
    @classmethod
    def _nproc(cls, value: Any) -> Any:
        """As training_hub: 'auto', 'gpu' (any case) or a positive integer, also as a string."""
        if isinstance(value, str) and value.strip().lower() in ("auto", "gpu"):
            return value.strip().lower()
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        if value is None:
            return value
        raise ValueError(f"nproc_per_node must be 'auto', 'gpu' or an integer >= 1, got {value!r}")

    @field_validator("callbacks", mode="before")
    @classmethod
    def _import_paths(cls, value: Any) -> Any:
        """training_hub's callback instances (or classes) as the import paths that travel to the ranks."""
        if isinstance(value, str) and value.lstrip().startswith("["):  # a CLI flag's JSON list
            value = json_syntax.loads(value, "callbacks is not a JSON list")
        if value is None:
            return value
        return [import_path(v) for v in (value if isinstance(value, (list, tuple)) else [value])]

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

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _uri_without_credentials(cls, value: str | None) -> str | None:
        return check_tracking_uri(value) if value else value

    @field_validator("model_path", "data_path", "ckpt_output_dir", "eval_data_path")
    @classmethod
    def _bucket_uri(cls, value: str | None, info: Any) -> str | None:
        """A URI of object storage names its bucket, and no credentials (they would reach logs and XCom)."""
        return object_storage.check_uri(info.field_name, value) if object_storage.is_remote(value) else value

    @field_validator("rdzv_endpoint")
    @classmethod
    def _endpoint_is_host_port(cls, value: str | None) -> str | None:
        return check_host_port("rdzv_endpoint", value) if value else value

    @model_validator(mode="after")
    def _consistent(self) -> SFTParams:
        if self.max_tokens_per_gpu is not None and self.max_tokens_per_gpu < self.max_seq_len:
            raise ValueError(
                f"max_tokens_per_gpu ({self.max_tokens_per_gpu}) must be at least max_seq_len "
                f"({self.max_seq_len}): a single sample must fit on a GPU."
            )
        if self.node_rank is not None and self.nnodes is not None and self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank ({self.node_rank}) must be in [0, nnodes) = [0, {self.nnodes}).")
        if self.gradient_accumulation_steps and not self.micro_batch_size:
            raise ValueError("gradient_accumulation_steps needs micro_batch_size: the two, times the ranks, make the "
                             "effective batch.")
        if self.gradient_accumulation_steps and "effective_batch_size" in self.model_fields_set:
            raise ValueError(
                f"effective_batch_size ({self.effective_batch_size}) and gradient_accumulation_steps "
                f"({self.gradient_accumulation_steps}) both set the samples per optimizer step: give one."
            )
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
        if self.checkpoint_storage is not None and self.checkpoint_storage != "pvc":
            if not object_storage.is_remote(self.checkpoint_storage):
                raise ValueError(f"checkpoint_storage must be an object storage URI such as 's3://bucket/runs/a', or "
                                 f"'pvc', got {self.checkpoint_storage!r}")
            object_storage.check_uri("checkpoint_storage", self.checkpoint_storage)
            if object_storage.is_remote(self.ckpt_output_dir):
                raise ValueError(f"ckpt_output_dir ({self.ckpt_output_dir!r}) and checkpoint_storage "
                                 f"({self.checkpoint_storage!r}) both name the bucket the checkpoints go to: give one.")
        if self.master_addr and self.rdzv_endpoint:
            raise ValueError(
                f"master_addr ({self.master_addr!r}) and rdzv_endpoint ({self.rdzv_endpoint!r}) are both set: "
                "they name the same thing, give one."
            )
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
    def batch_token_cap(self) -> int:
        return self.max_tokens_per_gpu or max(10_000, self.max_seq_len)

    @property
    def checkpoint_uri(self) -> str | None:
        """The bucket the run's checkpoints go to: ``ckpt_output_dir`` or ``checkpoint_storage``."""
        if object_storage.is_remote(self.ckpt_output_dir):
            return self.ckpt_output_dir
        return self.checkpoint_storage if object_storage.is_remote(self.checkpoint_storage) else None

    @property
    def processed_data_dir(self) -> str:
        return self.data_output_dir or os.path.join(self.ckpt_output_dir, "data")

    def check_local_paths(self) -> None:
        """Paths must exist, and callbacks import, where training runs (not on the Airflow worker, for a
        pod on a PVC). A path in object storage must open with the credentials found here."""
        self.check_remote_paths()
        if not object_storage.is_remote(self.model_path) and not Path(self.model_path).is_dir() \
                and not _is_hub_model_id(self.model_path):
            raise ValueError(
                f"model_path {self.model_path!r} is not a model directory on this machine: it must hold the model's "
                "config.json and weights (*.safetensors), as save_pretrained writes them "
                "(`training-hub models tiny DIR` makes a small one offline)."
            )
        for path in self.callbacks or ():
            load_class(path)
        for name in ("data_path", "eval_data_path"):
            path = getattr(self, name)
            if path is None or "://" in path:
                continue
            if not Path(path).exists():
                raise ValueError(f"{name} {path!r} does not exist.")
            if Path(path).is_dir() and table_kind(path) is None:
                raise ValueError(f"{name} {path!r} is a directory, and no saved dataset (it has no state.json): give "
                                 "the JSONL, Parquet or CSV file in it.")

    def check_remote_paths(self) -> None:
        """Before any download or pod: each input in object storage is there and readable, and the
        output bucket writable, with the credentials of this process (a refusal names them)."""
        if object_storage.is_remote(self.model_path):
            object_storage.check_readable("model_path", self.model_path, directory_file="config.json")
        for name in ("data_path", "eval_data_path"):
            if object_storage.is_remote(path := getattr(self, name)):
                object_storage.check_readable(name, path)
        for name in ("ckpt_output_dir", "checkpoint_storage"):
            if object_storage.is_remote(uri := getattr(self, name)):
                object_storage.check_writable(name, uri)


def _is_hub_model_id(model_path: str) -> bool:
    """An ``org/name`` Hub id, acceptable only where the Hub can be reached; a path whose first
    part exists here (``models/foo`` with a ``models/`` directory) is a missing local model."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return False
    org = model_path.split("/", 1)[0]
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", model_path)) and not org.startswith(".") and not Path(org).exists()


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
