"""Resolving the torchrun launch: arguments > ``PET_*`` environment > single-node defaults.

Kubeflow's PyTorchJob and torchrun itself use ``PET_<FLAG>`` variables; our Kubernetes Job sets
the same ones, so a pod's command line never needs to know its own rank.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

from airflow_provider_training_hub.algorithms.node_env import as_int, env_int, node_rank, pick
from airflow_provider_training_hub.algorithms.training_params import TrainingParams, check_host_port

log = logging.getLogger(__name__)
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


def _env_pair(env: Mapping[str, str], name: str) -> tuple[str | None, str | None]:
    """``PET_<NAME>`` or ``<NAME>`` (torchrun reads both), and which one it came from; the two
    must agree where both are set."""
    pet, plain = env.get(f"PET_{name}") or None, env.get(name) or None
    if pet and plain and pet != plain:
        raise ValueError(f"Conflicting environment variables: PET_{name}={pet!r} and {name}={plain!r}; they must match.")
    return (pet, f"PET_{name}") if pet else (plain, name if plain else None)


def _rendezvous(params: TrainingParams, env: Mapping[str, str]) -> tuple[str | None, str | None, int | None]:
    """``(rdzv_endpoint, master_addr, master_port)``, at most one of the first two, as training_hub
    decides: a parameter beats the environment (with a warning naming what is ignored); both at
    the same level is an error (for parameters, the schema already refused it)."""
    endpoint, endpoint_from = (params.rdzv_endpoint, "rdzv_endpoint") if params.rdzv_endpoint else (
        env.get("PET_RDZV_ENDPOINT") or None, "PET_RDZV_ENDPOINT")
    if endpoint and not params.rdzv_endpoint:
        check_host_port("PET_RDZV_ENDPOINT", endpoint)
    addr, addr_from = (params.master_addr, "master_addr") if params.master_addr else _env_pair(env, "MASTER_ADDR")
    if addr and endpoint:
        addr_is_param, endpoint_is_param = addr_from == "master_addr", endpoint_from == "rdzv_endpoint"
        if addr_is_param == endpoint_is_param:
            raise ValueError(f"{addr_from}={addr!r} and {endpoint_from}={endpoint!r} are both set; give one.")
        winner, loser = (addr_from, endpoint_from) if addr_is_param else (endpoint_from, addr_from)
        log.warning("Both %s and %s are set; using %s, ignoring %s.", addr_from, endpoint_from, winner, loser)
        addr, endpoint = (addr, None) if addr_is_param else (None, endpoint)
    if not addr:
        return endpoint, None, None
    if params.master_port is not None:
        return None, addr, params.master_port
    port, port_from = _env_pair(env, "MASTER_PORT")
    return None, addr, as_int(port, port_from, 1) if port else None


def _nproc_keyword(value: str, source: str) -> str:
    """'auto' and 'gpu' mean one process per GPU, so they need one (training_hub's rule)."""
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"{source}={value!r} needs CUDA GPUs and this machine has none; give a number of processes.")
    return "gpu"


def resolve_torchrun(
    params: TrainingParams, default_nproc_per_node: int | str, env: Mapping[str, str] | None = None
) -> TorchrunSpec:
    """The launch this process should make; a ``ValueError`` names the argument or variable at fault."""
    env = os.environ if env is None else env

    nnodes = pick(params.nnodes, env_int(env, "PET_NNODES", 1), 1)
    rank = node_rank(params.node_rank, env)
    env_nproc = env.get("PET_NPROC_PER_NODE")
    if env_nproc not in NPROC_KEYWORDS:  # torchrun also accepts 'gpu', 'cpu' and 'auto' here
        env_nproc = env_int(env, "PET_NPROC_PER_NODE", 1)
    nproc = pick(params.nproc_per_node, env_nproc, default_nproc_per_node)
    if params.nproc_per_node in ("auto", "gpu"):
        nproc = _nproc_keyword(params.nproc_per_node, "nproc_per_node")
    rdzv_id = pick(params.rdzv_id, env.get("PET_RDZV_ID"), DEFAULT_RDZV_ID)
    endpoint, master_addr, master_port = _rendezvous(params, env)

    if rank >= nnodes:
        raise ValueError(f"node_rank ({rank}) must be in [0, nnodes) = [0, {nnodes}).")
    if nnodes > 1 and not (endpoint or master_addr):
        raise ValueError(
            f"nnodes={nnodes} needs rdzv_endpoint or master_addr (the node with rank 0), "
            "or PET_RDZV_ENDPOINT / PET_MASTER_ADDR in the environment."
        )
    return TorchrunSpec(nproc, nnodes, rank, rdzv_id, endpoint, master_addr, master_port)


@contextmanager
def environment_variable(variable: str, value: str) -> Iterator[None]:
    """``variable`` set to ``value`` while the block runs (processes started then inherit it), and as
    it was afterwards."""
    old = os.environ.get(variable)
    os.environ[variable] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[variable]
        else:
            os.environ[variable] = old


def path_entry(variable: str, entry: str, *, first: bool) -> AbstractContextManager[None]:
    """``entry`` in the ``os.pathsep``-separated ``variable`` while the block runs, at the front or
    the back; a variable that already has it is left alone."""
    old = os.environ.get(variable)
    if entry in (old or "").split(os.pathsep):
        return nullcontext()
    return environment_variable(variable, os.pathsep.join(filter(None, [entry, old] if first else [old, entry])))


def interpreter_bin_on_path() -> AbstractContextManager[None]:
    """Let a bare ``torchrun`` resolve to this interpreter's environment even when it is not activated.

    The directory is appended, not prepended, so an explicit ``torchrun`` earlier on PATH wins.
    """
    return path_entry("PATH", os.path.dirname(sys.executable), first=False)
