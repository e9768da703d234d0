"""The default SFT backend: instructlab-training's ``run_training`` (CUDA only, as of 0.16.2).

Upstream's gaps filled here: it dies deep in ``main_ds.py`` without CUDA (we refuse up front),
it spawns a bare ``torchrun`` (we make the interpreter's bin directory reachable), it reports a
failed run without its cause (we attach the tail of the rank's log), and it returns None (we
return the checkpoints and metrics it left behind). Data is validated and prepared beforehand by
``data.prepare`` (upstream's own processing, run step by step), so ``run_training`` is told
``process_data=False``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

from airflow_provider_training_hub.algorithms.launch import log_tail, termination_requested
from airflow_provider_training_hub.algorithms.lora import LoRAParams, check_quantization_supported
from airflow_provider_training_hub.algorithms.errors import TrainingFailedError, TrainingStoppedError
from airflow_provider_training_hub.algorithms.memory import TRAINING_HUB_LAYOUT, MemoryLayout
from airflow_provider_training_hub.algorithms.registry import AlgorithmRegistry, Backend, register_backend
from airflow_provider_training_hub.algorithms.sft import SFTParams, prepare_data
from airflow_provider_training_hub.algorithms.training_params import small_epoch_warning
from airflow_provider_training_hub.algorithms.torchrun import (
    TorchrunSpec,
    environment_variable,
    interpreter_bin_on_path,
    path_entry,
    resolve_torchrun,
)
from airflow_provider_training_hub.algorithms.tracking import TRACKING_PARAMS
from airflow_provider_training_hub.checkpoints import (
    TrainingResult,
    collect_result,
    full_state_snapshot,
    hf_checkpoints,
    keep_newest,
    saved_since,
)
from airflow_provider_training_hub.log_lines import WARNING_MARK

log = logging.getLogger(__name__)
UPSTREAM_STATE_METADATA = "training_metadata.json"  # a torch.save pickle, despite its name
# First on the rank processes' PYTHONPATH: its sitecustomize mends what keeps upstream 0.16.2's
# lora_sft from running (a trl import, its FSDP LoRA save; see that module).
RANK_SITE = Path(__file__).with_name("instructlab_site")


def _cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _stopped_on_demand(ckpt_output_dir: str, before: dict[Path, float]) -> Path | None:
    """The on-demand full state that ended this run, if one did.

    Upstream exits 0 after an on-demand save (its documentation warns of this), so exit codes
    cannot tell. Such a save is the only full state whose metadata has ``global_step`` (a
    mid-epoch state); it must be this run's (not in ``before``, ``full_state_snapshot``'s view of
    the directory when the run started: an earlier stop that this run resumed from does not
    count), and a run that went on afterwards saved a checkpoint of more samples later.
    """
    import torch

    newest = hf_checkpoints(ckpt_output_dir)
    newest_samples = int(newest[-1].name.rpartition("_")[2]) if newest and newest[-1].name.startswith("samples_") else -1
    for state_dir in saved_since(ckpt_output_dir, before):
        state = torch.load(state_dir / UPSTREAM_STATE_METADATA, weights_only=True)
        if "global_step" in state and state["samples_seen"] >= newest_samples:
            return state_dir
    return None


def _flash_attn_installed() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


@register_backend("sft", "instructlab-training", default=True)
class InstructLabTrainingBackend(Backend):
    """``instructlab.training.run_training``: FSDP over torchrun, with its own data processing."""

    algorithm: ClassVar[str] = "sft"

    @classmethod
    def memory_layout(cls, params: SFTParams) -> MemoryLayout | None:
        """training_hub's own assumption (FSDP, activation checkpointing), unless ``fsdp_options``
        keeps whole copies (NO_SHARD) or the parameters in CPU memory, which it does not count."""
        options = params.fsdp_options
        if options is not None and options.cpu_offload_params:
            return None
        if options is not None and options.sharding_strategy == "NO_SHARD":
            return replace(TRAINING_HUB_LAYOUT, sharded=False)
        return TRAINING_HUB_LAYOUT

    def require_cuda(self) -> None:
        if _cuda_device_count() == 0:
            others = [b for b in AlgorithmRegistry.list_backends(self.algorithm) if b != self.name]
            alternative = f" For CPU training use backend={others[0]!r}." if others else ""
            raise ValueError(
                f"Backend {self.name!r} needs a CUDA GPU and this machine has none "
                f"(instructlab-training calls torch.cuda.set_device unconditionally).{alternative}"
            )

    def check(self, params: SFTParams) -> None:
        """Refuse, before any work, what upstream cannot do."""
        self.require_cuda()
        if not params.bf16:
            raise ValueError("bf16=False: instructlab-training always trains in bfloat16 (FSDP mixed precision); "
                             "use backend='pytorch' to compute in float32.")
        if params.micro_batch_size or params.gradient_accumulation_steps:
            raise ValueError("micro_batch_size and gradient_accumulation_steps: instructlab-training sizes each "
                             "micro-batch by tokens (max_tokens_per_gpu) and accumulates what effective_batch_size "
                             "needs; set those, or use backend='pytorch'.")
        if params.eval_data_path is not None:
            raise ValueError("eval_data_path: instructlab-training evaluates on a held-out validation_split of the "
                             "training data only; set validation_split instead, or use backend='pytorch'.")
        if params.logging_steps is not None:
            raise ValueError("logging_steps: instructlab-training prints its own progress, every step; leave "
                             "logging_steps unset (the metrics file and the trackers get every step either way).")

    def build_args(self, params: SFTParams, torchrun: TorchrunSpec):
        """The upstream ``(TorchrunArgs, TrainingArgs)`` for our parameters."""
        from instructlab.training import FSDPOptions, PretrainingConfig, TorchrunArgs, TrainingArgs

        from airflow_provider_training_hub.algorithms.backends.instructlab_callbacks import TrainingHubCallbacks

        torch_args = TorchrunArgs(
            nproc_per_node=torchrun.nproc_per_node,
            nnodes=torchrun.nnodes,
            node_rank=torchrun.node_rank,
            rdzv_id=torchrun.rdzv_id,
            rdzv_endpoint=torchrun.rdzv_endpoint,
            master_addr=torchrun.master_addr,
            master_port=torchrun.master_port,
        )
        train_args = TrainingArgs(
            model_path=params.model_path,
            data_path=params.data_path,
            ckpt_output_dir=params.ckpt_output_dir,
            data_output_dir=params.processed_data_dir,
            num_epochs=params.num_epochs,
            effective_batch_size=params.effective_batch_size,
            learning_rate=params.learning_rate,
            max_seq_len=params.max_seq_len,
            max_batch_len=params.batch_token_cap,
            save_samples=params.save_samples,
            warmup_steps=params.warmup_steps,
            accelerate_full_state_at_epoch=params.accelerate_full_state_at_epoch,
            checkpoint_at_epoch=params.checkpoint_at_epoch,
            fsdp_options=FSDPOptions(**(params.fsdp_options.model_dump() if params.fsdp_options else {})),
            # our callbacks, through upstream's: one bridge whose source upstream sends to its ranks
            callbacks=[TrainingHubCallbacks()] if params.callbacks else None,
            validation_split=params.validation_split,
            validation_frequency=params.validation_frequency,
            keep_last_checkpoint_only=params.keep_last_checkpoint_only,
            random_seed=params.random_seed,
            adamw_betas=(params.beta1, params.beta2),
            adamw_eps=params.eps,
            adamw_weight_decay=params.weight_decay,
            pretraining_config=PretrainingConfig(
                block_size=params.block_size, document_column_name=params.document_column_name
            ) if params.is_pretraining else None,
            # We prepare the data ourselves first (validated, atomic, drops reported).
            process_data=False,
            # Upstream raises unless flash-attn is importable; without it, SDPA attention is used.
            disable_flash_attn=not _flash_attn_installed(),
            # SIGTERM (preemption, a stopped task) saves the full state at the current step
            on_demand_checkpointing=params.enable_jit_checkpoint,
            # Its own loggers; rank 0's MLflow handler resumes the run tracking.mlflow_run opened.
            **{name: getattr(params, name) for name in TRACKING_PARAMS},
        )
        return torch_args, train_args

    def execute(self, params: SFTParams) -> TrainingResult:
        torchrun = resolve_torchrun(params, default_nproc_per_node="gpu")
        torch_args, train_args = self.build_args(params, torchrun)

        from instructlab.training import run_training

        from airflow_provider_training_hub.algorithms.backends.instructlab_callbacks import CALLBACKS_ENV

        prepared = prepare_data(params)
        if small := small_epoch_warning(prepared.kept, params.effective_batch_size, "samples", params):
            print(f"{WARNING_MARK}{small}", flush=True)
        if termination_requested():  # SIGTERM while the data was prepared: do not start training
            raise TrainingFailedError("stopped by SIGTERM before training started")
        rank_log = Path(params.ckpt_output_dir) / f"full_logs_global{torchrun.node_rank}.log"
        log.info("instructlab-training: %s", torchrun)
        before = full_state_snapshot(params.ckpt_output_dir)
        try:
            with interpreter_bin_on_path(), path_entry("PYTHONPATH", str(RANK_SITE), first=True), \
                    environment_variable(CALLBACKS_ENV, json.dumps(params.callbacks or [])):
                run_training(torch_args=torch_args, train_args=train_args)
        except RuntimeError as exc:
            raise TrainingFailedError(
                f"instructlab-training failed: {exc}\n--- last lines of {rank_log} ---\n{log_tail(rank_log)}"
            ) from exc
        if not rank_log.is_file():  # upstream returns silently when torchrun cannot even start
            raise TrainingFailedError(f"instructlab-training did not start torchrun (no {rank_log}).")
        if stopped := _stopped_on_demand(params.ckpt_output_dir, before):
            raise TrainingStoppedError(f"instructlab-training saved {stopped} on a stop request and exited before the "
                                       "end of its last epoch")
        if params.save_total_limit:  # upstream keeps every checkpoint while it trains
            for old in keep_newest(params.ckpt_output_dir, params.save_total_limit):
                log.info("removed %s (save_total_limit=%d)", old, params.save_total_limit)
        return collect_result(params.ckpt_output_dir)


@register_backend("lora_sft", "instructlab-training")
class InstructLabLoRABackend(InstructLabTrainingBackend):
    """``run_training`` with ``TrainingArgs.lora``. Upstream merges the adapter into every
    checkpoint it saves, counts saves in samples, not steps, and saves no full state for LoRA."""

    algorithm: ClassVar[str] = "lora_sft"

    def check(self, params: LoRAParams) -> None:
        super().check(params)
        if params.load_in_8bit:
            raise ValueError("load_in_8bit: instructlab-training quantizes a LoRA run's base model to 4-bit NF4 only; "
                             "use load_in_4bit=True, or backend='pytorch'.")
        check_quantization_supported(params)
        if params.accelerate_full_state_at_epoch and "accelerate_full_state_at_epoch" in params.model_fields_set:
            raise ValueError(
                "accelerate_full_state_at_epoch=True: instructlab-training cannot save the full state of a LoRA run "
                "(so it cannot resume one); set it to False, or use backend='pytorch', which can."
            )
        if params.merge_adapter is False:
            raise ValueError(
                "merge_adapter=False: instructlab-training saves LoRA checkpoints merged into the base model and "
                "cannot save the adapter alone; leave merge_adapter unset, or use backend='pytorch'."
            )

    def build_args(self, params: LoRAParams, torchrun: TorchrunSpec):
        from instructlab.training import LoraOptions
        from instructlab.training.config import QuantizeDataType

        torch_args, train_args = super().build_args(params, torchrun)
        lora = LoraOptions(
            rank=params.lora_r, alpha=params.lora_alpha, dropout=params.lora_dropout,
            target_modules=params.target_modules,  # None: upstream adapts every *_proj linear layer
            quantize_data_type=QuantizeDataType.NF4 if params.load_in_4bit else QuantizeDataType.NONE,
        )
        # save_steps in samples: each optimizer step takes effective_batch_size samples.
        save_samples = params.save_samples or params.save_steps * params.effective_batch_size
        if params.enable_model_splitting:
            log.info("enable_model_splitting: instructlab-training spreads the model over the GPUs with FSDP "
                     "(sharding_strategy %s)", train_args.fsdp_options.sharding_strategy.value)
        if params.accelerate_full_state_at_epoch:  # only the default is left here (check() refused a choice)
            log.warning("instructlab-training cannot save the full state of a LoRA run: this run cannot be resumed")
        # Upstream cannot save a LoRA run's full state, on demand either: a stop fails the run.
        return torch_args, train_args.model_copy(update={
            "lora": lora, "save_samples": save_samples, "accelerate_full_state_at_epoch": False,
            "on_demand_checkpointing": False,
        })
