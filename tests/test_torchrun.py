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


# training_hub 0.11.2's rules for master_addr / master_port against rdzv_endpoint.
@pytest.mark.parametrize(
    ("params", "env", "expected"),
    [
        ({"master_addr": "m0", "master_port": 23456}, {}, (None, "m0", 23456)),
        ({"master_addr": "m0"}, {"MASTER_PORT": "1234"}, (None, "m0", 1234)),  # the port may come from the env
        ({}, {"MASTER_ADDR": "m1", "MASTER_PORT": "99"}, (None, "m1", 99)),  # torchrun's plain names too
        ({}, {"PET_MASTER_ADDR": "m1", "MASTER_ADDR": "m1"}, (None, "m1", None)),  # both, agreeing
        ({"master_port": 5}, {}, (None, None, None)),  # a port alone means nothing
        ({"master_addr": "m0"}, {"PET_RDZV_ENDPOINT": "j-0.j:29500"}, (None, "m0", None)),  # parameter beats env
        ({"rdzv_endpoint": "h:1"}, {"PET_MASTER_ADDR": "m1", "PET_MASTER_PORT": "7"}, ("h:1", None, None)),
    ],
)
def test_master_addr_precedence(params, env, expected):
    spec = resolve_torchrun(_params(**params), 1, env=env)
    assert (spec.rdzv_endpoint, spec.master_addr, spec.master_port) == expected


def test_master_addr_with_port_reaches_torchrun():
    args = resolve_torchrun(_params(master_addr="m0", master_port=23456, nnodes=2, node_rank=1), 1, env={}).launcher_args()
    assert ["--master-addr=m0", "--rdzv-backend=static", "--master-port=23456"] == args[-3:]


@pytest.mark.parametrize(
    ("params", "env", "message"),
    [
        ({"master_addr": "m0", "rdzv_endpoint": "h:1"}, {}, r"master_addr \('m0'\) and rdzv_endpoint \('h:1'\) are both set"),
        ({}, {"PET_MASTER_ADDR": "m0", "PET_RDZV_ENDPOINT": "h:1"}, r"PET_MASTER_ADDR='m0' and PET_RDZV_ENDPOINT='h:1' are both set"),
        ({}, {"PET_MASTER_ADDR": "a", "MASTER_ADDR": "b"}, r"Conflicting environment variables: PET_MASTER_ADDR='a' and MASTER_ADDR='b'"),
        ({"master_addr": "m0"}, {"PET_MASTER_PORT": "x"}, r"PET_MASTER_PORT must be an integer, got 'x'"),
        ({"master_port": 70000}, {}, r"'master_port': must be at most 65535"),
    ],
)
def test_master_addr_conflicts_are_errors(params, env, message):
    with pytest.raises(ValueError, match=message):
        resolve_torchrun(_params(**params), 1, env=env)


def test_master_addr_over_environment_endpoint_warns(caplog):
    resolve_torchrun(_params(master_addr="m0"), 1, env={"PET_RDZV_ENDPOINT": "j-0.j:29500"})
    assert "using master_addr, ignoring PET_RDZV_ENDPOINT" in caplog.text


@pytest.mark.parametrize(("value", "expected"), [(2, 2), ("3", 3), (" 4 ", 4)])
def test_nproc_per_node_numbers(value, expected):
    assert resolve_torchrun(_params(nproc_per_node=value), 1, env={}).nproc_per_node == expected


@pytest.mark.parametrize("value", ["auto", "GPU"])
def test_nproc_per_node_keywords_need_cuda(value):
    """This machine has no GPU (the CUDA case is benchmarks/gpu/'s)."""
    assert SFTParams.parse({"model_path": "m", "data_path": "d", "ckpt_output_dir": "c", "nproc_per_node": value})
    with pytest.raises(ValueError, match=rf"nproc_per_node='{value.lower()}' needs CUDA GPUs and this machine has none"):
        resolve_torchrun(_params(nproc_per_node=value), 1, env={})


@pytest.mark.parametrize("value", ["x", 0, -1, True, 1.5, "cpu"])
def test_nproc_per_node_refuses_what_training_hub_refuses(value):
    with pytest.raises(ValueError, match=r"nproc_per_node must be 'auto', 'gpu' or an integer >= 1, got "):
        _params(nproc_per_node=value)
