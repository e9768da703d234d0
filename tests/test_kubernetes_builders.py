"""The pure Kubernetes builders and readers: names, manifests, verdicts (no cluster needed)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest

from airflow_provider_training_hub.cli import TERMINATION_MESSAGE_LIMIT, termination_message
from airflow_provider_training_hub.connection import ConnectionSettings
from airflow_provider_training_hub.kubernetes import TrainingJob, build_job, build_service, job_name, label_value
from airflow_provider_training_hub.kubernetes.job import task_ids, training_differences
from airflow_provider_training_hub.kubernetes.status import assess
from airflow_provider_training_hub.run_states import FAILED, RUNNING, SUCCEEDED, UNSCHEDULABLE

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


# Pinned: a Job's name is how a restarted worker (maybe in another process, or after a provider
# upgrade) finds the Job of its try, so the names must not change with the process or the release.
@pytest.mark.parametrize(("dag_id", "expected"), [
    ("sft_retrain", "th-sft-retrain-train-fc14ba13"),
    ("A" * 250, "th-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-dc6f2120"),
    ("weird dag/ünïcode", "th-weird-dag-n-code-train-2d0a0a82"),
    ("9starts_with_digit", "th-9starts-with-digit-train-a48055e8"),
])
def test_job_names_are_dns_labels_fixed_per_try(dag_id, expected):
    run_id = "scheduled__2026-11-23T03:00:00+00:00"
    name = job_name(dag_id, "train", run_id, -1, 1)
    assert name == expected
    assert DNS_LABEL.match(name) and len(name) <= 58  # room for the pod hostname's "-<index>"
    assert name != job_name(dag_id, "train", run_id, -1, 2)  # the next try gets its own Job
    assert name != job_name(dag_id, "train", run_id, 0, 1)


@pytest.mark.parametrize(("value", "expected"), [
    ("manual__2026-11-26T02:36:31.230958+00:00", "manual__2026-11-26T02_36_31.230958_00_00-e1ae5794"),
    ("x" * 100, "x" * 54 + "-09ecb6eb"),
    ("ok", "ok"),  # already valid: unchanged
    ("-lead", "lead-54e05a0b"),
    ("a b", "a_b-c8687a08"),  # changed, so hashed: "a_b" itself stays "a_b"
])
def test_label_values_fit_kubernetes_rules(value, expected):
    clean = label_value(value)
    assert clean == expected
    assert LABEL_VALUE.match(clean) and len(clean) <= 63
    assert label_value("a_b") == "a_b"


def _job(**overrides) -> TrainingJob:
    fields = {"name": "th-x-train-12345678", "algorithm": "sft", "backend": "instructlab-training",
              "params": {"model_path": "/m", "data_path": "/d", "ckpt_output_dir": "/c", "nnodes": 4, "nproc_per_node": 8},
              "nnodes": 4, "nproc_per_node": 8}
    return TrainingJob(**{**fields, **overrides})


def test_job_manifest_has_the_distributed_training_essentials():
    settings = ConnectionSettings(image="img", pvc_claim="data", service_account="trainer", image_pull_secrets=["reg"])
    job = build_job(_job(), settings)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == ("Indexed", 4, 4, 0)
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob" and rules[0]["onExitCodes"]["values"] == [2]
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    # a rank stopped by SIGTERM with its state saved (exit 3): a new pod resumes, not counted
    assert rules[2]["action"] == "Ignore" and rules[2]["onExitCodes"]["values"] == [3]
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["subdomain"] == "th-x-train-12345678"
    assert pod["terminationGracePeriodSeconds"] == 120  # the connection's default
    assert pod["serviceAccountName"] == "trainer" and pod["imagePullSecrets"] == [{"name": "reg"}]
    (container,) = pod["containers"]
    assert container["command"] == ["training-hub"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert json.loads(env["TRAINING_HUB_CONFIG"]) == {"model_path": "/m", "data_path": "/d", "ckpt_output_dir": "/c"}
    assert env["PET_RDZV_ID"] == "th-x-train-12345678" and env["PET_NNODES"] == "4"
    assert env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "115"  # torchrun waits for its ranks within the grace
    long_grace = build_job(_job(), settings.model_copy(update={"termination_grace_period_seconds": 600}))["spec"]["template"]["spec"]
    assert long_grace["terminationGracePeriodSeconds"] == 600
    assert {e["name"]: e.get("value") for e in long_grace["containers"][0]["env"]}["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "595"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert {v["name"] for v in pod["volumes"]} == {"dshm", "training-data"}
    # Pod Security's "restricted" profile, with the image's user (uid 1000)
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert container["resources"]["limits"]["ephemeral-storage"] == "20Gi"  # the kubelet evicts a pod past it
    assert "activeDeadlineSeconds" not in spec  # a task without execution_timeout
    assert build_job(_job(active_deadline_seconds=3600), settings)["spec"]["activeDeadlineSeconds"] == 3600
    service = build_service(_job(), settings)
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["selector"] == {
        "batch.kubernetes.io/job-name": "th-x-train-12345678"}


def test_a_later_try_may_adopt_only_a_job_that_trains_the_same_thing():
    """The name, the rendezvous and the try number change from try to try; the image, the command,
    the topology and each parameter must not."""
    settings = ConnectionSettings(image="img:1", pvc_claim="data")
    ids = task_ids("dag", "train", "run", -1, 1)
    first = build_job(_job(name="th-try-1", annotations=ids, labels={"a": "1"}), settings)
    retry = build_job(_job(name="th-try-2", annotations={**ids, "training-hub/try-number": "2"}), settings)
    assert training_differences(first, retry) == []
    params = {**_job().params, "learning_rate": 2e-5}
    changed = build_job(_job(name="th-try-2", nnodes=2, params=params), ConnectionSettings(image="img:2", pvc_claim="data"))
    assert training_differences(first, changed) == [
        "image 'img:1' then, 'img:2' now", "learning_rate unset then, 2e-05 now", "nnodes '4' then, '2' now"]


def test_pod_user_groups_and_a_cpu_only_cluster_come_from_the_connection():
    """A volume whose directory belongs to another uid, or to a group (an NFS export), is written
    by the pods when the connection names that uid or group; a CPU-only cluster requests no GPU."""
    settings = ConnectionSettings.from_extra({"image": "img", "run_as_user": "2000", "run_as_group": "3000",
                                              "fs_group": "3000", "gpu_resource": "none"})
    pod = build_job(_job(), settings)["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"},
                                      "runAsUser": 2000, "runAsGroup": 3000, "fsGroup": 3000}
    resources = pod["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": "8", "memory": "64Gi", "ephemeral-storage": "20Gi"},
                         "limits": {"memory": "64Gi", "ephemeral-storage": "20Gi"}}
    for root in (0, "0"):  # root would be refused by runAsNonRoot on the node: refused here, before any Job
        with pytest.raises(ValueError, match=r"Invalid parameter 'run_as_user': must be at least 1 \(got"):
            ConnectionSettings.from_extra({"run_as_user": root})
    blank = ConnectionSettings.from_extra({"gpu_resource": ""})  # a blank form field: the default
    assert blank.gpu_resource == "nvidia.com/gpu"


@pytest.mark.parametrize(("cpu", "nproc_per_node", "threads"), [
    ("8", 8, "1"), ("64", 8, "8"), ("500m", 1, "1"), ("2.5", 1, "2"), ("16", 1, "16")])
def test_each_rank_gets_its_share_of_the_cpu_request_as_torch_threads(cpu, nproc_per_node, threads):
    """Not the node's core count, which torch would take: pods that share a node would oversubscribe it."""
    pod = build_job(_job(nproc_per_node=nproc_per_node), ConnectionSettings(image="img", cpu=cpu))
    env = {e["name"]: e.get("value") for e in pod["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["OMP_NUM_THREADS"] == threads


@pytest.mark.parametrize("cpu", ["8 cores", "0", "-1", "1.5k", "0m"])
def test_a_cpu_request_that_is_no_quantity_is_refused_when_the_connection_is_read(cpu):
    with pytest.raises(ValueError, match=rf"^connection of type 'training_hub': Invalid parameter 'cpu': must be a "
                                         rf"positive CPU quantity such as '8', '2.5' or '500m', got '{cpu}'"):
        ConnectionSettings.from_extra({"cpu": cpu})


@pytest.mark.parametrize(("params", "message"), [
    ({"rdzv_endpoint": "h:1", "master_addr": None}, r"^rdzv_endpoint: set by the Job on Kubernetes"),
    ({"master_addr": "m0", "master_port": 1, "node_rank": 0}, r"^node_rank, master_addr, master_port: set by the Job"),
])
def test_parameters_the_job_decides_are_refused(params, message):
    job = _job(params={"model_path": "/m", "data_path": "/d", "ckpt_output_dir": "/c", **params})
    with pytest.raises(ValueError, match=message):
        build_job(job, ConnectionSettings(image="img"))


def test_keyword_nproc_per_node_is_refused_on_kubernetes():
    with pytest.raises(ValueError, match=r"^nproc_per_node='gpu': on Kubernetes give a number, the GPUs each pod requests"):
        build_job(_job(nproc_per_node="gpu"), ConnectionSettings(image="img"))


def test_tracking_credentials_reach_the_pods_by_reference_only(monkeypatch):
    """The Secret's name is in the Job, its values are not; the Airflow ids are there for MLflow's tags."""
    planted = "planted-4f1c9e-token"
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", planted)  # on the worker: must not travel
    ids = task_ids("retrain", "train", "scheduled__2026-12-01", -1, 2)
    params = {"model_path": "/m", "data_path": "/d", "ckpt_output_dir": "/c", "mlflow_tracking_uri": "http://mlflow:5000"}
    settings = ConnectionSettings(image="img", tracking_secret="tracking-creds")
    job = build_job(_job(params=params, annotations=ids), settings)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "tracking-creds"}}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert json.loads(env["TRAINING_HUB_CONFIG"])["mlflow_tracking_uri"] == "http://mlflow:5000"
    assert (env["AIRFLOW_CTX_DAG_ID"], env["AIRFLOW_CTX_DAG_RUN_ID"], env["AIRFLOW_CTX_TASK_ID"],
            env["AIRFLOW_CTX_TRY_NUMBER"]) == ("retrain", "scheduled__2026-12-01", "train", "2")
    assert planted not in json.dumps(job)
    assert "envFrom" not in build_job(_job(), ConnectionSettings(image="img"))["spec"]["template"]["spec"]["containers"][0]


def test_a_run_in_object_storage_needs_no_volume_and_trains_on_a_scratch():
    """No PVC: a size-limited emptyDir scratch, counted in the pod's ephemeral storage, and the
    bucket's credentials from a Secret by reference; a run on the volume gets neither."""
    params = {"model_path": "s3://models/tiny", "data_path": "s3://data/train.parquet", "ckpt_output_dir": "s3://runs/a"}
    settings = ConnectionSettings(image="img", storage_secret="s3-creds", tracking_secret="tracking-creds",
                                  scratch_size="30Gi", ephemeral_storage="2Gi")
    spec = build_job(_job(params=params), settings)["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert {v["name"]: v for v in spec["volumes"]}["scratch"] == {"name": "scratch", "emptyDir": {"sizeLimit": "30Gi"}}
    assert not any("persistentVolumeClaim" in v for v in spec["volumes"])
    assert {"name": "scratch", "mountPath": "/scratch"} in container["volumeMounts"]
    assert {"name": "TRAINING_HUB_SCRATCH", "value": "/scratch"} in container["env"]
    assert container["envFrom"] == [{"secretRef": {"name": "tracking-creds"}}, {"secretRef": {"name": "s3-creds"}}]
    assert container["resources"]["limits"]["ephemeral-storage"] == str(32 * 2**30)
    on_volume = build_job(_job(), settings)["spec"]["template"]["spec"]
    assert "scratch" not in {v["name"] for v in on_volume["volumes"]}
    assert on_volume["containers"][0]["resources"]["limits"]["ephemeral-storage"] == "2Gi"


def test_job_without_an_image_is_a_configuration_error():
    with pytest.raises(ValueError, match="image is not set"):
        build_job(_job(), ConnectionSettings())


def _pod(phase: str, created: datetime, scheduled_message: str | None = None) -> dict:
    conditions = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": scheduled_message}] \
        if scheduled_message else []
    return {"metadata": {"name": "p", "creationTimestamp": created.isoformat(), "annotations": {}},
            "status": {"phase": phase, "conditions": conditions}}


def test_assess_reads_success_failure_and_a_pod_stuck_unscheduled():
    now = datetime.now(timezone.utc)
    done = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    failed = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                         "message": "Job has reached the specified backoff limit"}]}}
    running = {"status": {}}
    assert assess(done, [], 60).status == SUCCEEDED
    assert assess(failed, [], 60).status == FAILED and "BackoffLimitExceeded" in assess(failed, [], 60).message
    young = _pod("Pending", now - timedelta(seconds=10), "0/16 nodes are available: 16 Insufficient nvidia.com/gpu.")
    old = _pod("Pending", now - timedelta(seconds=120), "0/16 nodes are available: 16 Insufficient nvidia.com/gpu.")
    assert assess(running, [young], 60, now).status == RUNNING
    stuck = assess(running, [old], 60, now)
    assert stuck.status == UNSCHEDULABLE and "Insufficient nvidia.com/gpu" in stuck.message


def test_termination_message_keeps_the_newest_checkpoint_within_the_kubernetes_limit():
    result = {"ckpt_output_dir": "/c", "checkpoint": "/c/hf_format/samples_9999",
              "checkpoints": [f"/c/hf_format/samples_{i:04d}" for i in range(500)] + ["/c/hf_format/samples_9999"],
              "full_state": [f"/c/full_state/epoch_{i}" for i in range(50)], "metrics": {"loss": 1.0}}
    message = termination_message(result)
    assert len(message.encode()) <= TERMINATION_MESSAGE_LIMIT
    trimmed = json.loads(message)
    assert trimmed["checkpoint"] == "/c/hf_format/samples_9999" and trimmed["checkpoints"][-1] == trimmed["checkpoint"]
    assert trimmed["metrics"] == {"loss": 1.0}


def test_a_job_that_would_vanish_before_its_result_is_read_is_refused():
    """ttl_seconds_after_finished=0 would let Kubernetes delete the Job, and rank 0's result with
    its pod, before the task reads it."""
    from airflow_provider_training_hub.targets.task_settings import TaskSettings

    base = {"pending_timeout": 900, "job_backoff_limit": 0, "unwatched_timeout": 660}
    with pytest.raises(ValueError, match=r"Invalid parameter 'ttl_seconds_after_finished': must be at least 60 \(got 0\)"):
        TaskSettings.parse({**base, "ttl_seconds_after_finished": 0})
    assert TaskSettings.parse({**base, "ttl_seconds_after_finished": 60}).ttl_seconds_after_finished == 60
