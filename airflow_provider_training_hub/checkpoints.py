"""What a finished run left in its ``ckpt_output_dir``, in instructlab-training's layout.

    <ckpt_output_dir>/hf_format/samples_<N>/     HF checkpoints; the newest has the largest N
    <ckpt_output_dir>/hf_format/last_epoch/      when only the last one is kept
    <ckpt_output_dir>/hf_format/samples_<N>/merged/   a LoRA adapter's merged model (merge_adapter)
    <ckpt_output_dir>/full_state/epoch_<N>/      resumable training state after epoch N
    <ckpt_output_dir>/full_state/step_<N>/       ... after optimizer step N, for a stopped run
    <ckpt_output_dir>/training_params_and_metrics_global0.jsonl   rank 0's hparams + per-step metrics

Both backends write this layout, so one reader serves both, and the result is plain JSON for XCom.
The ``pytorch`` backend publishes each checkpoint with ``publish``: whole or not at all, and a
checkpoint it replaces is kept until the new one is in place.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from airflow_provider_training_hub.data.atomic import umask

METRICS_FILE = "training_params_and_metrics_global0.jsonl"
MERGED_DIR = "merged"
LAST_CHECKPOINT = "last_epoch"  # instructlab's one checkpoint with keep_last_checkpoint_only, whatever it holds
ADAPTER_CONFIG = "adapter_config.json"  # peft's: the checkpoint is an adapter, not a whole model
_NUMBERED = re.compile(r"^(samples|epoch|step)_(\d+)$")
FULL_STATE_METADATA = "training_metadata.json"
PUBLISH_LOCK = ".publish.lock"
_REPLACED = re.compile(r"^\.(.+)\.old-[^.]+$")  # a checkpoint moved aside while its successor goes in
_UNFINISHED = re.compile(r"^\..+\.(old|tmp)-[^.]+$")  # what a killed publish leaves


@dataclass(frozen=True)
class TrainingResult:
    """The outcome of ``train()``: upstream ``run_training`` returns None, we return this."""

    ckpt_output_dir: str
    checkpoint: str | None
    checkpoints: list[str] = field(default_factory=list)
    full_state: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    adapter: bool = False  # ``checkpoint`` holds a LoRA adapter (load it with peft or transformers)
    merged_checkpoint: str | None = None  # the adapter merged into its base model, where saved
    mlflow_run_id: str | None = None  # where MLflow tracking was on (``algorithms/tracking.py``)
    mlflow_run_url: str | None = None  # its page in the MLflow UI, for an http(s) tracking server

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def _publish_lock(parent: Path) -> Iterator[None]:
    """One writer or restorer at a time in ``parent`` (an flock: it also holds across the nodes of
    an NFS share, and dies with its process)."""
    with (parent / PUBLISH_LOCK).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _tidy(parent: Path) -> None:
    """What a killed ``publish`` left, under the lock (so no publish is under way): a checkpoint it
    had moved aside goes back where its successor did not arrive, half-written ones go."""
    for path in sorted(parent.iterdir()):
        if (m := _REPLACED.match(path.name)) and not (parent / m.group(1)).exists():
            os.rename(path, parent / m.group(1))
        elif _UNFINISHED.match(path.name):
            shutil.rmtree(path, ignore_errors=True)


def publish(final: Path, write: Callable[[Path], None]) -> None:
    """Write a checkpoint directory with ``write(tmp)`` into a hidden sibling of its own name, then
    rename it into place: readers see the old checkpoint or the whole new one, and a kill at any
    moment leaves one of them (the old one moved aside is put back by the next reader)."""
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    with _publish_lock(parent):
        _tidy(parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
        try:
            os.chmod(tmp, 0o777 & ~umask())  # mkdtemp's 0700 would hide it from the pods' other users
            write(tmp)
            old = parent / f".{final.name}.old-{tmp.name.rsplit('-', 1)[-1]}"
            if final.exists():
                os.rename(final, old)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)


def _numbered_dirs(parent: Path) -> list[Path]:
    """Children named ``samples_N`` / ``epoch_N``, ordered by N."""
    if not parent.is_dir():
        return []
    if any(_UNFINISHED.match(p.name) for p in parent.iterdir()):
        with _publish_lock(parent):
            _tidy(parent)
    found = [(int(m.group(2)), p) for p in parent.iterdir() if p.is_dir() and (m := _NUMBERED.match(p.name))]
    return [p for _, p in sorted(found)]


def keep_newest(ckpt_output_dir: str | Path, limit: int) -> list[Path]:
    """Remove all but the newest ``limit`` checkpoints and the newest ``limit`` full states
    (``save_total_limit``); returns what went. Only complete ones count: a checkpoint being written
    is hidden, and each directory is pruned under its publish lock, so none is removed mid-write;
    the newest full state, the one a retry resumes, is always kept."""
    removed = []
    for parent, newest_last in ((Path(ckpt_output_dir) / "hf_format", hf_checkpoints),
                                (Path(ckpt_output_dir) / "full_state", full_state_checkpoints)):
        older = newest_last(ckpt_output_dir)[:-limit]  # listed first: listing may take the lock itself
        if older:
            with _publish_lock(parent):
                for old in older:
                    shutil.rmtree(old, ignore_errors=True)
                    removed.append(old)
    return removed


def hf_checkpoints(ckpt_output_dir: str | Path) -> list[Path]:
    """HF-format checkpoints, oldest first; ``last_epoch`` (if any) counts as the newest."""
    hf_dir = Path(ckpt_output_dir) / "hf_format"
    found = _numbered_dirs(hf_dir)
    if (hf_dir / LAST_CHECKPOINT).is_dir():
        found.append(hf_dir / LAST_CHECKPOINT)
    return found


def full_state_checkpoints(ckpt_output_dir: str | Path) -> list[Path]:
    """Resumable states, oldest first: by the samples they have seen, since ``epoch_N`` and
    ``step_N`` count different things."""
    return sorted(_numbered_dirs(Path(ckpt_output_dir) / "full_state"), key=_samples_seen)


def full_state_snapshot(ckpt_output_dir: str | Path) -> dict[Path, int | None]:
    """Each full state with the modification time of its metadata: the directory as a run found it."""
    return {p: _mtime(p / FULL_STATE_METADATA) for p in full_state_checkpoints(ckpt_output_dir)}


def saved_since(ckpt_output_dir: str | Path, before: dict[Path, int | None]) -> list[Path]:
    """The full states saved, or saved again, since ``before`` (``full_state_snapshot``), oldest first."""
    return [p for p in full_state_checkpoints(ckpt_output_dir) if before.get(p, -1) != _mtime(p / FULL_STATE_METADATA)]


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _samples_seen(state_dir: Path) -> int:
    try:
        return int(json.loads((state_dir / FULL_STATE_METADATA).read_text(encoding="utf-8"))["samples_seen"])
    except (OSError, ValueError, KeyError, TypeError):  # unreadable: its place by name is all we know
        return -1


def step_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a metrics file that has a step: each training step's and each evaluation's
    (the hparams line and unparseable lines are skipped)."""
    if not path.is_file():
        return []
    records = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a killed run
                continue
            if isinstance(record, dict) and "step" in record:
                records.append(record)
    return records


def read_metrics(ckpt_output_dir: str | Path, metric: str = "avg_loss") -> list[dict[str, Any]]:
    """The records of ``metric`` by step: each training step's (``avg_loss``), or each evaluation's
    (``val_loss``)."""
    return [r for r in step_records(Path(ckpt_output_dir) / METRICS_FILE) if metric in r]


def summarize_metrics(records: list[dict[str, Any]], evaluations: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Small enough for XCom: where training ended, how the loss moved, and the newest ``val_loss``
    with its step, where the run evaluated."""
    if not records:
        return {}
    first, last = records[0], records[-1]
    summary = {
        "steps": last["step"],
        "epoch": last.get("epoch"),
        "samples_seen": last.get("samples_seen"),
        "first_loss": first["avg_loss"],
        "loss": last["avg_loss"],
        "min_loss": min(r["avg_loss"] for r in records),
    }
    if evaluations:
        summary |= {"val_loss": evaluations[-1]["val_loss"], "val_loss_step": evaluations[-1]["step"]}
    # dpo's last step: how far the chosen replies' reward is above the rejected ones', and how often
    summary |= {key: last[key] for key in ("rewards/margins", "rewards/accuracies") if key in last}
    return summary


def collect_result(ckpt_output_dir: str | Path) -> TrainingResult:
    records = step_records(Path(ckpt_output_dir) / METRICS_FILE)
    checkpoints = hf_checkpoints(ckpt_output_dir)
    newest = checkpoints[-1] if checkpoints else None
    merged = newest / MERGED_DIR if newest else None
    return TrainingResult(
        ckpt_output_dir=str(ckpt_output_dir),
        checkpoint=str(newest) if newest else None,
        checkpoints=[str(p) for p in checkpoints],
        full_state=[str(p) for p in full_state_checkpoints(ckpt_output_dir)],
        metrics=summarize_metrics([r for r in records if "avg_loss" in r], [r for r in records if "val_loss" in r]),
        adapter=bool(newest and (newest / ADAPTER_CONFIG).is_file()),
        merged_checkpoint=str(merged) if merged and merged.is_dir() else None,
    )
