"""Torchrun parameters: arguments > PET_* environment (as Kubeflow sets it) > single-node defaults."""

import pytest

from airflow_provider_training_hub.algorithms import SFTParams
from airflow_provider_training_hub.algorithms.torchrun import TorchrunSpec, resolve_torchrun


def _params(**kw):
    return SFTParams.parse({"model_path": "m", "data_path": "d", "ckpt_output_dir": "c", **kw})


def test_defaults_are_single_node():
    assert resolve_torchrun(_params(), 1, env={}) == TorchrunSpec(1, 1, 0, "training-hub")


def test_environment_fills_gaps_and_arguments_win():
    env = {"PET_NNODES": "4", "PET_NODE_RANK": "3", "PET_NPROC_PER_NODE": "8",
           "PET_RDZV_ID": "job-x", "PET_RDZV_ENDPOINT": "job-x-0.job-x:29500"}
    assert resolve_torchrun(_params(), 1, env=env) == TorchrunSpec(8, 4, 3, "job-x", "job-x-0.job-x:29500")
    spec = resolve_torchrun(_params(nnodes=2, node_rank=1, nproc_per_node=2, rdzv_id=9, rdzv_endpoint="h:1"), 1, env=env)
    assert spec == TorchrunSpec(2, 2, 1, 9, "h:1")


def test_master_addr_style_environment():
    env = {"PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "m0", "PET_MASTER_PORT": "23456"}
    spec = resolve_torchrun(_params(), 1, env=env)
    assert (spec.master_addr, spec.master_port, spec.rdzv_endpoint) == ("m0", 23456, None)
    assert "--rdzv-backend=static" in spec.launcher_args()


def test_keyword_nproc_from_environment():
    assert resolve_torchrun(_params(), 1, env={"PET_NPROC_PER_NODE": "gpu"}).nproc_per_node == "gpu"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PET_NNODES": "two"}, r"PET_NNODES must be an integer, got 'two'"),
        ({"PET_NNODES": "0"}, r"PET_NNODES must be >= 1"),
        ({"PET_NNODES": "2", "PET_NODE_RANK": "2", "PET_RDZV_ENDPOINT": "h:1"}, r"node_rank \(2\) must be in \[0, nnodes\)"),
        ({"PET_NNODES": "2"}, r"nnodes=2 needs rdzv_endpoint"),
        ({"PET_RDZV_ENDPOINT": "nohost"}, r"PET_RDZV_ENDPOINT must be 'host:port'"),
    ],
)
def test_bad_environment_is_named(env, message):
    with pytest.raises(ValueError, match=message):
        resolve_torchrun(_params(), 1, env=env)


def test_launcher_args():
    assert TorchrunSpec(2, 1, 0, "r").launcher_args()[-1] == "--standalone"
    assert TorchrunSpec(2, 2, 1, "r", "h:1").launcher_args()[-2:] == ["--rdzv-id=r", "--rdzv-endpoint=h:1"]
