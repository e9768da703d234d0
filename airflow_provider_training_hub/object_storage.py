"""Models, data and checkpoints in object storage (``s3://``, or any fsspec URI whose library is
installed), for clusters with no volume that the Airflow worker and every training pod share.

Training never works on the bucket itself: inputs are downloaded to a local scratch, checkpoints
are written there as on a disk, and each one is then uploaded whole with ``MARKER`` written last
(training_hub's ``.upload_complete``). A checkpoint without its marker is a killed upload: readers
and the resume ignore it, and the next upload of that name replaces it.

Credentials never travel in a URI: a process finds them where fsspec's library looks (for S3, the
``AWS_*`` variables, a pod's Secret through ``envFrom``, an instance role), or, in an Airflow task,
``storage_options`` (``connection_options``) made from an Airflow connection.

This module imports no Airflow.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

MARKER = ".upload_complete"  # training_hub's name for the completion marker of an uploaded checkpoint
PROTOCOL_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


def is_remote(path: str | os.PathLike[str] | None) -> bool:
    """Whether ``path`` is a URI of object storage (not a local path, nor ``file://``)."""
    if path is None:
        return False
    scheme = urlsplit(str(path)).scheme
    return len(scheme) > 1 and scheme not in ("file", "local")


def check_uri(name: str, uri: str) -> str:
    """``ValueError`` for a URI that carries credentials or no bucket: what a parameter may hold."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        raise ValueError(f"{name} {uri!r} carries credentials: give the bucket's URI alone "
                         f"({parts.scheme}://{parts.hostname}{parts.path}) and its credentials in the storage "
                         "connection, or in the pods' storage_secret")
    if not parts.netloc:
        raise ValueError(f"{name} {uri!r} names no bucket ({parts.scheme}://<bucket>/<path>)")
    return uri.rstrip("/")


def filesystem(uri: str) -> tuple[Any, str]:
    """fsspec's filesystem for ``uri`` and the path in it, with nothing under it from a cached
    listing; ``ValueError`` naming the package a protocol needs where it is not installed."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except ImportError as exc:
        protocol = urlsplit(uri).scheme
        package = PROTOCOL_PACKAGES.get(protocol, f"the fsspec implementation of {protocol}://")
        raise ValueError(f"{uri!r}: reading {protocol}:// needs {package} installed here ({exc})") from None
    except ValueError as exc:  # fsspec: "Protocol not known"
        raise ValueError(f"{uri!r}: {exc}") from None
    # fsspec shares one instance per process, with the listings it has seen: another process
    # (a pod, a later try) may have uploaded or removed a checkpoint since.
    fs.invalidate_cache()  # all of it: s3fs forgets a path's parents, not its children
    return fs, path


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def failure(exc: BaseException) -> str:
    """A storage client's exception in one line, for a message: botocore's run to many."""
    reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    return f"{type(exc).__name__}: {reason}"


def refused(name: str, uri: str, exc: BaseException) -> ValueError:
    """What a bucket's refusal means, for the log: most often credentials that do not open it."""
    return ValueError(f"{name} {uri!r}: the storage refused access ({failure(exc)}). Check the "
                      "credentials of the storage connection (storage_conn_id) or the pods' storage_secret, and that "
                      "they may read and write this bucket")


def check_readable(name: str, uri: str, *, directory_file: str | None = None) -> None:
    """``ValueError`` unless ``uri`` (or ``uri/<directory_file>``) exists and these credentials
    read it: what a task checks before any pod or process starts."""
    fs, path = filesystem(uri)
    target = f"{path}/{directory_file}" if directory_file else path
    try:
        found = fs.exists(target)
    except Exception as exc:  # PermissionError, and botocore's own (NoCredentialsError, EndpointConnectionError)
        raise refused(name, uri, exc) from None
    if not found:
        what = f"has no {directory_file}" if directory_file else "does not exist"
        raise ValueError(f"{name} {uri!r} {what}")


def check_writable(name: str, uri: str) -> None:
    """``ValueError`` unless these credentials may write under ``uri``: one small object written
    and removed."""
    fs, path = filesystem(uri)
    probe = f"{path}/.training-hub-write-check"
    try:
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except Exception as exc:  # PermissionError, botocore's errors: all mean "cannot write here"
        raise refused(name, uri, exc) from None


def download(uri: str, local: Path) -> Path:
    """``uri`` (a file, or a directory's objects) to ``local``, whole or not at all: it arrives
    beside ``local`` and is renamed into place."""
    fs, path = filesystem(uri)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{local.name}.", dir=local.parent))
    try:
        if fs.isdir(path):
            fs.get(f"{path.rstrip('/')}/", str(tmp / "d") + "/", recursive=True)
        else:
            fs.get_file(path, str(tmp / "d"))
        if local.is_dir():
            shutil.rmtree(local)
        os.rename(tmp / "d", local)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return local


def upload_whole(local_dir: Path, uri: str, info: dict[str, Any] | None = None) -> None:
    """``local_dir``'s files to ``uri``, then ``MARKER`` last: until the marker is there, readers
    take the checkpoint for a killed upload. An earlier upload of the name loses its marker first,
    so a reader never trusts a mix of two."""
    fs, path = filesystem(uri)
    marker = f"{path}/{MARKER}"
    if fs.exists(marker):
        fs.rm_file(marker)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    for file in files:
        fs.put_file(str(file), f"{path}/{file.relative_to(local_dir).as_posix()}")
    fs.pipe_file(marker, json.dumps({"files": len(files), **(info or {})}).encode())


def complete_children(uri: str) -> list[str]:
    """The names of ``uri``'s sub-directories that hold ``MARKER`` (checkpoints uploaded whole)."""
    fs, path = filesystem(uri)
    try:
        markers = fs.glob(f"{path.rstrip('/')}/*/{MARKER}")
    except FileNotFoundError:
        return []
    return sorted(m.rstrip("/").split("/")[-2] for m in markers)


def move(uri: str, to: str) -> None:
    """Every object under ``uri`` to the same place under ``to`` (copied, then removed: object
    storage has no rename), markers copied last and removed first."""
    fs, path = filesystem(uri)
    _, target = filesystem(to)
    if fs.isfile(path):
        fs.copy(path, target)
        fs.rm_file(path)
        return
    files = sorted(fs.find(path), key=lambda p: p.endswith(f"/{MARKER}"))
    for file in files:
        fs.copy(file, f"{target}/{file[len(path):].lstrip('/')}")
    for file in reversed(files):
        fs.rm_file(file)


def remove(uri: str) -> None:
    """``uri`` and everything under it; its marker first, so that a kill half-way leaves an
    incomplete checkpoint rather than a complete-looking part of one."""
    fs, path = filesystem(uri)
    if fs.exists(f"{path}/{MARKER}"):
        fs.rm_file(f"{path}/{MARKER}")
    if fs.exists(path):
        fs.rm(path, recursive=True)


def aws_environment(access_key: str | None, secret: str | None, extra: dict[str, Any]) -> dict[str, str]:
    """An AWS connection's credentials (login, password and extra, as Airflow's Amazon provider
    reads them) as the ``AWS_*`` variables every S3 client reads: for a training process."""
    values = {
        "AWS_ACCESS_KEY_ID": access_key or extra.get("aws_access_key_id"),
        "AWS_SECRET_ACCESS_KEY": secret or extra.get("aws_secret_access_key"),
        "AWS_SESSION_TOKEN": extra.get("aws_session_token"),
        "AWS_ENDPOINT_URL": extra.get("endpoint_url") or (extra.get("service_config") or {}).get("s3", {}).get("endpoint_url"),
        "AWS_DEFAULT_REGION": extra.get("region_name"),
    }
    return {name: str(value) for name, value in values.items() if value}


def s3_options(environment: dict[str, str]) -> dict[str, Any]:
    """The same credentials as s3fs's options, for this process's own reads (``connection_options``)."""
    client = {"endpoint_url": environment.get("AWS_ENDPOINT_URL"), "region_name": environment.get("AWS_DEFAULT_REGION")}
    options: dict[str, Any] = {"key": environment.get("AWS_ACCESS_KEY_ID"), "secret": environment.get("AWS_SECRET_ACCESS_KEY"),
                               "token": environment.get("AWS_SESSION_TOKEN"),
                               "client_kwargs": {k: v for k, v in client.items() if v}}
    return {k: v for k, v in options.items() if v}


@contextmanager
def connection_options(protocol: str, options: dict[str, Any]) -> Iterator[None]:
    """fsspec's defaults for ``protocol`` in this process (``fsspec.config.conf``), while the block
    runs: every filesystem fsspec makes for it, in any module, uses these credentials."""
    import fsspec.config

    before = fsspec.config.conf.get(protocol)
    fsspec.config.conf[protocol] = {**(before or {}), **options}
    try:
        yield
    finally:
        if before is None:
            fsspec.config.conf.pop(protocol, None)
        else:
            fsspec.config.conf[protocol] = before
