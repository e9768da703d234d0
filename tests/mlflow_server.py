"""A real MLflow tracking server for the tests: ``mlflow server`` with a SQLite store, on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loopback import free_port
from polling import wait_for


def _healthy(uri: str, server: subprocess.Popen, log: Path) -> bool:
    if server.poll() is not None:
        raise RuntimeError(f"mlflow server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def started_mlflow_server(work: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """The server's URI and process; stopped at the end by its process group (the server, its
    uvicorn worker and its job consumers)."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = work / "server.log"
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{work}/mlflow.db",
         "--artifacts-destination", str(work / "artifacts")],
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for(lambda: _healthy(uri, server, log), 120, "the MLflow server", interval=0.5)
        yield uri, server
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
