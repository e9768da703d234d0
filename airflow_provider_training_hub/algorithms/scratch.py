"""A run whose model, data or ``ckpt_output_dir`` are in object storage trains on a local scratch.

Before training, each node downloads the remote inputs, the run's identity and metrics, and the
newest full state uploaded whole (``object_storage.MARKER``): a retry resumes there, whichever
node or pod it lands on, and never from a half-uploaded one. While training, ``CheckpointMirror``
uploads each new checkpoint and full state once it has settled, marker last, and removes from the
bucket what the run removed (``save_total_limit``). When training ends, stopped or failed too, a
last pass uploads what is left: a state saved at SIGTERM is not lost with the pod.

The scratch is ``$TRAINING_HUB_SCRATCH`` (a pod's size-limited ``emptyDir``), else the system's
temporary directory; a run's part of it is removed when the run ends.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from airflow_provider_training_hub import object_storage
from airflow_provider_training_hub.algorithms.errors import TrainingFailedError
from airflow_provider_training_hub.checkpoints import (
    ADAPTER_CONFIG,
    FULL_STATE_METADATA,
    LAST_CHECKPOINT,
    MERGED_DIR,
    METRICS_FILE,
    TrainingResult,
    full_state_checkpoints,
    hf_checkpoints,
)
from airflow_provider_training_hub.run_identity import IDENTITY_FILE, RUN_OUTPUTS, SUPERSEDED_DIR, claim

SCRATCH_ENV = "TRAINING_HUB_SCRATCH"
UPLOAD_SECONDS = 5.0  # how often the mirror looks for settled checkpoints
INPUTS = ("model_path", "data_path", "eval_data_path")
REMOTE_CAPABLE = (*INPUTS, "ckpt_output_dir", "checkpoint_storage")  # the parameters that may name object storage

log = logging.getLogger(__name__)


def scratch_root() -> Path:
    return Path(os.environ.get(SCRATCH_ENV) or tempfile.gettempdir()) / "training-hub-scratch"


def _signature(path: Path) -> tuple[tuple[str, int, int], ...]:
    """What a checkpoint directory holds now: equal twice in a row, it has settled (a writer that
    publishes by rename settles at once; one that writes in place, once it is done)."""
    return tuple(sorted((p.relative_to(path).as_posix(), s.st_size, s.st_mtime_ns)
                        for p in path.rglob("*") if p.is_file() and (s := p.stat())))


def _number(name: str) -> int:
    return int(name.rsplit("_", 1)[1]) if name.rsplit("_", 1)[-1].isdigit() else -1


class CheckpointMirror:
    """Keeps ``uri`` (the run's ``ckpt_output_dir``) up to date with ``local``, its scratch copy."""

    def __init__(self, uri: str, local: Path) -> None:
        self.uri = uri
        self.local = local
        self._uploaded: dict[str, Any] = {}  # relative path -> the signature it was uploaded with
        self._seen: dict[str, Any] = {}  # relative path -> its signature at the last pass
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.failed = False  # the last pass failed: the scratch holds what the bucket may lack

    def restore(self) -> None:
        """The run's files as the bucket has them: identity, metrics, the newest complete full state."""
        fs, path = object_storage.filesystem(self.uri)
        self.local.mkdir(parents=True, exist_ok=True)
        for name in (IDENTITY_FILE, METRICS_FILE):
            if fs.exists(f"{path}/{name}"):
                fs.get_file(f"{path}/{name}", str(self.local / name))
                self._uploaded[name] = self._seen[name] = self._file_signature(self.local / name)
        states = {name: self._samples_seen(fs, f"{path}/full_state/{name}")
                  for name in object_storage.complete_children(object_storage.join(self.uri, "full_state"))}
        for name in object_storage.complete_children(object_storage.join(self.uri, "hf_format")):
            self._uploaded[f"hf_format/{name}"] = None  # in the bucket: kept, not downloaded
        for name in states:
            self._uploaded[f"full_state/{name}"] = None
        if states:
            newest = max(states, key=lambda n: (states[n], _number(n)))
            target = self.local / "full_state" / newest
            object_storage.download(object_storage.join(self.uri, "full_state", newest), target)
            (target / object_storage.MARKER).unlink(missing_ok=True)
            self._uploaded[f"full_state/{newest}"] = self._seen[f"full_state/{newest}"] = _signature(target)
            log.info("resuming from %s/full_state/%s (uploaded whole)", self.uri, newest)

    def claim(self, algorithm: str, params: Any) -> None:
        """``run_identity.claim`` on the scratch (which holds the bucket's identity), worded with the
        bucket's URI; where the claim took the directory over from another run, the bucket's files
        of that run move aside too (``superseded/``), so that none of them is taken for this run's."""
        before = self._identity()
        try:
            claim(algorithm, params)
        except ValueError as exc:
            raise ValueError(str(exc).replace(str(self.local), self.uri)) from None
        if before is None or self._identity() == before:
            return
        fs, path = object_storage.filesystem(self.uri)
        aside = f"{self.uri}/{SUPERSEDED_DIR}/{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S.%fZ')}"
        for name in RUN_OUTPUTS:
            if name != IDENTITY_FILE and fs.exists(f"{path}/{name}"):
                object_storage.move(object_storage.join(self.uri, name), f"{aside}/{name}")
                log.warning("%s/%s belonged to another run: moved to %s", self.uri, name, aside)
        self._uploaded = {k: v for k, v in self._uploaded.items() if k == IDENTITY_FILE}

    def _identity(self) -> bytes | None:
        try:
            return (self.local / IDENTITY_FILE).read_bytes()
        except FileNotFoundError:
            return None

    @staticmethod
    def _samples_seen(fs: Any, state: str) -> int:
        try:
            return int(json.loads(fs.cat_file(f"{state}/{FULL_STATE_METADATA}"))["samples_seen"])
        except (OSError, ValueError, KeyError, TypeError):
            return -1

    @staticmethod
    def _file_signature(path: Path) -> tuple[int, int] | None:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        return stat.st_size, stat.st_mtime_ns

    def sync(self, final: bool = False) -> None:
        """One pass: upload what settled since the last one (everything, when ``final``), remove
        from the bucket what the run removed."""
        with self._lock:
            present = {}
            for directory in [*hf_checkpoints(self.local), *full_state_checkpoints(self.local)]:
                present[directory.relative_to(self.local).as_posix()] = (directory, _signature(directory))
            for relative, (directory, signature) in present.items():
                settled = final or self._seen.get(relative) == signature
                self._seen[relative] = signature
                if settled and signature and self._uploaded.get(relative) != signature:
                    object_storage.upload_whole(directory, object_storage.join(self.uri, relative))
                    self._uploaded[relative] = signature
                    log.info("uploaded %s/%s", self.uri, relative)
            for relative in [r for r, s in self._uploaded.items() if "/" in r and s is not None and r not in present]:
                object_storage.remove(object_storage.join(self.uri, relative))
                del self._uploaded[relative]
                log.info("removed %s/%s, as the run removed it", self.uri, relative)
            fs, path = object_storage.filesystem(self.uri)
            for name in (IDENTITY_FILE, METRICS_FILE):
                signature = self._file_signature(self.local / name)
                if signature is not None and self._uploaded.get(name) != signature:
                    fs.put_file(str(self.local / name), f"{path}/{name}")
                    self._uploaded[name] = signature

    def _run(self) -> None:
        while not self._stop.wait(UPLOAD_SECONDS):
            try:
                self.sync()
            except Exception:  # the bucket failing must not stop training; the last pass tries again
                log.exception("uploading checkpoints to %s failed; trying again in %.0f s", self.uri, UPLOAD_SECONDS)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="checkpoint-mirror", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the background passes and make the last one, once. Where it fails, the run fails
        (``TrainingFailedError``, not a stale result from the bucket) and ``failed`` keeps the
        scratch: on this machine, what did not upload is not lost."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.sync(final=True)
        except Exception as exc:
            self.failed = True
            raise TrainingFailedError(
                f"uploading the checkpoints to {self.uri} failed ({object_storage.failure(exc)}); what did not "
                f"upload is kept in {self.local}. A retry resumes from the newest complete state in the bucket") from exc

    def remote_result(self, result: TrainingResult) -> TrainingResult:
        """``result`` as the bucket holds the run: its checkpoints and full states uploaded whole (an
        earlier try's too), the newest checkpoint among them; the metrics are the scratch's."""
        fs, path = object_storage.filesystem(self.uri)
        hf = object_storage.complete_children(object_storage.join(self.uri, "hf_format"))
        hf.sort(key=lambda n: (n == LAST_CHECKPOINT, _number(n)))
        states = object_storage.complete_children(object_storage.join(self.uri, "full_state"))
        states.sort(key=lambda n: (self._samples_seen(fs, f"{path}/full_state/{n}"), _number(n)))
        newest = object_storage.join(self.uri, "hf_format", hf[-1]) if hf else None
        merged = newest and object_storage.join(newest, MERGED_DIR)
        return replace(
            result, ckpt_output_dir=self.uri if self.local.is_relative_to(scratch_root()) else result.ckpt_output_dir,
            checkpoint=newest,
            checkpoints=[object_storage.join(self.uri, "hf_format", n) for n in hf],
            full_state=[object_storage.join(self.uri, "full_state", n) for n in states],
            adapter=bool(newest and fs.exists(f"{path}/hf_format/{hf[-1]}/{ADAPTER_CONFIG}")),
            merged_checkpoint=merged if merged and fs.exists(f"{path}/hf_format/{hf[-1]}/{MERGED_DIR}") else None,
        )


def _download_input(name: str, uri: str, into: Path) -> str:
    target = into / name
    log.info("downloading %s %s to %s", name, uri, target)
    object_storage.download(uri, target)
    if name != "model_path" and target.is_file():  # keep the name: its extension says the format
        named = into / f"{name}-{uri.rstrip('/').rsplit('/', 1)[-1]}"
        os.rename(target, named)
        return str(named)
    return str(target)


@contextmanager
def on_scratch(params: Any) -> Iterator[tuple[Any, CheckpointMirror | None]]:
    """``params`` with local paths for remote ones, and the mirror of a remote ``ckpt_output_dir``
    (started; the caller maps its result with ``remote_result``). Plain local runs pass through."""
    remote = [name for name in INPUTS if object_storage.is_remote(getattr(params, name, None))]
    uri = getattr(params, "checkpoint_uri", None)
    if not remote and uri is None:
        yield params, None
        return
    if object_storage.is_remote(getattr(params, "data_output_dir", None)):
        raise ValueError(f"data_output_dir {params.data_output_dir!r}: processed data is a run's scratch, on local disk; "
                         "leave data_output_dir unset")
    node = params.node_rank if params.node_rank is not None else os.environ.get("PET_NODE_RANK", "0")
    key = hashlib.sha256(json.dumps([getattr(params, n, None) for n in REMOTE_CAPABLE] + [str(node)]).encode())
    root = scratch_root() / key.hexdigest()[:16]
    inputs = root / "inputs"
    mirror = None
    try:
        local = {name: _download_input(name, getattr(params, name), inputs) for name in remote}
        if uri is not None:  # checkpoint_storage keeps the given ckpt_output_dir as the local copy
            on_disk = root / "ckpt" if uri == params.ckpt_output_dir else Path(params.ckpt_output_dir)
            mirror = CheckpointMirror(uri, on_disk)
            mirror.restore()
            local["ckpt_output_dir"] = str(on_disk)
        params = params.model_copy(update=local)
        if mirror is None:
            yield params, None
            return
        mirror.start()
        try:
            yield params, mirror
        finally:
            mirror.close()
    finally:
        if mirror is not None and mirror.failed:
            log.warning("kept the scratch %s: its checkpoints did not all upload", root)
        else:
            shutil.rmtree(root, ignore_errors=True)
