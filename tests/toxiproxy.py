"""Toxiproxy (built by k8s-testenv/controlplane.sh), the tests' fault proxy: one server with one
proxy, on loopback, or inside the real node's network namespace on the node's IP."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
from loopback import free_port
from polling import wait_for

TOXIPROXY = Path(os.environ.get("TRAINING_HUB_K8S_CACHE", Path.home() / ".cache" / "training-hub-k8s")) / "bin" / "toxiproxy-server"


class Toxiproxy:
    """``name``: the proxy, listening on ``listen`` (a free loopback port by default) and
    forwarding to ``upstream``; ``netns``: run it in that network namespace, its API on ``host``."""

    def __init__(self, upstream: str, workdir: Path, name: str = "apiserver", host: str = "127.0.0.1",
                 netns: str | None = None, api_port: int | None = None, listen: str | None = None) -> None:
        port = api_port or free_port()
        command = [str(TOXIPROXY), "-host", host, "-port", str(port)]
        self.process = subprocess.Popen(["nsenter", f"--net={netns}", *command] if netns else command,
                                        stdout=(workdir / f"toxiproxy-{name}.log").open("w"), stderr=subprocess.STDOUT)
        self.name = name
        self.api = httpx.Client(base_url=f"http://{host}:{port}", timeout=10)
        wait_for(self._up, 30, "toxiproxy to listen")
        self.listen = listen or f"127.0.0.1:{free_port()}"
        self.api.post("/proxies", json={"name": name, "listen": self.listen, "upstream": upstream}).raise_for_status()

    def _up(self) -> bool:
        try:
            return self.api.get("/version").status_code == 200
        except httpx.TransportError:
            return False

    def toxic(self, kind: str, stream: str = "downstream", **attributes: int) -> None:
        self.api.post(f"/proxies/{self.name}/toxics",
                      json={"name": kind, "type": kind, "stream": stream, "attributes": attributes}).raise_for_status()

    def clear(self, kind: str) -> None:
        self.api.delete(f"/proxies/{self.name}/toxics/{kind}").raise_for_status()

    def enabled(self, on: bool) -> None:
        self.api.post(f"/proxies/{self.name}", json={"enabled": on}).raise_for_status()

    def stop(self) -> None:
        self.api.close()
        self.process.terminate()
        self.process.wait(timeout=10)
