"""Training Jobs on real pods: the test bed's real node (k8s-testenv/real-node.sh) runs them in
containers of the image built from docker/training, with containerd, runc, CNI, a real kubelet
and CoreDNS, beside the kwok nodes of the same control plane.

GPU REPLACED: the node advertises `nvidia.com/gpu` as an extended resource, so each pod requests
GPUs as on a GPU cluster, but the `pytorch` backend trains on the CPU (gloo). Everything else is
real: the image and its uid 1000 writing onto the PVC, the ranks meeting at `<job>-0.<job>:29500`
through the headless Service and cluster DNS, rank 0's log read from the kubelet, its termination
message as the XCom, the pod failure policy, and the Job, TTL and garbage-collector controllers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
from kubernetes.client import ApiException
from airflow_runs import finish, run_dag, start_in_subprocess, states, xcoms
from conftest import DPO_SAMPLE, SAMPLE_DATA, airflow_json, wait_for

pytestmark = [pytest.mark.k8s, pytest.mark.real_node, pytest.mark.usefixtures("airflow_db")]

MOUNT = "/mnt/training"  # the connection's pvc_mount_path (its default)


@pytest.fixture(scope="session")
def volume(real_node, tiny_model) -> Path:
    """The PV's host directory, with the tiny model and the sample data as a platform team would
    put them there; the pods see it at /mnt/training."""
    host = Path(real_node["host_path"])
    shutil.copytree(tiny_model, host / "models" / "tiny", dirs_exist_ok=True)
    (host / "data").mkdir(exist_ok=True)
    shutil.copy(SAMPLE_DATA, host / "data" / "train.jsonl")
    for path in [host / "models", host / "data", *(host / "models").rglob("*"), *(host / "data").rglob("*")]:
        os.chown(path, 1000, 1000)  # the volume is the pods' uid's (safetensors files are 0600)
    return host


def _settings(real_node) -> dict:
    return {"execution": "kubernetes", "namespace": real_node["namespace"], "image": real_node["training_image"],
            "pvc_claim": real_node["pvc_claim"], "node_selector": real_node["node_selector"], "cpu": "500m",
            "memory": "6Gi", "shm_size": "512Mi", "ephemeral_storage": "2Gi", "termination_grace_period_seconds": 30}


@pytest.fixture
def real(real_node, volume) -> dict:
    """The connections of the in-process Airflow: `kubernetes_default` and `training_hub_real`."""
    os.environ["AIRFLOW_CONN_KUBERNETES_DEFAULT"] = json.dumps(
        {"conn_type": "kubernetes", "extra": {"kube_config_path": real_node["kubeconfig"]}})
    os.environ["AIRFLOW_CONN_TRAINING_HUB_REAL"] = json.dumps(
        {"conn_type": "training_hub", "extra": _settings(real_node)})
    return real_node


@pytest.fixture(scope="session")
def api(real_node):
    from kubernetes import client, config

    api = config.new_client_from_config(real_node["kubeconfig"])
    return client.CoreV1Api(api), client.BatchV1Api(api)


def _objects(api, namespace: str, job: str) -> dict[str, list[str]]:
    core, batch = api
    selector = f"batch.kubernetes.io/job-name={job}"
    return {
        "jobs": [j.metadata.name for j in batch.list_namespaced_job(namespace).items if j.metadata.name == job],
        "services": [s.metadata.name for s in core.list_namespaced_service(namespace).items if s.metadata.name == job],
        "pods": [p.metadata.name for p in core.list_namespaced_pod(namespace, label_selector=selector).items],
    }


def _pods(api, namespace: str, prefix: str) -> list:
    core, _ = api
    return [p for p in core.list_namespaced_pod(namespace).items if p.metadata.name.startswith(prefix)]


def _log(api, pod: str, namespace: str) -> str:
    """A pod's log as the kubelet serves it (kubernetes 36 would return the repr of its bytes)."""
    return api[0].read_namespaced_pod_log(pod, namespace, _preload_content=False).data.decode()


def _on_host(volume: Path, path: str) -> Path:
    return volume / Path(path).relative_to(MOUNT)


def _create(call, *args) -> None:
    """Create an object; one left by an earlier session of the same test bed is fine."""
    try:
        call(*args)
    except ApiException as exc:
        if exc.status != 409:
            raise


@pytest.fixture(scope="session")
def restricted(real_node, api) -> str:
    """A namespace that enforces Pod Security's "restricted" profile, as a platform team's may,
    with a claim `training` on the same volume; its name."""
    core, _ = api
    namespace = f"{real_node['namespace']}-restricted"
    _create(core.create_namespace, {"metadata": {"name": namespace,
                                                 "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    _create(core.create_persistent_volume, {"metadata": {"name": namespace}, "spec": {
        "capacity": {"storage": "20Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "real-node",
        "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": real_node["host_path"], "type": "Directory"}}})
    _create(core.create_namespaced_persistent_volume_claim, namespace, {"metadata": {"name": "training"}, "spec": {
        "accessModes": ["ReadWriteMany"], "storageClassName": "real-node", "volumeName": namespace,
        "resources": {"requests": {"storage": "20Gi"}}}})
    wait_for(lambda: core.read_namespaced_persistent_volume_claim("training", namespace).status.phase == "Bound", 30,
             "the restricted namespace's claim to bind")
    # It does enforce: a pod without the profile's settings is refused.
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(namespace, {"metadata": {"name": "unrestricted"}, "spec": {
            "containers": [{"name": "main", "image": real_node["training_image"]}]}})
    assert refused.value.status == 403 and 'violates PodSecurity \\"restricted:latest\\"' in refused.value.body
    return namespace


def test_two_node_job_trains_on_real_pods_and_returns_rank0s_checkpoint(real, api, volume, restricted, capfd):
    """In a namespace of Pod Security "restricted": the training pods are admitted as they are."""
    run = run_dag("th_real_train", {"overrides": {"namespace": restricted}})
    out = capfd.readouterr().out
    assert states(run) == {"train": "success"}, out[-5000:]
    got = xcoms(run)
    job, namespace = got[("train", "job_name")], restricted
    pods = {p.metadata.annotations["batch.kubernetes.io/job-completion-index"]: p for p in _pods(api, namespace, job)}
    assert sorted(pods) == ["0", "1"] and {p.spec.node_name for p in pods.values()} == {"real-node"}
    for pod in pods.values():  # the image's entrypoint, run by the kubelet to its end
        terminated = pod.status.container_statuses[0].state.terminated
        assert (pod.status.phase, terminated.exit_code) == ("Succeeded", 0)
        assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"  # GPU REPLACED: advertised only

    # The XCom is rank 0's termination message, and it names files that uid 1000 wrote on the PVC.
    checkpoint = _on_host(volume, got[("train", "checkpoint")])
    assert got[("train", "checkpoint")].startswith(f"{MOUNT}/checkpoints/th_real_train/")
    assert (checkpoint / "config.json").is_file() and list(checkpoint.glob("*.safetensors"))
    assert {p.stat().st_uid for p in checkpoint.iterdir()} == {1000}
    assert got[("train", "metrics")]["steps"] > 0

    # Both ranks trained together, which needed rank 1 to reach rank 0 at <job>-0.<job>:29500.
    rank0 = pods["0"].metadata.name
    assert f"[{rank0}] [training-hub] " in out and "2 rank(s) on cpu" in out
    assert re.search(rf"\[{rank0}\] \[training-hub\] weights identical on all 2 rank\(s\)", out)
    rank1_log = _log(api, pods["1"].metadata.name, namespace)
    assert "[training-hub]" not in rank1_log  # rank 1 trains quietly; its log has torchrun's lines only

    # Clean-up as documented: ttl_seconds_after_finished (60 s in this DAG, the least allowed)
    # removes the Job, its pods with it, and the Service, which the Job owns.
    service = api[0].read_namespaced_service(job, namespace)
    assert [(o.kind, o.name) for o in service.metadata.owner_references] == [("Job", job)]
    wait_for(lambda: _objects(api, namespace, job) == {"jobs": [], "services": [], "pods": []}, 180,
             "the TTL controller and the garbage collector to remove the Job, its pods and the Service")


def test_dpo_trains_on_two_real_pods_and_prefers_the_chosen_replies(real, api, volume, capfd):
    """`training-hub dpo` in two real pods: both ranks compute the reference log-probabilities
    and train together; rank 0's progress lines carry the reward margin and accuracy, and its
    checkpoint on the PVC prefers the chosen replies of the pairs more than the starting model did."""
    from airflow_provider_training_hub.algorithms.dpo import preference_margins

    pairs = volume / "data" / "pairs.jsonl"
    shutil.copy(DPO_SAMPLE, pairs)
    os.chown(pairs, 1000, 1000)
    run = run_dag("th_real_dpo")
    out = capfd.readouterr().out
    assert states(run) == {"train": "success"}, out[-5000:]
    assert "reference log-probabilities of 24 pairs computed (the starting model)" in out
    assert "2 rank(s) on cpu" in out and "weights identical on all 2 rank(s)" in out
    assert re.search(r"epoch 1 step 6/6 loss [0-9.]+ margin [0-9.]+ accuracy [0-9.]+", out), out[-5000:]
    checkpoint = _on_host(volume, xcoms(run)[("train", "checkpoint")])
    before = sum(preference_margins(str(volume / "models" / "tiny"), str(DPO_SAMPLE)))
    after = sum(preference_margins(str(checkpoint), str(DPO_SAMPLE)))
    assert after > before, (before, after)


@pytest.mark.slow
def test_smollm2_trains_on_two_real_pods_and_its_checkpoint_loads(real, volume, smollm2_model, capfd):
    target = volume / "models" / "smollm2"
    shutil.copytree(smollm2_model, target, dirs_exist_ok=True)
    for path in [target, *target.rglob("*")]:
        os.chown(path, 1000, 1000)
    run = run_dag("th_real_train", {"model_path": f"{MOUNT}/models/smollm2", "num_epochs": 1})
    out = capfd.readouterr().out
    assert states(run) == {"train": "success"}, out[-5000:]
    assert "2 rank(s) on cpu" in out and "weights identical on all 2 rank(s)" in out
    checkpoint = _on_host(volume, xcoms(run)[("train", "checkpoint")])

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    base = AutoModelForCausalLM.from_pretrained(smollm2_model)
    assert model.num_parameters() == base.num_parameters()
    assert AutoTokenizer.from_pretrained(checkpoint).chat_template  # the tokenizer came along, template and all


@pytest.mark.parametrize(("overrides", "reason"), [
    # an image no registry serves (one on the node's own loopback: nothing leaves the test bed)
    ({"image": "127.0.0.1:9/training-hub/no-such-image:dev"}, r"(ErrImagePull|ImagePullBackOff): .*no-such-image"),
    # a mistyped tracking_secret
    ({"tracking_secret": "mlflow-credentails"}, r'CreateContainerConfigError: secret "mlflow-credentails" not found'),
])
def test_pods_that_cannot_start_fail_the_try_within_pending_timeout(real, api, capfd, overrides, reason):
    """Scheduled, so holding their GPUs, but never starting: the try fails after pending_timeout,
    naming the pod and the kubelet's reason, and the Job is deleted."""
    started = time.monotonic()
    run = run_dag("th_real_train_once", {"overrides": overrides, "pending_timeout": 15})
    out = capfd.readouterr().out
    assert states(run) == {"train": "failed"}
    assert time.monotonic() - started < 90
    assert re.search(rf"pod th-th-real-train-once-train-\S+ did not start for 15s: {reason}", out), out[-4000:]
    job = xcoms(run)[("train", "job_name")]
    wait_for(lambda: _objects(api, real["namespace"], job) == {"jobs": [], "services": [], "pods": []}, 60,
             "the Job that could not start to be deleted")


def test_a_bad_parameter_fails_the_job_at_once_and_the_task_without_retry(real, api, capfd):
    run = run_dag("th_real_train", {"model_path": f"{MOUNT}/models/missing"})
    out = capfd.readouterr().out
    assert states(run) == {"train": "failed"}
    (ti,) = run.get_task_instances()
    assert ti.try_number == 1  # retries=1 in this DAG, yet no second try
    assert "failed on a configuration error (exit code 2; not retried)" in out
    assert "PodFailurePolicy" in out  # the Job's own verdict: its pod failure policy, not a backoff
    assert "training-hub: error: " in out and f"{MOUNT}/models/missing" in out  # the pod's message


def _rank_process(job_prefix: str, rank: int) -> int | None:
    """The host pid of a training rank (not its torchrun) of a Job whose name starts so."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = dict(item.split(b"=", 1) for item in (entry / "environ").read_bytes().split(b"\0") if b"=" in item)
        except OSError:
            continue
        if env.get(b"PET_RDZV_ID", b"").startswith(job_prefix.encode()) and env.get(b"RANK") == str(rank).encode() \
                and b"LOCAL_RANK" in env:
            return int(entry.name)
    return None


def test_a_killed_rank_fails_the_try_and_the_retry_resumes_from_the_last_full_state(real, api, volume):
    root = volume / "checkpoints" / "th_real_train"
    before = set(root.glob("*")) if root.exists() else set()
    # 30 epochs: rank 1 must still be training when the first full state is on the volume
    runner = start_in_subprocess("th_real_train", {"num_epochs": 30})
    try:
        wait_for(lambda: [p for p in root.glob("*/train/full_state/epoch_1") if p.parents[2] not in before], 600,
                 "try 1 to save its first full state")
        rank1 = wait_for(lambda: _rank_process("th-th-real-train-train-", 1), 60, "rank 1's process")
        os.kill(rank1, signal.SIGKILL)  # as the kernel's OOM killer would
    except BaseException:
        runner.kill()
        raise
    result, output = finish(runner, timeout=900)
    assert result["states"] == {"train": "success"}, output[-6000:]
    # try 1 failed naming the pod, its exit code and reason, and its last log lines
    failed_job = re.search(r"Job (th-\S+) failed: ", output)
    assert failed_job, output[-6000:]
    rank1_failure = re.search(rf"pod {failed_job.group(1)}-1-\S+ \(index 1\) failed: exit code (\d+), (\w+)\n(.+)",
                              output)
    assert rank1_failure, output[-6000:]
    assert rank1_failure.group(1) != "0" and rank1_failure.group(3).strip()  # and its log's last lines follow
    assert "Signal 9 (SIGKILL)" in output  # torchrun's report of its rank, in that log tail
    # try 2 resumed from try 1's last full state: the step count goes on from there
    resumed = re.search(r"\[training-hub\] resumed from \S+/full_state/epoch_(\d+): epoch (\d+), step (\d+)", output)
    assert resumed, output[-6000:]
    assert int(resumed.group(3)) > 0
    after = output.split(resumed.group(0))[1]
    steps = [int(s) for s in re.findall(r"\[training-hub\] epoch \d+ step (\d+)/", after)]
    assert steps and min(steps) == int(resumed.group(3)) + 1


# --- on Airflow as deployed: PostgreSQL, scheduler (LocalExecutor), dag-processor, triggerer, api-server ---


@pytest.fixture
def deployed(deployed_airflow, real_node, volume):
    deployed_airflow.set_connection("kubernetes_default", "kubernetes", {"kube_config_path": real_node["kubeconfig"]})
    deployed_airflow.set_connection("training_hub_real", "training_hub", _settings(real_node))
    return deployed_airflow


@pytest.mark.parametrize("dag_id", ["th_real_train", "th_real_train_deferred"])
def test_rank0s_progress_reaches_the_task_log_while_it_trains(real_node, api, volume, deployed, dag_id):
    # 20 epochs (120 steps, with a checkpoint each epoch): long enough at the pods' 20 steps/s for the line
    # to arrive while the Job runs
    run_id = deployed.trigger(dag_id, {"num_epochs": 20})
    job = wait_for(lambda: _xcom_or_none(deployed, dag_id, run_id, "job_name"), 300, "the Job to be created")

    def progress_while_training():
        job_status = api[1].read_namespaced_job(job, real_node["namespace"]).status
        ended = job_status.succeeded or job_status.failed
        log = deployed.log(dag_id, run_id, 1)
        # "[<rank 0's pod>] [training-hub] epoch 0 step 1/...": one log line, as rank 0 printed it
        found = re.search(rf"\[{job}-0-\w+\] \[training-hub\] epoch 0 step 1/", log)
        assert not ended, "the Job ended before rank 0's first step line was in the task log"
        return found

    wait_for(progress_while_training, 600, "rank 0's first step line in the task log", interval=1)
    ti = deployed.wait_for_task(dag_id, run_id, {"success", "failed"}, 900)
    assert ti["state"] == "success", deployed.log(dag_id, run_id, 1)[-5000:]
    checkpoint = deployed.xcom(dag_id, run_id, "checkpoint")
    assert (_on_host(volume, checkpoint) / "config.json").is_file()


def _xcom_or_none(deployed, dag_id: str, run_id: str, key: str):
    try:
        return deployed.xcom(dag_id, run_id, key)
    except AssertionError:  # not pushed yet
        return None


@pytest.mark.parametrize("dag_id", ["th_real_train", "th_real_train_deferred"])
def test_marking_the_task_failed_removes_job_service_and_pods(real_node, api, volume, deployed, dag_id):
    run_id = deployed.trigger(dag_id, {"num_epochs": 50})
    job = wait_for(lambda: _xcom_or_none(deployed, dag_id, run_id, "job_name"), 300, "the Job to be created")
    namespace = real_node["namespace"]
    wait_for(lambda: len([p for p in _pods(api, namespace, job) if p.status.phase == "Running"]) == 2, 300,
             "both pods to run")
    deployed.mark(dag_id, run_id, "failed")
    started = time.monotonic()
    wait_for(lambda: _objects(api, namespace, job) == {"jobs": [], "services": [], "pods": []}, 60,
             "the Job, the Service and the pods to be gone within 60 s")
    print(f"gone {time.monotonic() - started:.1f}s after the mark")
    assert deployed.task(dag_id, run_id)["state"] == "failed"


# --- the images themselves ---


def _run_pod(api, real_node, name: str, image: str, command: list[str]) -> tuple[str, int]:
    """Run ``command`` in a pod of ``image`` on the real node; its log and exit code."""
    core, _ = api
    namespace = real_node["namespace"]
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "nodeSelector": real_node["node_selector"],
                 "containers": [{"name": "main", "image": image, "command": command,
                                 "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}}}]},
    })
    try:
        pod = wait_for(lambda: (p := core.read_namespaced_pod(name, namespace)).status.phase in ("Succeeded", "Failed")
                       and p, 300, f"pod {name} to finish")
        return _log(api, name, namespace), pod.status.container_statuses[0].state.terminated.exit_code
    finally:
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)


def test_the_airflow_image_lists_the_provider_imports_the_dags_and_has_no_torch(real_node, api):
    # reserialize parses /opt/airflow/dags as a dag-processor would, recording import errors
    script = ("set -e; airflow db migrate >/dev/null; airflow dags reserialize >/dev/null; "
              "airflow providers list -o json; echo ERRORS; "
              "airflow dags list-import-errors -o json; echo DAGS; airflow dags list -o json; "
              "python -c 'import importlib.util as u, sys; sys.exit(u.find_spec(\"torch\") is not None)'; "
              "echo NO-TORCH")
    log, code = _run_pod(api, real_node, "airflow-image-check", real_node["airflow_image"], ["bash", "-c", script])
    assert code == 0, log[-3000:]
    providers, rest = log.split("ERRORS", 1)
    errors, rest = rest.split("DAGS", 1)
    dags, rest = rest.split("NO-TORCH", 1)
    assert "airflow-provider-training-hub" in {p["package_name"] for p in airflow_json(providers)}
    assert airflow_json(errors) == [], errors
    assert {"sft_demo", "sft_retrain", "lora_adapters", "messages_dataset_publish"} <= {
        d["dag_id"] for d in airflow_json(dags)}


def test_the_training_image_runs_as_uid_1000_without_airflow(real_node, api):
    script = ("id -u; training-hub list; "
              "python -c 'import importlib.util as u, sys; sys.exit(u.find_spec(\"airflow\") is not None)' "
              "&& echo NO-AIRFLOW")
    log, code = _run_pod(api, real_node, "training-image-check", real_node["training_image"], ["bash", "-c", script])
    assert code == 0, log[-3000:]
    lines = log.split()
    assert lines[0] == "1000" and "sft:" in log and lines[-1] == "NO-AIRFLOW"
