"""One training run as Kubernetes objects: an Indexed ``batch/v1`` Job of ``nnodes`` pods and the
headless Service that gives pod 0 a stable DNS name for the rendezvous.

Each pod runs ``training-hub <algorithm> --config-env TRAINING_HUB_CONFIG`` (an argument list, no
shell); the parameters travel as JSON in that variable, and the per-pod torchrun settings as the
``PET_*`` variables that ``torchrun.py`` reads: the node rank is the Job completion index (downward
API), the rendezvous endpoint is ``<job>-0.<service>:<port>``. Rank 0's result (checkpoint paths
and metrics) is its container's termination message, readable without mounting the volume.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_training_hub.algorithms.launch import EXIT_STOPPED, stop_environment
from airflow_provider_training_hub.algorithms.scratch import REMOTE_CAPABLE, SCRATCH_ENV
from airflow_provider_training_hub.algorithms.tracking import AIRFLOW_CONTEXT_ENV
from airflow_provider_training_hub.cli import EXIT_BAD_CONFIG
from airflow_provider_training_hub.connection import NO_GPU, ConnectionSettings, cpu_cores
from airflow_provider_training_hub.object_storage import is_remote
from airflow_provider_training_hub.run_identity import differences

CONTAINER = "trainer"
CONFIG_ENV = "TRAINING_HUB_CONFIG"
TERMINATION_LOG = "/dev/termination-log"
SCRATCH_MOUNT = "/scratch"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # set by the Job controller on each of its pods
# The Airflow ids of a task's Job, as labels (to select by; long values shortened with a hash)
# and as annotations (exact).
TASK_ID_KEYS = tuple(f"training-hub/{k}" for k in ("dag-id", "task-id", "run-id", "map-index"))
TRY_ANNOTATION = "training-hub/try-number"
_DAG_ENV, _RUN_ENV, _TASK_ENV, _TRY_ENV = AIRFLOW_CONTEXT_ENV
# annotation -> the variable Airflow exports for it to a task's own processes
AIRFLOW_CONTEXT = {TASK_ID_KEYS[0]: _DAG_ENV, TASK_ID_KEYS[1]: _TASK_ENV, TASK_ID_KEYS[2]: _RUN_ENV,
                   TRY_ANNOTATION: _TRY_ENV}


def task_ids(dag_id: str, task_id: str, run_id: str, map_index: int, try_number: int) -> dict[str, str]:
    """The ids of one task try, under the keys above (no map index for an unmapped task)."""
    dag_key, task_key, run_key, map_key = TASK_ID_KEYS
    ids = {dag_key: dag_id, task_key: task_id, run_key: run_id, TRY_ANNOTATION: str(try_number)}
    if map_index >= 0:
        ids[map_key] = str(map_index)
    return ids
# Decided by the Job, not by the parameters: per-pod or per-job values travel as PET_* instead.
TOPOLOGY_PARAMS = ("nnodes", "nproc_per_node", "node_rank", "rdzv_id", "rdzv_endpoint", "master_addr", "master_port")
# Of those, the ones a task cannot choose: each pod's rank is its completion index, and rank 0's
# pod is the rendezvous, through the headless Service.
JOB_DECIDES = TOPOLOGY_PARAMS[2:]


@dataclass(frozen=True)
class TrainingJob:
    """What to run, and the Job-level knobs; pod settings come from ``ConnectionSettings``."""

    name: str
    algorithm: str
    backend: str
    params: dict[str, Any]
    nnodes: int = 1
    nproc_per_node: int | str = 1  # a str ('auto', 'gpu') is refused: the pods' GPU request needs a number
    rdzv_port: int = 29500
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    pod_annotations: dict[str, str] = field(default_factory=dict)
    backoff_limit: int = 0
    ttl_seconds_after_finished: int | None = 86400
    active_deadline_seconds: int | None = None  # the task's execution_timeout: no pod outlives its task

    @property
    def rdzv_endpoint(self) -> str:
        return f"{self.name}-0.{self.name}:{self.rdzv_port}"

    @property
    def selector(self) -> dict[str, str]:
        return {JOB_NAME_LABEL: self.name}

    def is_other_try(self, annotations: dict[str, str]) -> bool:
        """Whether a Job with ``annotations`` belongs to another try of this task instance."""
        return (same_task_instance(annotations, self.annotations)
                and annotations.get(TRY_ANNOTATION) != self.annotations.get(TRY_ANNOTATION))


def task_instance_selector(labels: dict[str, str]) -> str:
    """The label selector of every try's Job of the task instance whose Job has ``labels``; empty
    for a Job of no task."""
    ids = {k: labels[k] for k in TASK_ID_KEYS if k in labels}
    if not ids:
        return ""
    return ",".join([f"{k}={v}" for k, v in ids.items()] + [f"!{k}" for k in TASK_ID_KEYS if k not in ids])


def same_task_instance(annotations: dict[str, str], other: dict[str, str]) -> bool:
    """Whether two Jobs' annotations name one task instance (any tries): the labels select by
    shortened values, the annotations hold the exact ids."""
    return all(annotations.get(k) == other.get(k) for k in TASK_ID_KEYS)


def training_differences(existing: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """How the Job ``existing`` trains otherwise than the manifest ``wanted`` would (image, command,
    topology, each parameter), one phrase each; empty when a later try may adopt it as its own
    run. The rest of a Job (names, the rendezvous, the try number) differs between tries anyway."""

    def training(job: dict[str, Any]) -> dict[str, Any]:
        container = next(c for c in job["spec"]["template"]["spec"]["containers"] if c["name"] == CONTAINER)
        env = {e["name"]: e.get("value") for e in container.get("env") or []}
        return {"image": container.get("image"), "command": [*(container.get("command") or []), *(container.get("args") or [])],
                "nnodes": env.get("PET_NNODES"), "nproc_per_node": env.get("PET_NPROC_PER_NODE"),
                **json.loads(env.get(CONFIG_ENV) or "{}")}

    return differences({"parameters": training(existing)}, {"parameters": training(wanted)})


def pod_selector(job_name: str) -> str:
    """The label selector of a Job's pods, for listing them."""
    return f"{JOB_NAME_LABEL}={job_name}"


def build_service(job: TrainingJob, settings: ConnectionSettings) -> dict[str, Any]:
    """Headless, and publishing not-ready addresses: rank 0 must resolve before it is Ready."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": job.name, "namespace": settings.namespace, "labels": job.labels},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": job.selector,
            "ports": [{"name": "rendezvous", "port": job.rdzv_port, "targetPort": job.rdzv_port}],
        },
    }


def _env(job: TrainingJob, settings: ConnectionSettings) -> list[dict[str, Any]]:
    config = {k: v for k, v in job.params.items() if k not in TOPOLOGY_PARAMS and v is not None}
    stop = stop_environment(settings.termination_grace_period_seconds)
    return [
        {"name": CONFIG_ENV, "value": json.dumps(config, sort_keys=True)},
        {"name": "PET_NNODES", "value": str(job.nnodes)},
        {"name": "PET_NPROC_PER_NODE", "value": str(job.nproc_per_node)},
        {
            "name": "PET_NODE_RANK",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}},
        },
        {"name": "PET_RDZV_ENDPOINT", "value": job.rdzv_endpoint},
        {"name": "PET_RDZV_ID", "value": job.name},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        # torch sizes its thread pool by the node's cores, not by the pod's share, so ranks of
        # pods sharing a node oversubscribe it. torchrun sets 1 only when it starts several
        # ranks; here each rank gets its part of the pod's CPU request.
        {"name": "OMP_NUM_THREADS", "value": str(max(1, int(cpu_cores(settings.cpu) // job.nproc_per_node)))},
        *({"name": name, "value": value} for name, value in stop.items()),
        # The Airflow ids, under the names Airflow exports to a task's own processes (MLflow tags).
        *({"name": name, "value": job.annotations[key]}
          for key, name in AIRFLOW_CONTEXT.items() if key in job.annotations),
    ]


def uses_object_storage(job: TrainingJob) -> bool:
    """Whether the run reads or writes object storage, and so trains on a scratch ``emptyDir``."""
    return any(is_remote(job.params.get(name)) for name in REMOTE_CAPABLE)


def _resources(job: TrainingJob, settings: ConnectionSettings) -> dict[str, Any]:
    disk = settings.ephemeral_storage
    if uses_object_storage(job):  # the scratch emptyDir counts against the pod's ephemeral storage
        disk = str((settings.ephemeral_storage_bytes or 0) + settings.scratch_bytes)
    requests: dict[str, str] = {"cpu": settings.cpu, "memory": settings.memory, "ephemeral-storage": disk}
    limits: dict[str, str] = {"memory": settings.memory, "ephemeral-storage": disk}
    if settings.gpu_resource != NO_GPU:  # extended resources: request == limit
        requests[settings.gpu_resource] = limits[settings.gpu_resource] = str(job.nproc_per_node)
    return {"requests": requests, "limits": limits}


def _pod_spec(job: TrainingJob, settings: ConnectionSettings) -> dict[str, Any]:
    if not settings.image:
        raise ValueError("image is not set: name the training image in the connection or the task")
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}}]
    if settings.pvc_claim:
        mounts.append({"name": "training-data", "mountPath": settings.pvc_mount_path})
        volumes.append({"name": "training-data", "persistentVolumeClaim": {"claimName": settings.pvc_claim}})
    env = _env(job, settings)
    secrets = [s for s in (settings.tracking_secret, settings.storage_secret) if s]
    if uses_object_storage(job):
        mounts.append({"name": "scratch", "mountPath": SCRATCH_MOUNT})
        volumes.append({"name": "scratch", "emptyDir": {"sizeLimit": settings.scratch_size}})
        env.append({"name": SCRATCH_ENV, "value": SCRATCH_MOUNT})
    container = {
        "name": CONTAINER,
        "image": settings.image,
        "command": ["training-hub"],
        "args": [job.algorithm, "--backend", job.backend, "--config-env", CONFIG_ENV,
                 "--termination-message", TERMINATION_LOG],
        "env": env,
        # Credentials by reference: the Secrets' values reach the process, never the Job object.
        **({"envFrom": [{"secretRef": {"name": name}} for name in secrets]} if secrets else {}),
        "ports": [{"name": "rendezvous", "containerPort": job.rdzv_port}],
        "resources": _resources(job, settings),
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",  # a crash reports its last log lines
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # SIGTERM first (the training-hub process passes it on; the ranks save at the current
        # step), SIGKILL after this long.
        "terminationGracePeriodSeconds": settings.termination_grace_period_seconds,
        "subdomain": job.name,  # with the Indexed Job's hostname <job>-<index>: <job>-0.<job> resolves
        "containers": [container],
        "volumes": volumes,
        # Pod Security's "restricted" profile: non-root, the runtime's seccomp profile, and (in the
        # container) no capabilities and no privilege escalation.
        "securityContext": {
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
            **{key: value for key, value in (("runAsUser", settings.run_as_user), ("runAsGroup", settings.run_as_group),
                                             ("fsGroup", settings.fs_group)) if value is not None},
        },
    }
    optional = {
        "nodeSelector": settings.node_selector,
        "tolerations": settings.tolerations,
        "affinity": settings.affinity,
        "serviceAccountName": settings.service_account,
        "imagePullSecrets": [{"name": s} for s in settings.image_pull_secrets],
    }
    spec.update({k: v for k, v in optional.items() if v})
    return spec


def build_job(job: TrainingJob, settings: ConnectionSettings) -> dict[str, Any]:
    """The Indexed Job; ``ValueError`` for what the cluster would reject or mis-run."""
    chosen = [name for name in JOB_DECIDES if job.params.get(name) is not None]
    if chosen:
        raise ValueError(
            f"{', '.join(chosen)}: set by the Job on Kubernetes (ranks from completion indexes, the rendezvous "
            "at rank 0's pod); leave them unset."
        )
    if not isinstance(job.nproc_per_node, int):
        raise ValueError(
            f"nproc_per_node={job.nproc_per_node!r}: on Kubernetes give a number, the GPUs each pod requests "
            "(a pod cannot count a node's GPUs before it is scheduled)."
        )
    if job.nnodes < 1 or job.nproc_per_node < 1:
        raise ValueError(f"nnodes and nproc_per_node must be >= 1, got {job.nnodes} and {job.nproc_per_node}")
    spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": job.nnodes,
        "parallelism": job.nnodes,
        "backoffLimit": job.backoff_limit,
        "podFailurePolicy": {
            "rules": [
                # Bad configuration: every retry would fail the same way.
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                                      "values": [EXIT_BAD_CONFIG]}},
                # Evicted, preempted, node drained: not the training's fault, not counted.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                # Stopped by SIGTERM after saving its state (a rank's pod was preempted, and all
                # ranks stopped at the same step): a new pod resumes there, not counted either.
                {"action": "Ignore", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                                     "values": [EXIT_STOPPED]}},
            ]
        },
        "template": {
            "metadata": {"labels": job.labels, "annotations": job.pod_annotations},
            "spec": _pod_spec(job, settings),
        },
    }
    if job.ttl_seconds_after_finished is not None:
        spec["ttlSecondsAfterFinished"] = job.ttl_seconds_after_finished
    if job.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = job.active_deadline_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job.name, "namespace": settings.namespace, "labels": job.labels,
                     "annotations": job.annotations},
        "spec": spec,
    }
