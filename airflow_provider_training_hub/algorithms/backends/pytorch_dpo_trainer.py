"""The per-rank DPO loop of the ``pytorch`` backend: ``pytorch_trainer``'s loop with pairs.

Everything but the step is SFT's: the data order, effective batches spread over ranks and
micro-batches, AdamW with warmup and cosine decay, full state, the SIGTERM save, resume,
checkpoints, metrics and callbacks. What differs:

- a sample is a preference pair (``data/preference.py``'s ``pairs.jsonl``); its cost in a
  micro-batch is both sequences, and a pair is never split;
- each micro-batch's pairs run in one packed forward, every pair's prompt + chosen and prompt +
  rejected side by side (``packed.PackedSequenceLogps``): each sequence's summed log-probability
  of its reply, the prompt's tokens unlearned;
- the reference log-probabilities are computed once, before the first step, with the starting
  model (adapters disabled under LoRA), and kept: two numbers per pair instead of a second model;
- the loss is TRL's for ``loss_type`` (``dpo_losses``), averaged over the step's pairs, and each
  step logs ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins`` and
  ``rewards/accuracies`` as TRL names them.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from airflow_provider_training_hub.algorithms.backends.packed import IGNORE, PackedSequenceLogps, pack
from airflow_provider_training_hub.algorithms.backends.pytorch_trainer import (
    MAX_GRAD_NORM,
    Trainer,
    lr_at,
    main,
    micro_batches,
    rank_share,
)
from airflow_provider_training_hub.algorithms.dpo import DPOParams
from airflow_provider_training_hub.data.preference import PAIRS_FILE

REWARD_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


@dataclass
class Pair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]

    @property
    def tokens(self) -> int:
        return 2 * len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)

    def sequences(self) -> list[tuple[list[int], list[int]]]:
        """Prompt + chosen and prompt + rejected, as ``(input_ids, labels)`` with the prompt unlearned."""
        unlearned = [IGNORE] * len(self.prompt_ids)
        return [(self.prompt_ids + reply, unlearned + reply) for reply in (self.chosen_ids, self.rejected_ids)]


def read_pairs(path: Path) -> list[Pair]:
    with path.open(encoding="utf-8") as f:
        return [Pair(**json.loads(line)) for line in f]


def dpo_losses(policy: torch.Tensor, reference: torch.Tensor, lengths: torch.Tensor, beta: float, loss_type: str,
               label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the chosen and rejected rewards, by TRL 1.16's formulas. Each tensor
    argument is (pairs, 2): chosen then rejected; ``lengths`` are the replies' tokens (IPO
    compares per-token log-ratios). ``label_smoothing`` is conservative DPO's flip probability."""
    ratios = policy - reference
    delta = ratios[:, 0] - ratios[:, 1]
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    elif loss_type == "ipo":
        per_token = ratios / lengths.clamp(min=1)
        losses = (per_token[:, 0] - per_token[:, 1] - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    rewards = beta * ratios.detach()
    return losses, rewards[:, 0], rewards[:, 1]


class DPOTrainer(Trainer):
    params: DPOParams
    noun = "pairs"

    def _load_samples(self) -> tuple[Sequence[Pair], Sequence[Pair]]:
        return read_pairs(Path(self.params.processed_data_dir) / PAIRS_FILE), []

    def _lora(self) -> DPOParams | None:
        return self.params if self.params.lora_r is not None else None

    def _loss_module(self) -> nn.Module:
        return PackedSequenceLogps(self.model, self.plan.autocast(self.device))

    def _reference_context(self):
        """The reference model: the starting weights, or under LoRA the model without its adapters."""
        return self.adapted.disable_adapter() if self.adapted is not None else nullcontext()

    def _before_resume(self) -> None:
        """Every pair's reference log-probabilities, with the weights as loaded from ``model_path``
        (a resumed run loads its state only after this): each rank computes a share, then all
        ranks hold all."""
        n = len(self.samples)
        started = time.perf_counter()
        reference = torch.zeros(n, 2, dtype=torch.float64, device=self.device)
        self.model.eval()
        with torch.no_grad(), self._reference_context():
            mine = [i for i in range(n) if i % self.world == self.rank]
            for batch in micro_batches(mine, self.samples, self.row_cap):
                row = pack([s for i in batch for s in self.samples[i].sequences()], self.device)
                reference[batch] = self.loss_module.module(row).view(-1, 2).double()
        self.model.train()
        dist.all_reduce(reference)
        self.reference = reference
        self.reference_seconds = time.perf_counter() - started
        self._print(f"reference log-probabilities of {n} pairs computed "
                    f"({'adapters disabled' if self.adapted is not None else 'the starting model'}) "
                    f"in {self.reference_seconds:.1f} s")

    def train(self) -> None:
        self._metrics({"step": self.global_step, "reference_pairs": len(self.samples),
                       "reference_seconds": self.reference_seconds})
        super().train()

    def _step(self, step_indices: list[int]) -> dict:
        p = self.params
        mine = rank_share(step_indices, self.samples, self.rank, self.world)
        weight = 1.0 if mine else 0.0  # as in SFT: a rank with no pair still joins the all-reduce
        mine = mine or [step_indices[0]]
        pairs = len(step_indices)
        scale = self.world / pairs  # DDP averages over ranks: the gradient of the mean over the step's pairs
        lr = lr_at(self.global_step, p.learning_rate, p.warmup_steps, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batches = micro_batches(mine, self.samples, self.row_cap, p.micro_batch_size)
        # summed over my pairs: loss, chosen and rejected rewards, margin, accuracy; then tokens
        totals = torch.zeros(6, dtype=torch.float64, device=self.device)
        for n, batch in enumerate(batches):
            row = pack([s for i in batch for s in self.samples[i].sequences()], self.device)
            lengths = torch.tensor([[len(self.samples[i].chosen_ids), len(self.samples[i].rejected_ids)]
                                    for i in batch], device=self.device)
            sync = n == len(batches) - 1
            with nullcontext() if sync else self.loss_module.no_sync():
                policy = self.loss_module(row).view(-1, 2)
                losses, chosen, rejected = dpo_losses(policy, self.reference[batch].to(policy.dtype), lengths,
                                                      p.beta, p.loss_type, p.label_smoothing)
                (losses.sum() * weight * scale).backward()
            totals += weight * torch.stack([
                losses.detach().sum().double(), chosen.sum().double(), rejected.sum().double(),
                (chosen - rejected).sum().double(), (chosen > rejected).sum().double(),
                torch.tensor(float(row.input_ids.shape[1]), dtype=torch.float64, device=self.device)])
        grad_norm = nn.utils.clip_grad_norm_(self.trainable, MAX_GRAD_NORM).item()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        dist.all_reduce(totals)
        self.global_step += 1
        self.samples_seen += pairs
        means = (totals[:5] / pairs).tolist()
        return {
            "step": self.global_step,
            "rank": self.rank,
            "lr": lr,
            "num_tokens": int(totals[5].item()),
            "batch_size": pairs,
            "num_minibatches": len(batches),
            "avg_loss": means[0],
            **dict(zip(REWARD_KEYS, (means[1], means[2], means[3], means[4]), strict=True)),
            "samples_seen": self.samples_seen,
            "gradnorm": grad_norm,
            "total_samples": len(self.samples),
            "num_epoch_steps": self.steps_per_epoch,
        }

    def _progress_details(self, record: dict) -> str:
        return f" margin {record['rewards/margins']:.4f} accuracy {record['rewards/accuracies']:.2f}"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], DPOTrainer))
