"""The parameters every training algorithm shares: paths, epochs, batch, optimizer, checkpoints,
tracking and the torchrun topology, declared once.

``SFTParams`` (and through it ``LoRAParams``) and ``DPOParams`` extend this schema with their own
fields, so a shared parameter means the same in every algorithm, on every surface derived from a
schema (the API, the CLI flags, the operator fields, the trigger form). Defaults are
instructlab-training's ``TrainingArgs`` defaults where it has one (a test holds them equal).
The torchrun fields default to ``None``: "take ``PET_*`` from the environment, else run on one
node" (see ``torchrun.py``), which is what a pod launched by Kubeflow or our Indexed Job needs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from airflow_provider_training_hub import json_syntax, object_storage
from airflow_provider_training_hub.algorithms.callbacks import import_path, load_class
from airflow_provider_training_hub.algorithms.params import ParamSchema
from airflow_provider_training_hub.algorithms.tracking import check_tracking_uri
from airflow_provider_training_hub.data.tables import table_kind

_HOST_PORT = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def check_host_port(name: str, value: str) -> str:
    """``host:port`` with a port in 1..65535; ``name`` is the parameter or variable to blame."""
    match = _HOST_PORT.match(value)
    if not match or not 0 < int(match.group(1)) < 65536:
        raise ValueError(f"{name} must be 'host:port' (e.g. 'node0:29500'), got {value!r}")
    return value


class TrainingParams(ParamSchema):
    """The fields shared by every algorithm's schema; not an algorithm's schema by itself."""

    RESULT_NEUTRAL: ClassVar[frozenset[str]] = frozenset({
        "ckpt_output_dir", "data_output_dir", "save_samples", "accelerate_full_state_at_epoch", "checkpoint_at_epoch",
        "save_total_limit", "keep_last_checkpoint_only", "logging_steps", "restart_changed_run",
        "max_tokens_per_gpu", "mlflow_tracking_uri", "mlflow_experiment_name",
        "mlflow_run_name", "wandb_project", "wandb_entity", "wandb_run_name", "tensorboard_log_dir",
        "nproc_per_node", "nnodes", "node_rank", "rdzv_id", "rdzv_endpoint", "master_addr", "master_port",
        "callbacks", "enable_jit_checkpoint", "checkpoint_storage",
    })
    # The input files besides the model, checked where training runs (``check_local_paths``).
    DATA_INPUTS: ClassVar[tuple[str, ...]] = ("data_path",)

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
    max_tokens_per_gpu: int | None = Field(
        None,
        ge=1,
        description=(
            "Hard cap on tokens per GPU in a mini-batch; sets mini-batch size and gradient accumulation. "
            "Unset: max(10000, the longest sample allowed: sft's max_seq_len, dpo's pair of 2 x max_length)."
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
    restart_changed_run: bool = Field(
        False,
        description=(
            "When ckpt_output_dir holds the checkpoints of a run with another model, data or parameters: "
            "False refuses to start; True moves that run's files into ckpt_output_dir/superseded/ and starts "
            "afresh. The same run always resumes from its newest full state."
        ),
    )

    callbacks: list[str] | None = Field(
        None,
        description=(
            "TrainingHubCallback classes by import path, e.g. [\"my_pkg.hooks:Notify\"] (a class or an instance is "
            "taken as its class's path): each training process makes one with no arguments and calls its hooks on "
            "rank 0. The class must be importable where training runs."
        ),
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

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _uri_without_credentials(cls, value: str | None) -> str | None:
        return check_tracking_uri(value) if value else value

    @field_validator("model_path", "data_path", "ckpt_output_dir")
    @classmethod
    def _bucket_uri(cls, value: str | None, info: Any) -> str | None:
        """A URI of object storage names its bucket, and no credentials (they would reach logs and XCom)."""
        return object_storage.check_uri(info.field_name, value) if object_storage.is_remote(value) else value

    @field_validator("rdzv_endpoint")
    @classmethod
    def _endpoint_is_host_port(cls, value: str | None) -> str | None:
        return check_host_port("rdzv_endpoint", value) if value else value

    @model_validator(mode="after")
    def _shared_consistent(self) -> TrainingParams:
        if self.max_tokens_per_gpu is not None and self.max_tokens_per_gpu < self.longest_sample:
            raise ValueError(
                f"max_tokens_per_gpu ({self.max_tokens_per_gpu}) must be at least {self.longest_sample_name} "
                f"({self.longest_sample}): a single sample must fit on a GPU."
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
        return self

    @property
    def longest_sample(self) -> int:
        """The most tokens one sample may hold (a pair's two sequences together, for DPO)."""
        raise NotImplementedError

    @property
    def longest_sample_name(self) -> str:
        """The parameter(s) ``longest_sample`` comes from, for messages."""
        raise NotImplementedError

    @property
    def batch_token_cap(self) -> int:
        return self.max_tokens_per_gpu or max(10_000, self.longest_sample)

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
                f"model_path {self.model_path!r} is not a model directory on this machine (there is no such "
                "directory): it must hold the model's config.json, its weights (*.safetensors) and its tokenizer's "
                "files, as save_pretrained writes them. `training-hub models tiny DIR` makes a small one offline, "
                "and so does TrainingHubHook().make_model('tiny', DIR) in a DAG."
            )
        for path in self.callbacks or ():
            load_class(path)
        for name in self.DATA_INPUTS:
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
        for name in self.DATA_INPUTS:
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


def small_epoch_warning(samples: int, batch_size: int, noun: str, params: Any) -> str | None:
    """A warning when an epoch holds fewer samples than one optimizer step takes: a dozen samples
    under the default ``effective_batch_size`` of 128 train one short step per epoch, which nobody
    who left the default for a small dataset expects, and which no error would reveal."""
    if samples >= batch_size:
        return None
    knob = ("micro_batch_size x gradient_accumulation_steps x ranks" if params.gradient_accumulation_steps
            else "effective_batch_size")
    return (f"an epoch has {samples} {noun}, fewer than one optimizer step takes ({knob} = {batch_size}): "
            f"an epoch cannot fill one step. For more steps, make {knob} smaller than {samples}.")
