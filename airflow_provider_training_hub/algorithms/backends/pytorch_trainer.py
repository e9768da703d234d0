"""The per-rank SFT loop of the ``pytorch`` backend, started by torchrun (one process per rank).

Semantics follow instructlab-training so results and files are comparable:
- ``effective_batch_size`` is the number of samples per optimizer step, summed over all ranks;
  each rank splits its share into micro-batches of at most ``max_tokens_per_gpu`` tokens and
  accumulates gradients over them (so accumulation adapts to sequence lengths);
- the loss is the mean cross-entropy over every label token of the step, across ranks;
- AdamW (``beta1``, ``beta2``, ``eps``, ``weight_decay``; instructlab's defaults 0.9/0.95, 1e-8,
  0), linear warmup then cosine decay, grad-norm clipping at 1.0; checkpoints and metrics in
  instructlab's layout (see ``checkpoints.py``), ``keep_last_checkpoint_only``'s ``last_epoch``
  included;
- with ``is_pretraining``, the tokenized documents are concatenated and cut into ``block_size``
  blocks, every token a label, as instructlab's pretraining block dataset does;
- for ``lora_sft``, peft's LoRA adapters on the frozen base model: only the adapters get
  gradients, optimizer state and a place in ``full_state``; checkpoints are the adapter (and
  with ``merge_adapter`` the merged model in ``merged/``);
- SIGTERM (a stop, a preemption) ends the run after the step in progress: the ranks agree on
  the step, save the full state there (``full_state/step_N``) and exit ``EXIT_STOPPED``; a rerun
  resumes at that step, in the middle of its epoch, as instructlab's on-demand checkpointing does.

The forward pass is ``packed``'s: each micro-batch's conversations in one row, with no padding,
attention that stays within each conversation, and the output head and loss at label positions
only (in SFT data a small fraction of all tokens). The data order is instructlab's (a
``torch.randperm`` seeded with ``random_seed + epoch``), so both backends see the same samples in
each step and their loss curves can be compared step by step.
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from itertools import chain
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from airflow_provider_training_hub.algorithms import AlgorithmRegistry
from airflow_provider_training_hub.algorithms.backends.packed import (
    PackedLabelLoss,
    device_plan,
    pack,
    register_packed_attention,
)
from airflow_provider_training_hub.algorithms.callbacks import Callbacks, TrainingHubContext
from airflow_provider_training_hub.algorithms.launch import EXIT_STOPPED
from airflow_provider_training_hub.algorithms.lora import LoRAParams
from airflow_provider_training_hub.algorithms.sft import EVAL_DATA_DIR, SFTParams
from airflow_provider_training_hub.algorithms.training_params import small_epoch_warning
from airflow_provider_training_hub.algorithms.tracking import close_metric_logger, log_to_trackers, metric_logger
from airflow_provider_training_hub.checkpoints import (
    FULL_STATE_METADATA,
    LAST_CHECKPOINT,
    MERGED_DIR,
    METRICS_FILE,
    full_state_checkpoints,
    keep_newest,
    publish,
)
from airflow_provider_training_hub.data.prepare import PROCESSED_FILE
from airflow_provider_training_hub.log_lines import WARNING_MARK

MAX_GRAD_NORM = 1.0
PROGRESS_SECONDS_ENV = "TRAINING_HUB_PROGRESS_SECONDS"
DEFAULT_PROGRESS_SECONDS = 10.0
_stop_requested = False


def _request_stop(signum: int, frame: object) -> None:
    global _stop_requested
    _stop_requested = True


@dataclass
class Sample:
    input_ids: list[int]
    labels: list[int]

    @property
    def loss_tokens(self) -> int:
        return sum(1 for t in self.labels[1:] if t != -100)

    @property
    def tokens(self) -> int:
        """What the sample costs a micro-batch."""
        return len(self.input_ids)


Line = tuple[list[int], list[int]]  # a prepared line's input_ids and labels (a document's: its input_ids)


def read_prepared(path: Path) -> list[Line]:
    with path.open(encoding="utf-8") as f:
        return [(r["input_ids"], r.get("labels", r["input_ids"])) for r in map(json.loads, f)]


def as_samples(lines: list[Line], block_size: int | None = None) -> list[Sample]:
    """Chats as they are, or with ``block_size`` documents concatenated and cut into blocks of that
    many tokens (the last one shorter), each learned whole."""
    if block_size is None:
        return [Sample(ids, labels) for ids, labels in lines]
    tokens = list(chain.from_iterable(ids for ids, _ in lines))
    return [Sample(block, block) for block in (tokens[i : i + block_size] for i in range(0, len(tokens), block_size))]


def load_samples(path: Path, block_size: int | None = None) -> list[Sample]:
    return as_samples(read_prepared(path), block_size)


def held_out_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """The lines kept for training and those held out by ``validation_split``: instructlab-training's
    split (``datasets``' seeded, shuffled ``train_test_split`` of the prepared file), so both backends
    evaluate on the same samples and train on the rest in the same order."""
    from datasets import Dataset

    try:
        split = Dataset.from_dict({"line": list(range(n))}).train_test_split(test_size=fraction, seed=seed)
    except ValueError as exc:  # e.g. a train set left empty
        raise ValueError(f"validation_split={fraction} of {n} prepared samples: {exc}") from None
    return split["train"]["line"], split["test"]["line"]


def training_and_eval_samples(params: SFTParams) -> tuple[list[Sample], list[Sample]]:
    """The samples to train on, and those to evaluate ``val_loss`` on: a held-out
    ``validation_split`` of the training data, the prepared ``eval_data_path``, or none."""
    block_size = params.block_size if params.is_pretraining else None
    lines = read_prepared(Path(params.processed_data_dir) / PROCESSED_FILE)
    held_out: list[Line] = []
    if params.validation_split:
        kept, held = held_out_split(len(lines), params.validation_split, params.random_seed)
        lines, held_out = [lines[i] for i in kept], [lines[i] for i in held]
    elif params.eval_data_path is not None:
        held_out = read_prepared(Path(params.processed_data_dir) / EVAL_DATA_DIR / PROCESSED_FILE)
        if not held_out:
            raise ValueError(f"eval_data_path {params.eval_data_path!r} has no sample left to evaluate on after "
                             "preparation (see its report above: each dropped line is counted there)")
    return as_samples(lines, block_size), as_samples(held_out, block_size)


def plan_steps(n: int, effective_batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Sample indices per optimizer step: instructlab's order (its ``EpochSampler``: a
    ``torch.randperm`` seeded with ``seed + epoch``), cut into effective batches."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return [order[i : i + effective_batch_size] for i in range(0, n, effective_batch_size)]


def rank_share(step: list[int], samples: Sequence[Sample], rank: int, world: int) -> list[int]:
    """Balance tokens: longest first, each to the currently lightest rank (same on every rank)."""
    loads = [0] * world
    owners: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(step, key=lambda i: (-samples[i].tokens, i)):
        r = loads.index(min(loads))
        owners[r].append(i)
        loads[r] += samples[i].tokens
    return owners[rank]


def micro_batches(indices: list[int], samples: Sequence[Sample], token_cap: int,
                  sample_cap: int | None = None) -> list[list[int]]:
    """Greedy packing into micro-batches of at most ``token_cap`` tokens and ``sample_cap``
    samples (one sample always fits)."""
    batches: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for i in indices:
        length = samples[i].tokens
        if current and (tokens + length > token_cap or len(current) == sample_cap):
            batches.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += length
    if current:
        batches.append(current)
    return batches


def eta_text(seconds: float) -> str:
    """``4m05s``, or ``2h13m`` from an hour on: how long the steps left will take at this run's pace."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def progress_interval() -> float:
    """Seconds between progress lines: ``TRAINING_HUB_PROGRESS_SECONDS``, else 10 (0: every step)."""
    raw = os.environ.get(PROGRESS_SECONDS_ENV, "")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_PROGRESS_SECONDS
    except ValueError:
        print(f"{WARNING_MARK}{PROGRESS_SECONDS_ENV}={raw!r} is not a number of seconds; "
              f"using {DEFAULT_PROGRESS_SECONDS:g}", file=sys.stderr, flush=True)
        return DEFAULT_PROGRESS_SECONDS


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warmup to ``peak`` over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    """SFT's loop; a subclass trains another algorithm by overriding the hooks marked as such
    (``_load_samples``, ``_loss_module``, ``_lora``, ``_before_resume``, ``_step``,
    ``_progress_details``)."""

    noun = "samples"  # what the start line counts

    def __init__(self, params: SFTParams) -> None:
        self.params = params
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.device = torch.device(f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu")
        self.out = Path(params.ckpt_output_dir)
        self.samples, self.eval_samples = self._load_samples()
        # training_hub's other way to size a step: micro-batches of micro_batch_size, accumulated
        self.batch_size = (params.micro_batch_size * params.gradient_accumulation_steps * self.world
                           if params.gradient_accumulation_steps else params.effective_batch_size)
        self.steps_per_epoch = math.ceil(len(self.samples) / self.batch_size)
        self.total_steps = self.steps_per_epoch * params.num_epochs

        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(params.random_seed)
        self.tokenizer = AutoTokenizer.from_pretrained(params.model_path)
        self.plan = device_plan(self.device, bf16=params.bf16)
        # the most tokens of a micro-batch, which is one packed row
        self.row_cap = min(params.batch_token_cap, self.plan.row_tokens or params.batch_token_cap)
        self.lora = self._lora()
        # float32 master weights: autocast (where the plan has it) computes in bfloat16, as
        # instructlab's FSDP mixed precision does, while AdamW keeps the small updates.
        load = {"dtype": torch.float32, "attn_implementation": register_packed_attention()}
        if getattr(self.lora, "load_in_4bit", False) or getattr(self.lora, "load_in_8bit", False):
            from transformers import BitsAndBytesConfig

            quantization = BitsAndBytesConfig(load_in_8bit=True) if self.lora.load_in_8bit else BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=self.plan.autocast_dtype or torch.float32)
            self.model = AutoModelForCausalLM.from_pretrained(
                params.model_path, quantization_config=quantization, device_map={"": self.device}, **load)
        else:
            self.model = AutoModelForCausalLM.from_pretrained(params.model_path, **load).to(self.device)
        self.model.config.use_cache = False
        self.adapted = self._add_adapters(self.lora) if self.lora else None
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.loss_module = nn.parallel.DistributedDataParallel(
            self._loss_module(), device_ids=[self.local_rank] if self.device.type == "cuda" else None,
        )
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=params.learning_rate, betas=(params.beta1, params.beta2), eps=params.eps,
            weight_decay=params.weight_decay, fused=self.plan.fused_adamw or None,
        )
        self.global_step = 0
        self.samples_seen = 0
        self._saved_at: tuple[int, bool] | None = None  # (samples_seen, merged) of the last HF save
        self.start_epoch = 0
        self.skip_steps = 0  # steps of start_epoch already done (a resumed stop)
        self._before_resume()
        self._resume()
        self.epoch = self.start_epoch
        self.tracker = metric_logger(params, params.ckpt_output_dir) if self.rank == 0 else None
        self.callbacks = Callbacks(params.callbacks or (), self.rank)

    def _fire(self, hook: str, record: dict | None = None, **extra: object) -> None:
        """A ``TrainingHubCallback`` hook, with the step's (or evaluation's) record as its metrics."""
        record = {**(record or {}), **extra}
        self.callbacks.fire(hook, TrainingHubContext(
            step=self.global_step, epoch=self.epoch, loss=record.get("avg_loss"), learning_rate=record.get("lr"),
            is_main_process=self.rank == 0, output_dir=str(self.out), metrics=record))

    # -- what an algorithm changes ------------------------------------------------------------

    def _load_samples(self) -> tuple[Sequence[Sample], Sequence[Sample]]:
        """The samples to train on and those to evaluate on."""
        return training_and_eval_samples(self.params)

    def _lora(self) -> LoRAParams | None:
        """The adapters' parameters, or None to train every weight."""
        return self.params if isinstance(self.params, LoRAParams) else None

    def _loss_module(self) -> nn.Module:
        """The module DDP wraps: it runs the model on a packed row."""
        return PackedLabelLoss(self.model, self.plan.autocast(self.device))

    def _before_resume(self) -> None:
        """Runs once the model and optimizer exist, before a full state is loaded into them."""

    def _progress_details(self, record: dict) -> str:
        """What a progress line says besides the loss, the learning rate and the pace."""
        return ""

    def _add_adapters(self, p: LoRAParams) -> nn.Module:
        """peft's LoRA layers, injected into ``self.model`` in place (the loss module keeps calling
        it); returns the ``PeftModel``, which saves and merges the adapter."""
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if getattr(p, "load_in_4bit", False) or getattr(p, "load_in_8bit", False):
            self.model = prepare_model_for_kbit_training(self.model, use_gradient_checkpointing=False)
        if Path(p.model_path).is_dir():  # the adapter names its base model: make that path absolute
            self.model.name_or_path = str(Path(p.model_path).resolve())
        config = LoraConfig(r=p.lora_r, lora_alpha=p.lora_alpha, lora_dropout=p.lora_dropout,
                            target_modules=p.target_modules or "all-linear", task_type="CAUSAL_LM")
        adapted = get_peft_model(self.model, config)
        trainable = sum(t.numel() for t in self.model.parameters() if t.requires_grad)
        total = sum(t.numel() for t in self.model.parameters())
        self._print(f"LoRA r={p.lora_r} alpha={p.lora_alpha}: {trainable} of {total} parameters trained "
                    f"({100 * trainable / total:.2f}%)")
        return adapted

    # -- state --------------------------------------------------------------------------------

    def _trained_state(self) -> dict[str, torch.Tensor]:
        """What ``full_state`` keeps of the model: everything, or for LoRA the adapters alone."""
        state = self.model.state_dict()
        if not self.lora:
            return state
        names = {name for name, t in self.model.named_parameters() if t.requires_grad}
        return {k: v for k, v in state.items() if k in names}

    def _newest_readable_state(self) -> tuple[Path, dict] | None:
        """The newest full state that loads, with tensors and plain values only (``weights_only``:
        a file on a shared volume must not run code when read). A corrupt one (a disk filled
        while it was saved) is skipped for the one before, instead of failing every retry."""
        for saved in reversed(full_state_checkpoints(self.out)):
            try:
                return saved, torch.load(saved / "state.pt", map_location=self.device, weights_only=True)
            except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError... for a bad file
                self._print(f"warning: full state {saved} is unreadable ({type(exc).__name__}: {str(exc)[:200]}); "
                            "trying the one before")
        return None

    def _resume(self) -> None:
        found = self._newest_readable_state()
        if found is None:
            return
        saved, state = found
        missing, unexpected = self.model.load_state_dict(state["model"], strict=not self.lora)
        if unexpected or (self.lora and set(self._trained_state()) - set(state["model"])):
            raise RuntimeError(f"{saved} does not match this model: unexpected {unexpected[:5]}, missing {missing[:5]}")
        self.optimizer.load_state_dict(state["optimizer"])
        meta = state["metadata"]
        # A state saved within an epoch (a stop) resumes that epoch after the steps it holds.
        self.skip_steps = meta.get("epoch_step", 0)
        self.start_epoch = meta["current_epoch"] + (0 if self.skip_steps else 1)
        self.global_step = meta["global_step"]
        self.samples_seen = meta["samples_seen"]
        self._print(f"resumed from {saved}: epoch {self.start_epoch}, step {self.global_step}, "
                    f"samples {self.samples_seen}")

    def _publish(self, final: Path, what: str, write: Callable[[Path], None]) -> None:
        """Rank 0 writes it (``checkpoints.publish``: readers never see a partial checkpoint), then
        removes what ``save_total_limit`` no longer keeps."""
        if self.rank == 0:
            publish(final, write)
            self._print(f"saved {what} {final}")
            self._fire("on_save", checkpoint_path=str(final), kind=what)
            if self.params.save_total_limit:
                for old in keep_newest(self.out, self.params.save_total_limit):
                    self._print(f"removed {old} (save_total_limit={self.params.save_total_limit})")
        dist.barrier()

    def _save_hf(self, final: bool = False) -> None:
        """``hf_format/samples_N``, once per N; with ``merge_adapter``, the final one also holds the
        merged model (merging every checkpoint would multiply the disk a run needs)."""
        merge = final and bool(getattr(self.lora, "merge_adapter", False))
        if self._saved_at in ((self.samples_seen, merge), (self.samples_seen, True)):
            return

        def write(tmp: Path) -> None:
            (self.adapted or self.model).save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            if merge:
                merged = copy.deepcopy(self.adapted).merge_and_unload()  # the training copy keeps its adapter
                merged.save_pretrained(tmp / MERGED_DIR)
                self.tokenizer.save_pretrained(tmp / MERGED_DIR)

        name = LAST_CHECKPOINT if self.params.keep_last_checkpoint_only else f"samples_{self.samples_seen}"
        self._publish(self.out / "hf_format" / name, "checkpoint", write)
        self._saved_at = (self.samples_seen, merge)

    def _save_full_state(self, epoch: int, epoch_step: int = 0) -> None:
        """``full_state/epoch_N`` after a whole epoch; ``full_state/step_N`` after ``epoch_step``
        steps of ``epoch`` (a stop)."""
        meta = {"current_epoch": epoch, "samples_seen": self.samples_seen, "global_step": self.global_step}
        if epoch_step:
            meta["epoch_step"] = epoch_step

        def write(tmp: Path) -> None:
            state = {"model": self._trained_state(), "optimizer": self.optimizer.state_dict(), "metadata": meta}
            torch.save(state, tmp / "state.pt")
            (tmp / FULL_STATE_METADATA).write_text(json.dumps(meta))

        name = f"step_{self.global_step}" if epoch_step else f"epoch_{epoch}"
        self._publish(self.out / "full_state" / name, "full state", write)

    # -- logging ------------------------------------------------------------------------------

    def _print(self, message: str) -> None:
        if self.rank == 0:
            print(f"[training-hub] {message}", flush=True)

    def _warn(self, message: str) -> None:
        if self.rank == 0:
            print(f"{WARNING_MARK}{message}", flush=True)

    def _metrics(self, record: dict) -> None:
        """Rank 0's record in the metrics file and, with tracking on, to MLflow, W&B and TensorBoard
        (as instructlab-training's own loop logs it: ``hparams`` once, then per step)."""
        if self.rank != 0:
            return
        with (self.out / METRICS_FILE).open("a", encoding="utf-8") as f:
            f.write(json.dumps({**record, "timestamp": datetime.now().isoformat()}) + "\n")
        if self.tracker:
            log_to_trackers(self.tracker, record)

    # -- training -----------------------------------------------------------------------------

    def _step(self, step_indices: list[int]) -> dict:
        p = self.params
        mine = rank_share(step_indices, self.samples, self.rank, self.world)
        # A rank with no sample this step still runs one zero-weight pass, so every rank
        # joins DDP's gradient all-reduce exactly once per step.
        weight = 1.0 if mine else 0.0
        mine = mine or [step_indices[0]]
        counts = torch.tensor(
            [weight * sum(self.samples[i].loss_tokens for i in mine),
             weight * sum(len(self.samples[i].input_ids) for i in mine)],
            dtype=torch.float64, device=self.device,
        )
        dist.all_reduce(counts)
        loss_tokens = max(1.0, counts[0].item())
        # DDP averages gradients over ranks; scaling by world/loss_tokens makes the result the
        # mean over every label token of the step.
        scale = self.world / loss_tokens
        lr = lr_at(self.global_step, p.learning_rate, p.warmup_steps, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batches = micro_batches(mine, self.samples, self.row_cap, p.micro_batch_size)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for n, batch in enumerate(batches):
            row = pack([(self.samples[i].input_ids, self.samples[i].labels) for i in batch], self.device)
            sync = n == len(batches) - 1
            with nullcontext() if sync else self.loss_module.no_sync():
                loss = self.loss_module(row, weight)
                (loss * scale).backward()
            loss_sum += loss.detach().double()
        grad_norm = nn.utils.clip_grad_norm_(self.trainable, MAX_GRAD_NORM).item()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        dist.all_reduce(loss_sum)
        self.global_step += 1
        self.samples_seen += len(step_indices)
        return {
            "step": self.global_step,
            "rank": self.rank,
            "lr": lr,
            "num_loss_counted_tokens": int(counts[0].item()),
            "num_tokens": int(counts[1].item()),
            "batch_size": len(step_indices),
            "num_minibatches": len(batches),
            "avg_loss": loss_sum.item() / loss_tokens,
            "samples_seen": self.samples_seen,
            "gradnorm": grad_norm,
            "total_samples": len(self.samples),
            "num_epoch_steps": self.steps_per_epoch,
        }

    def _evaluate(self) -> None:
        """``val_loss``: the mean next-token loss over every label token of the evaluation set, its
        samples shared among the ranks, with no gradients (instructlab's ``compute_validation_loss``)."""
        self.model.eval()
        mine = rank_share(list(range(len(self.eval_samples))), self.eval_samples, self.rank, self.world)
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)  # summed loss, label tokens
        with torch.no_grad():
            for batch in micro_batches(mine, self.eval_samples, self.row_cap, self.params.micro_batch_size):
                row = pack([(self.eval_samples[i].input_ids, self.eval_samples[i].labels) for i in batch], self.device)
                totals[0] += self.loss_module.module(row, 1.0).double()
                totals[1] += sum(self.eval_samples[i].loss_tokens for i in batch)
        dist.all_reduce(totals)
        self.model.train()
        record = {"step": self.global_step, "epoch": self.epoch, "val_loss": totals[0].item() / max(1.0, totals[1].item()),
                  "val_num_tokens": int(totals[1].item()), "val_num_samples": len(self.eval_samples)}
        self._metrics(record)
        self._fire("on_evaluate", record)
        self._print(f"evaluation at step {self.global_step}/{self.total_steps}: val_loss {record['val_loss']:.4f} "
                    f"({record['val_num_samples']} samples, {record['val_num_tokens']} tokens)")

    def train(self) -> None:
        p = self.params
        evaluated = f" ({len(self.eval_samples)} to evaluate on)" if self.eval_samples else ""
        self._print(f"{len(self.samples)} {self.noun}{evaluated}, {self.world} rank(s) on {self.device.type}, "
                    f"{self.steps_per_epoch} steps/epoch x {p.num_epochs} epochs (epoch 0 to {p.num_epochs - 1}), "
                    f"effective batch {self.batch_size}, <= {p.batch_token_cap} tokens"
                    f"{f' and {p.micro_batch_size} samples' if p.micro_batch_size else ''} per micro-batch "
                    f"({self.plan.describe()})")
        if small := small_epoch_warning(len(self.samples), self.batch_size, self.noun, p):
            self._warn(f"{small} Here each epoch is one step of {len(self.samples)} {self.noun}, "
                       f"{self.total_steps} in all.")
        if self.start_epoch == 0 and self.global_step == 0:
            group = self.optimizer.param_groups[0]  # what AdamW really got, for the record
            self._metrics({"hparams": True, **p.model_dump(), "world_size": self.world, "backend": "pytorch",
                           "optimizer": {k: group[k] for k in ("betas", "eps", "weight_decay")}})
        self.model.train()
        self._fire("on_train_begin")
        next_save = (self.samples_seen // p.save_samples + 1) * p.save_samples if p.save_samples else None
        started = time.perf_counter()
        first_step = self.global_step  # a resumed run's pace counts only its own steps
        # A progress line for the first and the last step, and in between at most one per
        # interval: a steady pace in the task log, whatever a step takes.
        interval, last_progress = progress_interval(), started
        tokens_done = 0
        for epoch in range(self.start_epoch, p.num_epochs):
            planned = plan_steps(len(self.samples), self.batch_size, p.random_seed, epoch)
            done_in_epoch = self.skip_steps if epoch == self.start_epoch else 0
            self.epoch = epoch
            self._fire("on_epoch_begin")
            for epoch_step, step_indices in enumerate(planned[done_in_epoch:], start=done_in_epoch + 1):
                self._fire("on_step_begin")
                step_start = time.perf_counter()
                record = self._step(step_indices)
                elapsed = time.perf_counter() - step_start
                tokens_done += record["num_tokens"]
                record.update(epoch=epoch, overall_throughput=record["batch_size"] / elapsed,
                              tokens_per_second=record["num_tokens"] / elapsed)
                self._metrics(record)
                self._fire("on_log", record)
                now = time.perf_counter()
                due = (self.global_step % p.logging_steps == 0 if p.logging_steps
                       else now - last_progress >= interval)
                if self.global_step in (first_step + 1, self.total_steps) or due:
                    last_progress = now
                    self._print(
                        f"epoch {epoch} step {record['step']}/{self.total_steps} "
                        f"loss {record['avg_loss']:.4f}{self._progress_details(record)} lr {record['lr']:.2e} "
                        f"tokens/s {record['tokens_per_second']:.0f} samples {self.samples_seen} eta "
                        + eta_text((self.total_steps - self.global_step) * (now - started)
                                   / (self.global_step - first_step))
                    )
                if self.eval_samples and (self.global_step % p.validation_frequency == 0
                                          or self.global_step == self.total_steps):
                    self._evaluate()
                every_steps = getattr(self.lora, "save_steps", 0)
                final_save_follows = self.global_step == self.total_steps and (
                    p.checkpoint_at_epoch or getattr(self.lora, "merge_adapter", False))
                if not final_save_follows and ((next_save is not None and self.samples_seen >= next_save) or (
                        every_steps and self.global_step % every_steps == 0)):
                    self._save_hf()
                    if next_save is not None:
                        next_save = (self.samples_seen // p.save_samples + 1) * p.save_samples
                self._fire("on_step_end", record)
                if epoch_step < len(planned) and self._stop_agreed():
                    self._save_full_state(epoch, epoch_step)
                    self._print(f"stopped by SIGTERM after step {self.global_step}/{self.total_steps}; "
                                "a rerun with the same ckpt_output_dir resumes here")
                    raise SystemExit(EXIT_STOPPED)
            last = epoch == p.num_epochs - 1
            if p.checkpoint_at_epoch or (last and getattr(self.lora, "merge_adapter", False)):
                self._save_hf(final=last)
            if p.accelerate_full_state_at_epoch:
                self._save_full_state(epoch)
            self._fire("on_epoch_end")
        total = time.perf_counter() - started
        self._check_ranks_agree()
        self._fire("on_train_end")
        self._print(f"done: {self.global_step} steps, {tokens_done / max(total, 1e-9):.0f} tokens/s overall")

    def _stop_agreed(self) -> bool:
        """Whether any rank was asked to stop: every rank learns it at the same step, so all save
        the same state (one small all-reduce per step)."""
        flag = torch.tensor([1.0 if _stop_requested else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return flag.item() > 0

    def _check_ranks_agree(self) -> None:
        """DDP keeps replicas identical; a divergence would mean a silently wrong checkpoint."""
        with torch.no_grad():
            fingerprint = torch.stack(
                [torch.stack([p.double().sum(), p.double().abs().sum()]) for p in self.model.parameters()]
            ).sum(0)
        gathered = [torch.zeros_like(fingerprint) for _ in range(self.world)]
        dist.all_gather(gathered, fingerprint)
        if any(not torch.equal(g, gathered[0]) for g in gathered):
            raise RuntimeError(f"model replicas diverged across ranks: {[g.tolist() for g in gathered]}")
        self._print(f"weights identical on all {self.world} rank(s) (fingerprint {gathered[0][0].item():.10e})")


def main(argv: list[str], trainer_class: type[Trainer] = Trainer) -> int:
    """``ALGORITHM PARAMS_JSON``: the parameters already checked by the backend, in its process."""
    params = AlgorithmRegistry.get_algorithm(argv[0]).params_schema.model_validate_json(argv[1])
    if params.enable_jit_checkpoint:  # else SIGTERM ends the rank at once, as by default
        signal.signal(signal.SIGTERM, _request_stop)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend)
    trainer = None
    try:
        trainer = trainer_class(params)
        trainer.train()
    finally:
        close_metric_logger(trainer and trainer.tracker)
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
