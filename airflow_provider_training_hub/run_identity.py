"""Which run a checkpoint directory belongs to, so that a resume never continues someone else's.

A run resumes from the newest full state in its ``ckpt_output_dir``. Without an identity, a
weekly retraining DAG with a fixed directory would "resume" last week's finished run, train
nothing, and publish last week's checkpoint as this week's. So the first run into a directory
records what makes its result (``run_identity.json``): the algorithm, the model's content, the
data's content, and every parameter except those that only say where or how often to write, or how
to spread the work (``RESULT_NEUTRAL`` of the schema). A later run compares itself with it before
any expensive work: the same run resumes; another one is refused, naming what differs, unless it
asks (``restart_changed_run``) to have the earlier run's files moved aside and to start afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from airflow_provider_training_hub.checkpoints import METRICS_FILE

IDENTITY_FILE = "run_identity.json"
SUPERSEDED_DIR = "superseded"
# What an earlier run leaves and a changed run must not reuse (``data/`` is prepared anew by every run).
RUN_OUTPUTS = ("hf_format", "full_state", METRICS_FILE, IDENTITY_FILE)
_SAMPLE = 1 << 16  # bytes read at the start, middle and end of a large model file
_CHUNK = 1 << 20

log = logging.getLogger(__name__)


def _file_digest(path: Path, sampled: bool) -> str:
    """SHA-256 of the file, or for ``sampled`` of its size and three 64 KiB samples: a model's
    weights differ everywhere between two trainings, and hashing 16 GB per try would not pay."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as f:
        if sampled and size > 3 * _SAMPLE:
            h.update(str(size).encode())
            for offset in (0, size // 2, size - _SAMPLE):
                f.seek(offset)
                h.update(f.read(_SAMPLE))
        else:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def _model_digest(model_path: str) -> str:
    """A local model directory by its files' names and contents; a Hub id by its name."""
    root = Path(model_path)
    if not root.is_dir():
        return f"hub:{model_path}"
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(f"{path.relative_to(root)}\0{_file_digest(path, sampled=True)}\0".encode())
    return h.hexdigest()


def _data_digest(data_path: str) -> str:
    if "://" in data_path:  # a remote file is known by its URI only
        return f"uri:{data_path}"
    return _file_digest(Path(data_path), sampled=False)


def run_identity(algorithm: str, params: Any) -> dict[str, Any]:
    """What makes this run's result, as plain JSON."""
    neutral = type(params).RESULT_NEUTRAL | {"model_path", "data_path"}
    return {
        "algorithm": algorithm,
        "model": _model_digest(params.model_path),
        "data": _data_digest(params.data_path),
        "parameters": params.model_dump(mode="json", exclude=set(neutral)),
    }


def differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``learning_rate 2e-05 then, 0.0001 now``, one item per difference (``unset`` for a
    parameter one side does not name)."""

    def shown(values: dict[str, Any], name: str) -> str:
        return repr(values[name]) if name in values else "unset"

    found = []
    for key, what in (("algorithm", "the algorithm"), ("model", "the model's files"), ("data", "the data's content")):
        if before.get(key) != now.get(key):
            found.append(f"{what} ({before.get(key)!s:.12} then, {now.get(key)!s:.12} now)")
    earlier, current = before.get("parameters") or {}, now.get("parameters") or {}
    for name in sorted(set(earlier) | set(current)):
        if earlier.get(name) != current.get(name):
            found.append(f"{name} {shown(earlier, name)} then, {shown(current, name)} now")
    return found


def _move_aside(out: Path, names: list[str]) -> Path:
    """The earlier run's files into ``superseded/<UTC time>/``: kept, but out of the way."""
    aside = out / SUPERSEDED_DIR / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    aside.mkdir(parents=True)
    for name in names:
        try:
            os.rename(out / name, aside / name)
        except FileNotFoundError:  # another node of this run moved it first
            pass
    return aside


def _as_recorded(before: dict[str, Any], now: dict[str, Any], params: Any) -> dict[str, Any]:
    """``now`` without the parameters a release added since ``before`` was recorded, where they
    keep their defaults (which reproduce what training did before they existed): an upgrade
    must not turn a retry into "another run"."""
    earlier, fields = before.get("parameters") or {}, type(params).model_fields
    current = {name: value for name, value in now["parameters"].items()
               if name in earlier or value != fields[name].default}
    return {**now, "parameters": current}


def claim(algorithm: str, params: Any) -> None:
    """Make ``ckpt_output_dir`` this run's, or raise ``ValueError`` if it holds another run's.

    A directory with no checkpoint and no full state has nothing to resume: a changed run takes it
    over (its leftover metrics moved aside). Every node of a multi-node run calls this; they all
    compute the same identity, so whoever writes first writes what the others find.
    """
    out = Path(params.ckpt_output_dir)
    now = run_identity(algorithm, params)
    record = out / IDENTITY_FILE
    try:
        before = json.loads(record.read_text(encoding="utf-8"))
    except FileNotFoundError:
        before = None
    except (OSError, ValueError) as exc:
        raise ValueError(f"ckpt_output_dir {str(out)!r}: {IDENTITY_FILE} is unreadable ({exc}); "
                         "move it away if the directory is yours") from None
    # compared, and any refusal worded, in the record's terms; written whole
    recorded_terms = _as_recorded(before, now, params) if before is not None else now
    if before == recorded_terms:
        return
    present = [name for name in RUN_OUTPUTS if (out / name).exists()]
    resumable = [name for name in present if name in ("hf_format", "full_state")]
    if resumable and not params.restart_changed_run:
        what = "; ".join(differences(before, recorded_terms)) if before else f"it has no {IDENTITY_FILE}, so its run is unknown"
        raise ValueError(
            f"ckpt_output_dir {str(out)!r} holds the checkpoints of another run: {what}. Resuming would return "
            "that run's model as this one's. Give this run its own ckpt_output_dir, or set "
            f"restart_changed_run=True to move the earlier run's files into {out / SUPERSEDED_DIR}/ and start afresh."
        )
    if set(present) - {IDENTITY_FILE}:
        aside = _move_aside(out, present)
        log.warning("ckpt_output_dir %s held another run's files; moved them to %s", out, aside)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{IDENTITY_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(now, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, record)
