"""Kubernetes execution against a real control plane on loopback (k8s-testenv/: etcd,
kube-apiserver, kube-controller-manager, kube-scheduler) with kwok as the kubelet of fake GPU
nodes.

GPU REPLACED: no container runs. kwok moves pods through Running to Succeeded or Failed as
k8s-testenv/kwok-stages.yaml says, driven by pod annotations the tests set: how long a pod
"trains" (training-hub.test/run-ms), which index fails (training-hub.test/fail-index), and the
termination message a finished pod reports (training-hub.test/result), standing in for what
`training-hub sft --termination-message` writes (that part is covered for real by
test_pod_command_replay.py). Everything else, the API server's validation, the Job, garbage
collection and TTL controllers, the scheduler's placement, Airflow and the operator, is real.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from airflow_runs import run_dag, start_in_subprocess, states, xcoms
from conftest import REPO, airflow_cli, wait_for
from kwok_nodes import GPUS_PER_NODE

pytestmark = [pytest.mark.k8s, pytest.mark.usefixtures("airflow_db")]

RESULT = {
    "ckpt_output_dir": "/mnt/training/checkpoints/run",
    "checkpoint": "/mnt/training/checkpoints/run/hf_format/samples_96",
    "checkpoints": ["/mnt/training/checkpoints/run/hf_format/samples_48", "/mnt/training/checkpoints/run/hf_format/samples_96"],
    "full_state": [],
    "metrics": {"steps": 12, "loss": 1.5, "first_loss": 3.0},
}


def _objects(kube, namespace: str) -> dict[str, list[str]]:
    core, batch = kube
    return {
        "jobs": [j.metadata.name for j in batch.list_namespaced_job(namespace).items],
        "services": [s.metadata.name for s in core.list_namespaced_service(namespace).items],
        "pods": [p.metadata.name for p in core.list_namespaced_pod(namespace).items],
    }


CONSOLE = "https://console.example.com/k8s/ns/{namespace}/jobs/{job_name}"  # a connection's job_url_template


def _annotations(**extra: str) -> dict[str, str]:
    return {"training-hub.test/result": json.dumps(RESULT), "training-hub.test/run-ms": "1500", **extra}


# th_k8s_train_text renders its templates to text (no render_template_as_native_obj): the
# operator's own settings (overrides, annotations, timeout, backoff limit) arrive as strings.
@pytest.mark.parametrize("dag_id", ["th_k8s_train", "th_k8s_train_text"])
def test_two_node_job_runs_and_returns_rank0_result(kube, k8s_namespace, dag_id):
    from airflow_provider_training_hub.hooks.training_hub import TrainingHubHook

    ok, message = TrainingHubHook("training_hub_k8s").test_connection()
    assert ok, message
    core, batch = kube
    run = run_dag(dag_id, {
        "nnodes": 2, "nproc_per_node": 2, "pod_annotations": _annotations(), "job_backoff_limit": 1, "pending_timeout": 90,
        "overrides": {"tolerations": [{"key": "gpu", "operator": "Exists"}], "job_url_template": CONSOLE},
    })
    assert states(run) == {"train": "success"}
    got = xcoms(run)
    assert got[("train", "checkpoint")] == RESULT["checkpoint"]
    assert got[("train", "metrics")] == RESULT["metrics"]
    assert got[("train", "namespace")] == k8s_namespace
    name = got[("train", "job_name")]
    # the "Training run" extra link, as Airflow stored it for the UI when the task ended
    assert got[("train", "_link_TrainingRunLink")] == CONSOLE.format(namespace=k8s_namespace, job_name=name)

    job = batch.read_namespaced_job(name, k8s_namespace)
    assert (job.spec.completion_mode, job.spec.completions, job.spec.parallelism) == ("Indexed", 2, 2)
    assert job.status.succeeded == 2 and job.spec.backoff_limit == 1
    assert job.metadata.labels["training-hub/dag-id"] == dag_id
    service = core.read_namespaced_service(name, k8s_namespace)
    assert service.spec.cluster_ip == "None" and service.spec.publish_not_ready_addresses is True
    # owned by the Job: whatever deletes the Job (its TTL, a user) deletes the Service with it
    assert [(o.kind, o.name, o.uid) for o in service.metadata.owner_references] == [("Job", name, job.metadata.uid)]

    pods = core.list_namespaced_pod(k8s_namespace, label_selector=f"batch.kubernetes.io/job-name={name}").items
    by_index = {int(p.metadata.annotations["batch.kubernetes.io/job-completion-index"]): p for p in pods}
    assert sorted(by_index) == [0, 1]
    for pod in pods:  # bound by the real scheduler to a node that its node selector allows
        assert core.read_node(pod.spec.node_name).metadata.labels["gpu"] == "h100"
    for index, pod in by_index.items():
        assert (pod.spec.hostname, pod.spec.subdomain) == (f"{name}-{index}", name)
        container = pod.spec.containers[0]
        assert container.command == ["training-hub"] and container.args[:3] == ["sft", "--backend", "pytorch"]
        env = {e.name: e for e in container.env}
        assert env["PET_NNODES"].value == "2" and env["PET_NPROC_PER_NODE"].value == "2"
        assert env["PET_RDZV_ENDPOINT"].value == f"{name}-0.{name}:29500"
        assert env["PET_NODE_RANK"].value_from.field_ref.field_path.endswith("['batch.kubernetes.io/job-completion-index']")
        config = json.loads(env["TRAINING_HUB_CONFIG"].value)
        assert config["model_path"] == "/mnt/training/models/tiny" and "nnodes" not in config
        assert container.resources.limits["nvidia.com/gpu"] == "2"
        assert container.resources.requests == {"cpu": "1", "memory": "1Gi", "ephemeral-storage": "1Gi",
                                                "nvidia.com/gpu": "2"}
        mounts = {m.name: m.mount_path for m in container.volume_mounts}
        assert mounts == {"dshm": "/dev/shm", "training-data": "/mnt/training"}
        assert pod.spec.node_selector == {"gpu": "h100"} and pod.spec.tolerations[0].key == "gpu"


def test_lora_jobs_run_lora_sft_in_the_pods(kube, k8s_namespace):
    core, _ = kube
    run = run_dag("th_k8s_lora", {"pod_annotations": _annotations()})
    assert states(run) == {"train": "success"}
    name = xcoms(run)[("train", "job_name")]
    pods = core.list_namespaced_pod(k8s_namespace, label_selector=f"batch.kubernetes.io/job-name={name}").items
    assert len(pods) == 2
    for pod in pods:
        container = pod.spec.containers[0]
        assert container.args[:3] == ["lora_sft", "--backend", "pytorch"]  # the algorithm's default backend
        config = json.loads({e.name: e for e in container.env}["TRAINING_HUB_CONFIG"].value)
        # what the task set; the pod's training-hub applies the same defaults
        assert config == {"model_path": "/mnt/training/models/tiny", "data_path": "/mnt/training/data/train.jsonl",
                          "ckpt_output_dir": config["ckpt_output_dir"], "lora_r": 8, "target_modules": ["q_proj", "v_proj"]}


def test_dpo_jobs_run_dpo_in_the_pods(kube, k8s_namespace):
    """DPOTrainOperator is one line on TrainOperator: the same Indexed Job, its pods running
    `training-hub dpo` on the algorithm's default backend with what the task set."""
    core, _ = kube
    run = run_dag("th_k8s_dpo", {"pod_annotations": _annotations()})
    assert states(run) == {"train": "success"}
    assert xcoms(run)[("train", "checkpoint")] == RESULT["checkpoint"]
    name = xcoms(run)[("train", "job_name")]
    pods = core.list_namespaced_pod(k8s_namespace, label_selector=f"batch.kubernetes.io/job-name={name}").items
    assert len(pods) == 2
    for pod in pods:
        container = pod.spec.containers[0]
        assert container.args[:3] == ["dpo", "--backend", "pytorch"]
        config = json.loads({e.name: e for e in container.env}["TRAINING_HUB_CONFIG"].value)
        assert config == {"model_path": "/mnt/training/models/sft", "data_path": "/mnt/training/data/pairs.jsonl",
                          "ckpt_output_dir": config["ckpt_output_dir"], "beta": 0.2, "lora_r": 8}


@pytest.mark.parametrize("dag_id", ["th_k8s_train", "th_k8s_train_deferred"])
def test_a_failing_pod_fails_the_task_naming_it_after_the_jobs_backoff(kube, k8s_namespace, capfd, dag_id):
    core, batch = kube
    run = run_dag(dag_id, {
        "nnodes": 2, "job_backoff_limit": 1, "pod_annotations": _annotations(**{"training-hub.test/fail-index": "1"}),
    })
    assert states(run) == {"train": "failed"}
    out = capfd.readouterr().out
    name = xcoms(run)[("train", "job_name")]
    job = batch.read_namespaced_job(name, k8s_namespace)
    assert job.status.failed == 2  # the first failure was retried once (backoffLimit 1), then the Job failed
    failed = [p.metadata.name for p in core.list_namespaced_pod(k8s_namespace).items if p.status.phase == "Failed"]
    assert len(failed) == 2
    assert f"Job {name} failed: BackoffLimitExceeded" in out
    assert any(f"pod {pod} (index 1) failed: exit code 1, Error" in out for pod in failed)
    assert "CUDA error: an illegal memory access was encountered" in out


@pytest.mark.parametrize("dag_id", ["th_k8s_train", "th_k8s_train_deferred"])
def test_unschedulable_job_reports_the_scheduler_and_times_out(kube, k8s_namespace, capfd, dag_id):
    run = run_dag(dag_id, {
        "nnodes": 2, "nproc_per_node": GPUS_PER_NODE * 2, "pending_timeout": 8, "pod_annotations": _annotations(),
    })
    assert states(run) == {"train": "failed"}
    out = capfd.readouterr().out
    assert re.search(r"pod \S+ did not start for 8s: waiting for a node: 0/\d+ nodes are available", out), out[-3000:]
    assert "Insufficient nvidia.com/gpu" in out, re.findall(r"did not start.*", out)
    wait_for(lambda: _objects(kube, k8s_namespace) == {"jobs": [], "services": [], "pods": []}, 60,
              "the unschedulable Job to be deleted")


def _running_pods(kube, namespace: str, count: int):
    core, _ = kube
    return lambda: len([p for p in core.list_namespaced_pod(namespace).items if p.status.phase == "Running"]) == count


def _stored_links(namespace: str) -> list[str]:
    """The "Training run" links stored for the UI that lead to a Job of ``namespace``."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(select(XComModel).where(XComModel.key == "_link_TrainingRunLink")).all()
        return [v for v in (XComModel.deserialize_value(r) for r in rows) if f"/ns/{namespace}/" in v]


def test_on_kill_deletes_job_service_and_pods(kube, k8s_namespace):
    runner = start_in_subprocess("th_k8s_train", {
        "nnodes": 2, "pod_annotations": _annotations(**{"training-hub.test/run-ms": "600000"}),
        "overrides": {"job_url_template": CONSOLE},
    })
    try:
        wait_for(_running_pods(kube, k8s_namespace, 2), 120, "both pods to run")
        # the link is there while the Job trains, not only once the task has ended. The task pushes
        # it after the Job is created, and kwok's pods can run first: wait for it, as a user would
        (link,) = wait_for(lambda: _stored_links(k8s_namespace), 60, "the Training run link to be stored")
        assert link == CONSOLE.format(namespace=k8s_namespace, job_name=_objects(kube, k8s_namespace)["jobs"][0])
        runner.send_signal(signal.SIGTERM)  # what Airflow sends a task being marked failed
        output, _ = runner.communicate(timeout=120)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert "Deleted Job and Service" in output
    wait_for(lambda: _objects(kube, k8s_namespace) == {"jobs": [], "services": [], "pods": []}, 60,
              "the Job, the Service and the pods to be gone")


def test_deferred_run_completes_through_the_trigger(k8s_namespace):
    run = run_dag("th_k8s_train_deferred", {"nnodes": 2, "pod_annotations": _annotations()})
    assert states(run) == {"train": "success"}
    assert xcoms(run)[("train", "checkpoint")] == RESULT["checkpoint"]


def test_trigger_cleanup_keeps_the_job_and_on_kill_deletes_it(kube, k8s_namespace):
    from airflow.sdk._shared.module_loading import import_string

    from airflow_provider_training_hub.hooks.training_hub import TrainingHubHook
    from airflow_provider_training_hub.kubernetes import TrainingJob
    from airflow_provider_training_hub.triggers.training_job import TrainingJobTrigger

    hook = TrainingHubHook("training_hub_k8s")
    job = TrainingJob(name="th-deferred-kill", algorithm="sft", backend="pytorch",
                      params={"model_path": "m", "data_path": "d", "ckpt_output_dir": "c"}, nnodes=2,
                      pod_annotations=_annotations(**{"training-hub.test/run-ms": "600000"}))
    hook.target.submit_job(job)
    wait_for(_running_pods(kube, k8s_namespace, 2), 120, "both pods to run")

    classpath, kwargs = TrainingJobTrigger(job.name, k8s_namespace, "kubernetes_default", 60, 1).serialize()
    trigger = import_string(classpath)(**kwargs)  # as a (restarted) triggerer rebuilds it

    async def watch_then_stop():
        runner = trigger.run()
        watching = asyncio.ensure_future(anext(runner))
        await asyncio.sleep(3)
        assert not watching.done(), "the trigger fired while the Job was still running"
        watching.cancel()
        await trigger.cleanup()  # a triggerer shutting down: the training must go on

    asyncio.run(watch_then_stop())
    assert _objects(kube, k8s_namespace)["jobs"] == [job.name]
    assert _running_pods(kube, k8s_namespace, 2)()

    asyncio.run(trigger.on_kill())  # a user marked the deferred task failed
    wait_for(lambda: _objects(kube, k8s_namespace) == {"jobs": [], "services": [], "pods": []}, 60,
              "the Job, the Service and the pods to be gone")


def test_a_restarted_worker_reattaches_to_its_running_job(kube, k8s_namespace):
    """The same try again, not durable (or durable, before the task state store had the Job): the
    Job is found by its name and labels, including when someone added labels of their own."""
    runner = start_in_subprocess("th_k8s_train_retried_anew", {
        "nnodes": 2, "pod_annotations": _annotations(**{"training-hub.test/run-ms": "15000"}),
    })
    try:
        wait_for(_running_pods(kube, k8s_namespace, 2), 120, "both pods to run")
        runner.kill()  # the worker dies: no on_kill, the Job keeps running
        runner.wait()
    finally:
        if runner.poll() is None:
            runner.kill()
    (job_name,) = _objects(kube, k8s_namespace)["jobs"]
    _, batch = kube
    run_id = batch.read_namespaced_job(job_name, k8s_namespace).metadata.annotations["training-hub/run-id"]
    # an admission webhook or a queue (Kueue, Kyverno) labels the Job too: it is still this try's
    batch.patch_namespaced_job(job_name, k8s_namespace, {"metadata": {"labels": {"kueue.x-k8s.io/queue-name": "gpu"}}})

    again = airflow_cli("tasks", "test", "th_k8s_train_retried_anew", "train", run_id, timeout=300)  # the same try
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert f"Reattached to Job {job_name}" in again.stdout + again.stderr
    assert RESULT["checkpoint"] in again.stdout + again.stderr
    assert _objects(kube, k8s_namespace)["jobs"] == [job_name]
    assert len(_objects(kube, k8s_namespace)["pods"]) == 2


def test_a_later_try_adopts_its_tasks_job_only_while_it_trains_the_same_thing(kube, k8s_namespace, capfd):
    """``find``, as the operator's ResumableJobMixin calls it on a retry, and ``kill`` from the try
    that adopted: it stops the earlier try's Job."""
    import dataclasses

    from airflow_provider_training_hub.hooks.training_hub import TrainingHubHook
    from airflow_provider_training_hub.run_states import RUNNING
    from airflow_provider_training_hub.targets import TaskTry, TrainingRun
    from airflow_provider_training_hub.targets.task_settings import TaskSettings

    hook = TrainingHubHook("training_hub_k8s")
    values = {"model_path": "/mnt/training/models/tiny", "data_path": "/mnt/training/data/train.jsonl",
              "ckpt_output_dir": "/mnt/training/checkpoints/adopt", "nnodes": 2}
    settings = TaskSettings.parse({"pending_timeout": 60, "job_backoff_limit": 0, "unwatched_timeout": 60,
                                   "pod_annotations": _annotations(**{"training-hub.test/run-ms": "600000"})})
    first = TrainingRun("sft", "pytorch", hook.parse_params("sft", values), TaskTry("dag", "train", "run", -1, 1), settings)
    located = hook.target.submit(first)
    wait_for(_running_pods(kube, k8s_namespace, 2), 120, "both pods to run")

    retry = dataclasses.replace(first, task=dataclasses.replace(first.task, try_number=2))
    assert hook.target.find(retry, located) == {"status": RUNNING, "message": "", "job_name": located["job_name"]}
    changed = dataclasses.replace(retry, params=hook.parse_params("sft", {**values, "learning_rate": 1e-4}))
    assert hook.target.find(changed, located) is None
    assert f"Job {located['job_name']} of an earlier try trains otherwise than this try would " \
           "(learning_rate unset then, 0.0001 now): not adopting it" in "".join(capfd.readouterr())

    hook.target.kill(retry.task)  # the try that adopted the Job is marked failed
    wait_for(lambda: _objects(kube, k8s_namespace) == {"jobs": [], "services": [], "pods": []}, 60,
             "the earlier try's Job, Service and pods to be gone")
    assert hook.target.find(retry, located) is None


def test_sixty_four_nodes_are_created_and_scheduled(kube, k8s_namespace, capsys):
    core, _ = kube
    started = time.monotonic()
    run = run_dag("th_k8s_train", {"nnodes": 64, "nproc_per_node": 2, "pod_annotations": _annotations()})
    elapsed = time.monotonic() - started
    assert states(run) == {"train": "success"}
    pods = core.list_namespaced_pod(k8s_namespace).items
    assert len(pods) == 64 and all(p.spec.node_name for p in pods)
    assert sorted(int(p.metadata.annotations["batch.kubernetes.io/job-completion-index"]) for p in pods) == list(range(64))
    assert {p.spec.hostname for p in pods} == {f"{xcoms(run)[('train', 'job_name')]}-{i}" for i in range(64)}
    with capsys.disabled():
        print(f"\n64-node Job: created, scheduled on {len({p.spec.node_name for p in pods})} fake GPU nodes "
              f"and completed in {elapsed:.1f}s")


def _documented_role(k8s_cluster: str, namespace: str, without_verb: tuple[str, str] | None = None) -> str:
    """A kubeconfig for a service account that holds the documented Role (docs/kubernetes.md) and nothing more
    (``without_verb``: less, one verb of one resource fewer); returns its path."""
    import yaml
    from kubernetes import client, config

    text = (REPO / "docs" / "kubernetes.md").read_text()
    role = yaml.safe_load(re.search(r"```yaml\n(apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\n.*?)```",
                                    text, re.S).group(1))
    if without_verb:
        resource, verb = without_verb
        for rule in role["rules"]:
            if resource in rule["resources"]:
                rule["verbs"].remove(verb)
    api = config.new_client_from_config(k8s_cluster)
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "airflow"}})
    rbac.create_namespaced_role(namespace, role)
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "airflow-training-hub"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]},
        "subjects": [{"kind": "ServiceAccount", "name": "airflow", "namespace": namespace}],
    })
    token = core.create_namespaced_service_account_token("airflow", namespace, {"spec": {"expirationSeconds": 3600}})
    kubeconfig = yaml.safe_load(Path(k8s_cluster).read_text())
    kubeconfig["users"][0]["user"] = {"token": token.status.token}
    path = Path(k8s_cluster).with_name(f"kubeconfig-{namespace}-documented-role")
    path.write_text(yaml.safe_dump(kubeconfig))
    os.environ["AIRFLOW_CONN_KUBERNETES_DEFAULT"] = json.dumps(
        {"conn_type": "kubernetes", "extra": {"kube_config_path": str(path)}})
    return str(path)


def test_the_readmes_role_is_all_the_kubernetes_path_needs(kube, k8s_cluster, k8s_namespace, capfd):
    """Airflow's identity holds the documented Role, no more: a Job trains to its result (polling),
    and a Job whose pods the namespace's quota refuses fails the deferred task within
    pending_timeout, naming the refusal, and is deleted."""
    _documented_role(k8s_cluster, k8s_namespace)
    run = run_dag("th_k8s_train", {"nnodes": 2, "pod_annotations": _annotations()})
    assert states(run) == {"train": "success"}, capfd.readouterr().out[-4000:]
    assert xcoms(run)[("train", "checkpoint")] == RESULT["checkpoint"]

    core, _ = kube
    core.create_namespaced_resource_quota(k8s_namespace, {"metadata": {"name": "no-more-pods"},
                                                          "spec": {"hard": {"pods": "0"}}})
    run = run_dag("th_k8s_train_deferred", {"nnodes": 2, "pending_timeout": 5, "pod_annotations": _annotations()})
    out = capfd.readouterr().out
    assert states(run) == {"train": "failed"}
    assert re.search(r"Job th-\S+ had too few pods for 5s: the Job controller cannot create its pods: .*exceeded quota: "
                     r"no-more-pods", out), out[-4000:]
    finished = xcoms(run)[("train", "job_name")]
    wait_for(lambda: finished not in _objects(kube, k8s_namespace)["jobs"], 60, "the refused Job to be deleted")


def test_a_refusal_after_the_job_exists_deletes_the_job(kube, k8s_cluster, k8s_namespace, capfd):
    """A Role short of one verb the path needs (as the documented one was, without `patch` on services):
    the task fails without retry, and the Job it had created does not train on unwatched."""
    _documented_role(k8s_cluster, k8s_namespace, without_verb=("services", "patch"))
    run = run_dag("th_k8s_train_retried", {"nnodes": 2, "pod_annotations": _annotations()})
    out = capfd.readouterr().out
    assert states(run) == {"train": "failed"}
    assert run.get_task_instance("train").try_number == 1
    assert 'services "th-th-k8s-train-retried-train-' in out and "cannot patch resource" in out, out[-4000:]
    assert "was created but its Service could not be given to it; deleting both" in out
    # deleted in the foreground: the Job goes once the garbage collector has removed its pods
    wait_for(lambda: _objects(kube, k8s_namespace) == {"jobs": [], "services": [], "pods": []}, 60,
             "the refused Job and its pods to be deleted")


def test_a_succeeded_job_whose_result_cannot_be_read_is_retried(kube, k8s_namespace, capfd):
    """Rank 0's termination message is not the result (cut, or its pod gone): the training did
    not refuse its input, so the try fails as one a retry can mend, not as "Invalid input"."""
    run = run_dag("th_k8s_train_retried", {"nnodes": 2, "pod_annotations": _annotations(
        **{"training-hub.test/result": '{"checkpoint": "/mnt/training/checkp'})})
    out = capfd.readouterr().out
    assert states(run) == {"train": "failed"}
    assert run.get_task_instance("train").try_number == 2, out[-4000:]  # retried once
    assert re.search(r"Job th-\S+ succeeded, but its result cannot be read: pod \S+ left no result in its "
                     r"termination message", out), out[-4000:]
    assert "Invalid sft input" not in out
