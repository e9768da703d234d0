"""Resolving the torchrun launch: arguments > ``PET_*`` environment > single-node defaults.

Kubeflow's PyTorchJob and torchrun itself use ``PET_<FLAG>`` variables; our Kubernetes Job sets
the same ones, so a pod's command line never needs to know its own rank.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from airflow_provider_training_hub.algorithms.sft import SFTParams, check_host_port

DEFAULT_RDZV_ID = "training-hub"
NPROC_KEYWORDS = ("gpu", "cpu", "auto")


@dataclass(frozen=True)
class TorchrunSpec:
    nproc_per_node: int | str
    nnodes: int
    node_rank: int
    rdzv_id: str | int
    rdzv_endpoint: str | None = None
    master_addr: str | None = None
    master_port: int | None = None

    def launcher_args(self) -> list[str]:
        """torchrun's flags for this spec, as instructlab's ``run_training`` builds them."""
        args = [
            f"--nproc-per-node={self.nproc_per_node}",
            f"--nnodes={self.nnodes}",
            f"--node-rank={self.node_rank}",
            f"--rdzv-id={self.rdzv_id}",
        ]
        if self.master_addr:
            args += [f"--master-addr={self.master_addr}", "--rdzv-backend=static"]
            args += [f"--master-port={self.master_port}"] if self.master_port else []
        elif self.rdzv_endpoint:
            # torchrun's default (static) rendezvous honours --node-rank, so global rank 0 is on
            # node 0 (the pod that reports the result); c10d would assign ranks by arrival.
            args += [f"--rdzv-endpoint={self.rdzv_endpoint}"]
        else:
            args += ["--standalone"]
        return args


def _env_int(env: Mapping[str, str], name: str, minimum: int) -> int | None:
    raw = env.get(name)
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"Environment variable {name} must be an integer, got {raw!r}.") from None
    if value < minimum:
        raise ValueError(f"Environment variable {name} must be >= {minimum}, got {value}.")
    return value


def resolve_torchrun(
    params: SFTParams, default_nproc_per_node: int | str, env: Mapping[str, str] | None = None
) -> TorchrunSpec:
    """The launch this process should make; a ``ValueError`` names the argument or variable at fault."""
    env = os.environ if env is None else env

    def pick(param_value, env_value, default):
        return next((v for v in (param_value, env_value) if v not in (None, "")), default)

    nnodes = pick(params.nnodes, _env_int(env, "PET_NNODES", 1), 1)
    node_rank = pick(params.node_rank, _env_int(env, "PET_NODE_RANK", 0), 0)
    env_nproc = env.get("PET_NPROC_PER_NODE")
    if env_nproc not in NPROC_KEYWORDS:  # torchrun also accepts 'gpu', 'cpu' and 'auto' here
        env_nproc = _env_int(env, "PET_NPROC_PER_NODE", 1)
    nproc = pick(params.nproc_per_node, env_nproc, default_nproc_per_node)
    rdzv_id = pick(params.rdzv_id, env.get("PET_RDZV_ID"), DEFAULT_RDZV_ID)
    endpoint = pick(params.rdzv_endpoint, env.get("PET_RDZV_ENDPOINT"), None)
    if endpoint and not params.rdzv_endpoint:
        check_host_port("PET_RDZV_ENDPOINT", endpoint)
    master_addr = None if endpoint else env.get("PET_MASTER_ADDR") or None
    master_port = _env_int(env, "PET_MASTER_PORT", 1) if master_addr else None

    if node_rank >= nnodes:
        raise ValueError(f"node_rank ({node_rank}) must be in [0, nnodes) = [0, {nnodes}).")
    if nnodes > 1 and not (endpoint or master_addr):
        raise ValueError(
            f"nnodes={nnodes} needs rdzv_endpoint ('host:port' of the node with rank 0) "
            "or PET_RDZV_ENDPOINT / PET_MASTER_ADDR in the environment."
        )
    return TorchrunSpec(nproc, nnodes, node_rank, rdzv_id, endpoint, master_addr, master_port)


@contextmanager
def interpreter_bin_on_path() -> Iterator[None]:
    """Let a bare ``torchrun`` resolve to this interpreter's environment even when it is not activated.

    The directory is appended, not prepended, so an explicit ``torchrun`` earlier on PATH wins.
    """
    bin_dir = os.path.dirname(sys.executable)
    old = os.environ.get("PATH", "")
    if bin_dir in old.split(os.pathsep):
        yield
        return
    os.environ["PATH"] = os.pathsep.join(filter(None, [old, bin_dir]))
    try:
        yield
    finally:
        os.environ["PATH"] = old
