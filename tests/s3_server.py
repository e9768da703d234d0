"""A real S3-compatible server for the object storage tests: SeaweedFS's ``weed server -s3``
(master, volume, filer and S3 gateway in one process), built by ``k8s-testenv/real-node.sh
binaries`` into the test beds' cache.

On loopback for the tests' own processes; for pods, inside the real node's network namespace (the
test bed made it), where this host reaches it at the node's IP and the pods at their bridge's.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from loopback import free_port
from polling import wait_for

REPO = Path(__file__).resolve().parents[1]
GRPC_OFFSET = 10000  # weed's gRPC port of each service: its HTTP port + 10000
WARM_UP = "training-hub-warm-up"


def weed_binary() -> Path:
    cache = Path(os.environ.get("TRAINING_HUB_K8S_CACHE", Path.home() / ".cache" / "training-hub-k8s"))
    binary = cache / "bin" / "weed"
    if not binary.exists():  # CI builds it beforehand; a developer's first run builds it here
        subprocess.run(["bash", str(REPO / "k8s-testenv" / "real-node.sh"), "binaries"], check=True, timeout=1800)
    return binary


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str

    @property
    def environment(self) -> dict[str, str]:
        """What a process needs to reach it: the variables every S3 client reads."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(key=self.access_key, secret=self.secret_key, skip_instance_cache=True,
                                 client_kwargs={"endpoint_url": self.endpoint, "region_name": "us-east-1"})

    def airflow_connection(self, secret_key: str | None = None) -> str:
        """An ``aws`` Airflow connection to it, as ``AIRFLOW_CONN_*`` takes it (a wrong secret on demand)."""
        return json.dumps({"conn_type": "aws", "login": self.access_key, "password": secret_key or self.secret_key,
                           "extra": {"endpoint_url": self.endpoint, "region_name": "us-east-1"}})


def _ports(fixed: bool) -> dict[str, int]:
    if fixed:  # in the node's namespace, nothing else listens on these
        return {"master": 19333, "volume": 18080, "filer": 18888, "s3": 18333}
    ports: dict[str, int] = {}
    while len(ports) < 4:
        port = free_port()
        if port + GRPC_OFFSET < 65536 and port not in ports.values():
            ports[("master", "volume", "filer", "s3")[len(ports)]] = port
    return ports


def _ready(endpoint: str, server: subprocess.Popen, log: Path) -> bool:
    if server.poll() is not None:
        raise RuntimeError(f"weed server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
    try:
        with urllib.request.urlopen(f"{endpoint}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def started_s3_server(work: Path, ip: str = "127.0.0.1", netns: str | None = None) -> Iterator[S3Server]:
    """The server, with one identity allowed everything, at ``ip``; stopped (its process group) at
    the end. In ``netns`` it listens on every address of that namespace (pods reach the node's
    namespace only at their bridge's address)."""
    work.mkdir(parents=True, exist_ok=True)
    server = S3Server(f"http://{ip}:0", "thub" + secrets.token_hex(4), secrets.token_hex(16))
    (work / "s3.json").write_text(json.dumps({"identities": [{
        "name": "trainer", "credentials": [{"accessKey": server.access_key, "secretKey": server.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    ports = _ports(fixed=netns is not None)
    endpoint = f"http://{ip}:{ports['s3']}"
    bind = "0.0.0.0" if netns else ip
    command = [str(weed_binary()), "server", f"-dir={work / 'data'}", f"-ip={ip}", f"-ip.bind={bind}",
               f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
               "-s3", f"-s3.port={ports['s3']}", f"-s3.config={work / 's3.json'}", "-s3.port.iceberg=0",
               "-s3.port.lance=0", "-volume.max=0", "-master.volumeSizeLimitMB=64"]
    if netns is not None:
        command = ["nsenter", f"--net={netns}", *command]
    (work / "data").mkdir(exist_ok=True)
    log = work / "weed.log"
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: _ready(endpoint, process, log), 60, f"the S3 server at {endpoint}")
        ready = S3Server(endpoint, server.access_key, server.secret_key)
        fs = ready.filesystem()
        fs.mkdir(WARM_UP)
        fs.pipe_file(f"{WARM_UP}/first", b"")  # the first write grows the volumes (about 8 s), once
        yield ready
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # its data is the test's, thrown away
        process.wait()
