"""Training Jobs of real pods with no PVC: the model, the data and the checkpoints in a real S3
server (SeaweedFS) that runs in the real node's network namespace, where this host reaches it at
the node's IP and the pods at their bridge's (they have no other route). The pods get its
credentials from a Secret (``storage_secret``); the Airflow task checks the bucket with the
`th_s3_node` Airflow connection before any Job.

GPU REPLACED as in test_real_pods.py: the pods request `nvidia.com/gpu`, and train on the CPU.
"""

from __future__ import annotations

import json
import os
import secrets

import pytest
from airflow_runs import finish, run_dag, start_in_subprocess, states, xcoms
from conftest import SAMPLE_DATA, wait_for
from kubernetes.client import ApiException
from s3_server import started_s3_server
from toxiproxy import Toxiproxy

from airflow_provider_training_hub import object_storage

pytestmark = [pytest.mark.k8s, pytest.mark.real_node, pytest.mark.object_storage,
              pytest.mark.usefixtures("airflow_db")]

PROXY_PORT = 18334  # in the node's namespace: the slow way to the S3 server, for the pods that upload slowly


@pytest.fixture(scope="session")
def node_s3(real_node, tmp_path_factory):
    """The S3 server in the node's namespace, and toxiproxy beside it (``proxy``) in front of it."""
    work = tmp_path_factory.mktemp("node-s3")
    with started_s3_server(work, ip=real_node["node_ip"], netns=real_node["netns"]) as server:
        proxy = Toxiproxy(server.endpoint.removeprefix("http://"), work, name="s3", host=real_node["node_ip"],
                          netns=real_node["netns"], api_port=18474, listen=f"{real_node['bridge_ip']}:{PROXY_PORT}")
        try:
            yield server, proxy
        finally:
            proxy.stop()


@pytest.fixture(scope="session")
def kube_api(real_node):
    from kubernetes import client, config

    api = config.new_client_from_config(real_node["kubeconfig"])
    return client.CoreV1Api(api), client.BatchV1Api(api)


@pytest.fixture
def bucket(node_s3, real_node, kube_api, tiny_model):
    """A fresh bucket with the tiny model and the data; the Secrets the pods read it with (direct
    and through the proxy), and the connections of the in-process Airflow."""
    server, _ = node_s3
    name = f"thub-pods-{secrets.token_hex(3)}"
    fs = server.filesystem()
    fs.mkdir(name)
    fs.put(f"{tiny_model}/", f"{name}/models/tiny/", recursive=True)
    fs.put_file(str(SAMPLE_DATA), f"{name}/data/train.jsonl")
    core, _ = kube_api
    direct = server.endpoint.replace(real_node["node_ip"], real_node["bridge_ip"])  # where pods reach it
    for secret, endpoint in (("s3-direct", direct), ("s3-slow", f"http://{real_node['bridge_ip']}:{PROXY_PORT}")):
        body = {"metadata": {"name": secret}, "stringData": {**server.environment, "AWS_ENDPOINT_URL": endpoint}}
        try:
            core.create_namespaced_secret(real_node["namespace"], body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            core.replace_namespaced_secret(secret, real_node["namespace"], body)
    os.environ["AIRFLOW_CONN_KUBERNETES_DEFAULT"] = json.dumps(
        {"conn_type": "kubernetes", "extra": {"kube_config_path": real_node["kubeconfig"]}})
    os.environ["AIRFLOW_CONN_TH_S3_NODE"] = server.airflow_connection()
    os.environ["AIRFLOW_CONN_TRAINING_HUB_S3_PODS"] = json.dumps({"conn_type": "training_hub", "extra": {
        "execution": "kubernetes", "namespace": real_node["namespace"], "image": real_node["training_image"],
        "node_selector": real_node["node_selector"], "cpu": "500m", "memory": "6Gi", "shm_size": "512Mi",
        "ephemeral_storage": "1Gi", "scratch_size": "2Gi", "termination_grace_period_seconds": 30,
        "storage_conn_id": "th_s3_node", "storage_secret": "s3-direct"}})
    return name


def _conf(bucket: str, run: str, **more) -> dict:
    return {"model_path": f"s3://{bucket}/models/tiny", "data_path": f"s3://{bucket}/data/train.jsonl",
            "ckpt_output_dir": f"s3://{bucket}/runs/{run}", **more}


def _jobs(kube_api, namespace: str, dag_id: str) -> list:
    return [j for j in kube_api[1].list_namespaced_job(namespace).items
            if (j.metadata.annotations or {}).get("training-hub/dag-id") == dag_id]


def test_a_dag_with_everything_in_s3_trains_two_pods_without_a_volume(node_s3, bucket, real_node, kube_api, tmp_path,
                                                                        capfd):
    import torch
    from transformers import AutoModelForCausalLM

    server, _ = node_s3
    run = run_dag("th_real_train_s3", _conf(bucket, "two-pods"))
    out = capfd.readouterr().out
    assert states(run) == {"train": "success"}, out[-5000:]
    got = xcoms(run)
    ckpt = f"s3://{bucket}/runs/two-pods"
    assert got[("train", "ckpt_output_dir")] == ckpt
    assert got[("train", "checkpoint")] == f"{ckpt}/hf_format/samples_96"
    assert got[("train", "full_state")] == [f"{ckpt}/full_state/epoch_0", f"{ckpt}/full_state/epoch_1"]

    (job,) = [j for j in _jobs(kube_api, real_node["namespace"], "th_real_train_s3")
              if j.metadata.name == got[("train", "job_name")]]
    pod = job.spec.template.spec
    assert not any(v.persistent_volume_claim for v in pod.volumes), "no PVC"
    assert [v.empty_dir.size_limit for v in pod.volumes if v.name == "scratch"] == ["2Gi"]
    assert [e.secret_ref.name for e in pod.containers[0].env_from] == ["s3-direct"]
    spec_text = json.dumps(kube_api[1].api_client.sanitize_for_serialization(job))
    assert server.secret_key not in spec_text and server.access_key not in spec_text  # by reference only
    assert "2 rank(s) on cpu" in out and "weights identical on all 2 rank(s)" in out

    with object_storage.connection_options("s3", object_storage.s3_options(server.environment)):
        local = object_storage.download(got[("train", "checkpoint")], tmp_path / "checkpoint")
    trained = AutoModelForCausalLM.from_pretrained(local, dtype=torch.float32)
    assert trained.config.model_type == "llama"


def test_credentials_the_bucket_refuses_fail_the_task_before_any_pod(node_s3, bucket, real_node, kube_api, capfd):
    server, _ = node_s3
    os.environ["AIRFLOW_CONN_TH_S3_NODE"] = server.airflow_connection(secret_key="not-the-secret")
    before = len(_jobs(kube_api, real_node["namespace"], "th_real_train_s3"))
    run = run_dag("th_real_train_s3", _conf(bucket, "refused"))
    out = capfd.readouterr().out
    assert states(run) == {"train": "failed"}
    assert (f"Invalid sft configuration: model_path 's3://{bucket}/models/tiny': the storage refused access "
            "(PermissionError: Forbidden)") in out, out[-5000:]
    assert "not-the-secret" not in out
    assert len(_jobs(kube_api, real_node["namespace"], "th_real_train_s3")) == before, "no Job was created"


def test_a_pod_killed_mid_upload_leaves_a_state_the_retry_ignores(node_s3, bucket, real_node, kube_api, tmp_path):
    """The pods reach the bucket through toxiproxy, each request 1.5 s late. When full_state/epoch_1
    has its first file in the bucket but no marker, the proxy drops everything from then on (so
    the marker that was on its way never lands) and rank 0's pod is deleted with no grace: the Job
    fails, and Airflow's retry starts a new one, which resumes from epoch_0 (complete) and uploads
    epoch_1 again, whole. (A slower link is no choice: s3fs gives up on a PUT whose body takes
    over its 15 s read timeout.)"""
    server, proxy = node_s3
    fs = server.filesystem()
    state = f"{bucket}/runs/cut/full_state/epoch_1"
    added = []
    try:
        proxy.toxic("latency", stream="upstream", latency=1500)
        added.append("latency")
        runner = start_in_subprocess("th_real_train_s3", _conf(bucket, "cut", num_epochs=3,
                                                                overrides={"storage_secret": "s3-slow"}))

        def uploading() -> bool:
            fs.invalidate_cache()
            return fs.exists(state) and bool(fs.find(state)) and not fs.exists(f"{state}/{object_storage.MARKER}")

        wait_for(uploading, 600, "full_state/epoch_1 to be half-uploaded", interval=0.25)
        proxy.toxic("timeout", stream="upstream", timeout=0)  # timeout 0: drop the data, keep the connection
        added.append("timeout")
        (job,) = [j for j in _jobs(kube_api, real_node["namespace"], "th_real_train_s3")
                  if j.metadata.annotations.get("training-hub/run-id") and j.status.active]
        core = kube_api[0]
        (rank0,) = [p.metadata.name for p in core.list_namespaced_pod(
            real_node["namespace"], label_selector=f"batch.kubernetes.io/job-name={job.metadata.name}").items
            if p.metadata.annotations["batch.kubernetes.io/job-completion-index"] == "0"]
        core.delete_namespaced_pod(rank0, real_node["namespace"], grace_period_seconds=0)
        fs.invalidate_cache()
        half = fs.find(state)

        def failed() -> bool:  # the pod is gone, not only its object: nothing of it reaches the bucket later
            status = kube_api[1].read_namespaced_job_status(job.metadata.name, real_node["namespace"]).status
            return any(c.type == "Failed" and c.status == "True" for c in status.conditions or [])

        wait_for(failed, 120, "the Job to fail")
    finally:
        for toxic in added:
            proxy.clear(toxic)
    result, out = finish(runner, timeout=900)
    assert result["states"] == {"train": "success"}, out[-5000:]
    assert half and f"{state}/{object_storage.MARKER}" not in half
    assert "full_state/epoch_0: epoch 1, step" in out, out[-5000:]  # the retry: from the complete state
    fs.invalidate_cache()
    marker = json.loads(fs.cat_file(f"{state}/{object_storage.MARKER}"))
    assert marker["files"] == len([p for p in fs.find(state) if not p.endswith(object_storage.MARKER)])
    assert result["xcoms"]["train.checkpoint"] == f"s3://{bucket}/runs/cut/hf_format/samples_144"
