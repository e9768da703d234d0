"""The ``pytorch`` backend of ``sft``, ``lora_sft`` and ``dpo``: plain PyTorch DDP, on CPU (gloo) or CUDA (nccl).

instructlab-training 0.16.2 cannot train without CUDA, so this backend is how a DAG author
rehearses a pipeline on a laptop or in CI. Data goes through instructlab's own processing (same
labels and masking), the loop keeps instructlab's batch semantics, and the output uses its
checkpoint layout, so switching backends changes nothing downstream.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import ClassVar

from airflow_provider_training_hub.algorithms.dpo import DPOParams
from airflow_provider_training_hub.algorithms.launch import log_tail, run_streamed
from airflow_provider_training_hub.algorithms.lora import LoRAParams, check_quantization_supported
from airflow_provider_training_hub.algorithms.errors import TrainingFailedError, TrainingStoppedError
from airflow_provider_training_hub.algorithms.backends.pytorch_layout import pytorch_layout
from airflow_provider_training_hub.algorithms.memory import MemoryLayout
from airflow_provider_training_hub.algorithms.registry import Backend, register_backend
from airflow_provider_training_hub.algorithms.sft import SFTParams, prepare_data
from airflow_provider_training_hub.algorithms.torchrun import resolve_torchrun
from airflow_provider_training_hub.checkpoints import (
    FULL_STATE_METADATA,
    TrainingResult,
    collect_result,
    full_state_snapshot,
    saved_since,
)

log = logging.getLogger(__name__)


def _stopped_within_epoch(state_dir: Path) -> bool:
    """A full state saved by a stop: the trainer records the steps of its epoch it holds."""
    try:
        return "epoch_step" in json.loads((state_dir / FULL_STATE_METADATA).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


@register_backend("sft", "pytorch")
class PyTorchBackend(Backend):
    """torchrun + a compact DDP loop (see ``pytorch_trainer``)."""

    algorithm: ClassVar[str] = "sft"
    trainer_module: ClassVar[str] = "airflow_provider_training_hub.algorithms.backends.pytorch_trainer"

    @classmethod
    def memory_layout(cls, params: SFTParams) -> MemoryLayout:
        return pytorch_layout(params.bf16)

    def check(self, params: SFTParams) -> None:
        if params.fsdp_options is not None:
            raise ValueError("fsdp_options: the pytorch backend keeps a whole copy of the model on each rank (DDP), "
                             "with no FSDP to configure; leave fsdp_options unset, or use "
                             "backend='instructlab-training'.")

    def execute(self, params: SFTParams) -> TrainingResult:
        torchrun = resolve_torchrun(params, default_nproc_per_node=1)
        out = Path(params.ckpt_output_dir)
        out.mkdir(parents=True, exist_ok=True)
        prepared = self.prepare(params)
        log.info("pytorch backend: %s", prepared)
        command = [
            sys.executable, "-m", "torch.distributed.run", *torchrun.launcher_args(),
            # what was given only: the ranks' own validation sees the same choices (effective_batch_size or
            # gradient_accumulation_steps), and fills the same defaults
            "-m", self.trainer_module, self.algorithm, params.model_dump_json(exclude_unset=True),
        ]
        rank_log = out / f"full_logs_global{torchrun.node_rank}.log"
        before = full_state_snapshot(out)
        returncode = run_streamed(command, rank_log)
        if returncode != 0:
            if stopped := [p for p in saved_since(out, before) if _stopped_within_epoch(p)]:
                # The ranks agreed on a stop and saved: whichever node got the SIGTERM, every
                # node's run ends "stopped" (torchrun itself exits 1 on its ranks' exit 3), so a
                # Job's pods all exit 3, which its pod failure policy does not count.
                raise TrainingStoppedError(f"the ranks stopped and saved {stopped[-1]}")
            raise TrainingFailedError(
                f"pytorch training exited with code {returncode}\n--- last lines of {rank_log} ---\n{log_tail(rank_log)}"
            )
        return collect_result(out)

    def prepare(self, params: SFTParams) -> object:
        """The training data in the form the ranks read, under ``processed_data_dir``."""
        return prepare_data(params)


@register_backend("lora_sft", "pytorch", default=True)
class PyTorchLoRABackend(PyTorchBackend):
    """The same loop with peft's LoRA adapters on a frozen base model (4-bit with QLoRA)."""

    algorithm: ClassVar[str] = "lora_sft"

    def check(self, params: LoRAParams) -> None:
        super().check(params)
        if params.enable_model_splitting:
            raise ValueError("enable_model_splitting: the pytorch backend keeps a whole copy of the model on each rank "
                             "(DDP) and cannot spread one over GPUs; use backend='instructlab-training', whose FSDP "
                             "shards it, or load_in_4bit to make it smaller.")
        check_quantization_supported(params)


@register_backend("dpo", "pytorch", default=True)
class PyTorchDPOBackend(PyTorchBackend):
    """The same loop with preference pairs and DPO's loss (see ``pytorch_dpo_trainer``)."""

    algorithm: ClassVar[str] = "dpo"
    trainer_module: ClassVar[str] = "airflow_provider_training_hub.algorithms.backends.pytorch_dpo_trainer"

    def check(self, params: DPOParams) -> None:
        """Nothing beyond the schema's checks: DPO's options are all this backend's."""

    def prepare(self, params: DPOParams) -> object:
        from airflow_provider_training_hub.data.preference import prepare_preferences

        return prepare_preferences(params.data_path, params.model_path, params.processed_data_dir, params.max_length)
