"""Kubernetes execution: each try is an Indexed Job of ``nnodes`` pods and a headless Service.

``kubernetes/`` builds the objects (pure), ``kubernetes_jobs.TrainingJobClient`` talks to the
cluster, ``triggers/training_job.TrainingJobTrigger`` waits in the triggerer. A try's Job name, labels
and annotations follow from the task try alone, so a restarted worker finds its own Job again. A
Job outlives the worker that created it: the next try adopts it (``find``, through the operator's
task state store) when it still trains the same thing, and otherwise finds it by its labels and
removes it before creating its own, since all tries train into one checkpoint directory.
"""

from __future__ import annotations

import posixpath
from functools import cached_property
from typing import Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException
from kubernetes.client import ApiException

from airflow_provider_training_hub.targets.kubernetes_api import PERMANENT, api_error
from airflow_provider_training_hub.targets.kubernetes_jobs import TrainingJobClient
from airflow_provider_training_hub.kubernetes import TrainingJob, build_job, build_service, job_name, label_value
from airflow_provider_training_hub.kubernetes.job import SCRATCH_MOUNT, task_ids, training_differences
from airflow_provider_training_hub.kubernetes.status import (
    JobState,
    ResultUnreadable,
    configuration_error,
    describe_failures,
    rank0_result,
)
from airflow_provider_training_hub.object_storage import is_remote
from airflow_provider_training_hub.run_states import SUCCEEDED, UNSCHEDULABLE
from airflow_provider_training_hub.targets import RUN_URL_KEY, ExecutionTarget, TaskTry, TrainingRun

TRIGGER = "airflow_provider_training_hub.triggers.training_job.TrainingJobTrigger"


def try_job_name(task: TaskTry) -> str:
    return job_name(task.dag_id, task.task_id, task.run_id, task.map_index, task.try_number)


class KubernetesTarget(ExecutionTarget):
    adoptable = True  # a Job trains on without the worker that created it

    @cached_property
    def jobs(self) -> TrainingJobClient:
        return TrainingJobClient(self.settings.kubernetes_conn_id, self.settings.namespace, self.log)

    def default_checkpoint_root(self) -> str:
        return f"{self.settings.pvc_mount_path.rstrip('/')}/checkpoints"

    @staticmethod
    def _identity(task: TaskTry) -> dict[str, dict[str, str]]:
        """The labels (to select by) and annotations (exact) of the Job of ``task``."""
        ids = task_ids(task.dag_id, task.task_id, task.run_id, task.map_index, task.try_number)
        return {"labels": {"app.kubernetes.io/name": "training-hub", "app.kubernetes.io/managed-by": "airflow",
                           **{k: label_value(v) for k, v in ids.items()}},
                "annotations": ids}

    def training_job(self, run: TrainingRun) -> TrainingJob:
        return TrainingJob(
            name=try_job_name(run.task),
            algorithm=run.algorithm,
            backend=run.backend,
            params=run.params.model_dump(mode="json", exclude_unset=True),
            nnodes=getattr(run.params, "nnodes", None) or 1,
            nproc_per_node=getattr(run.params, "nproc_per_node", None) or 1,
            **self._identity(run.task),
            pod_annotations=run.settings.pod_annotations,
            backoff_limit=run.settings.job_backoff_limit,
            ttl_seconds_after_finished=run.settings.ttl_seconds_after_finished,
            active_deadline_seconds=run.settings.active_deadline_seconds,
        )

    def job_manifests(self, job: TrainingJob) -> tuple[dict[str, Any], dict[str, Any]]:
        """The Job and Service of ``job`` with this connection's pod settings (``ValueError`` if
        they cannot work, before anything is sent)."""
        return build_job(job, self.settings), build_service(job, self.settings)

    def check(self, run: TrainingRun) -> None:
        self._check_outputs_on_the_volume(run)
        self.job_manifests(self.training_job(run))
        run.params.check_remote_paths()  # with the worker's credentials: no pod for a bucket they cannot open

    def _check_outputs_on_the_volume(self, run: TrainingRun) -> None:
        """What the pods write must land on the PVC: anything else is written into the container
        and gone with the pod, while the task reports success."""
        mount = posixpath.normpath(self.settings.pvc_mount_path)
        outputs = {name: getattr(run.params, name, None) for name in ("ckpt_output_dir", "data_output_dir")}
        outputs = {name: path for name, path in outputs.items() if path and not is_remote(path)}
        local = outputs.get("ckpt_output_dir")
        if local and getattr(run.params, "checkpoint_uri", None) and _under(SCRATCH_MOUNT, local):
            del outputs["ckpt_output_dir"]  # the pods' scratch, uploaded to checkpoint_storage
        if outputs and not self.settings.pvc_claim:
            raise ValueError(
                f"{', '.join(outputs)}: the pods would write into their containers, which are gone when they end; "
                "set the connection's pvc_claim (and pvc_mount_path) to a volume that keeps them, or give "
                "ckpt_output_dir as an object storage URI (s3://...)."
            )
        for name, path in outputs.items():
            if not _under(mount, path):
                raise ValueError(
                    f"{name} {path!r} is not on the volume: the pods mount PVC {self.settings.pvc_claim!r} at "
                    f"{mount!r}, and anything written elsewhere is gone with the pod. Give a path under {mount}/."
                )

    def find(self, run: TrainingRun, located: dict[str, Any]) -> dict[str, Any] | None:
        name, namespace = located["job_name"], located["namespace"]
        if namespace != self.settings.namespace:
            self.log.warning("Job %s of an earlier try is in namespace %s, and this try's connection names %s: "
                             "not adopting it", name, namespace, self.settings.namespace)
            return None
        existing = self.jobs.find(name)
        if existing is None:
            self.log.info("Job %s of an earlier try is gone (deleted, or removed by its TTL)", name)
            return None
        job_manifest, _ = self.job_manifests(self.training_job(run))
        if differences := training_differences(existing, job_manifest):
            self.log.warning("Job %s of an earlier try trains otherwise than this try would (%s): not adopting it",
                             name, "; ".join(differences))
            return None
        pods = self.jobs.pods(name)
        verdict = self.jobs.assess(existing, pods, run.settings.pending_timeout)
        if verdict.status == SUCCEEDED:
            try:
                rank0_result(pods)
            except ResultUnreadable as exc:  # trained again, it resumes from its last full state
                self.log.warning("Job %s of an earlier try succeeded, but its result cannot be read (%s): "
                                 "not adopting it", name, exc)
                return None
        return {"status": verdict.status, "message": verdict.message, "job_name": name}

    def submit(self, run: TrainingRun) -> dict[str, Any]:
        job = self.training_job(run)
        try:
            self.submit_job(job)
        except ApiException as exc:  # transient ones were retried already
            if exc.status not in PERMANENT:
                raise
            raise AirflowFailException(
                f"The Kubernetes API refused Job {job.name} in namespace {self.settings.namespace!r}: {api_error(exc)}"
            ) from None
        located = {"job_name": job.name, "namespace": self.settings.namespace}
        if self.settings.job_url_template:
            located[RUN_URL_KEY] = self.settings.job_url_template.format(**located)
        return located

    def submit_job(self, job: TrainingJob) -> bool:
        """Create the Job's Service and Job; ``True`` when this try's Job already ran (reattach)."""
        job_manifest, service_manifest = self.job_manifests(job)
        # an earlier try's pods get their grace period to save, then a minute to be removed
        reattached = self.jobs.submit(job, job_manifest, service_manifest,
                                      earlier_tries_timeout=self.settings.termination_grace_period_seconds + 60)
        self.log.info("%s Job %s in namespace %s: %d node(s) x %d process(es), rendezvous at %s",
                      "Reattached to" if reattached else "Created", job.name, self.settings.namespace,
                      job.nnodes, job.nproc_per_node, job.rdzv_endpoint)
        return reattached

    def trigger(self, run: TrainingRun, located: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return TRIGGER, {"job_name": located["job_name"], "namespace": located["namespace"],
                         "kubernetes_conn_id": self.settings.kubernetes_conn_id,
                         "pending_timeout": run.settings.pending_timeout, "poll_interval": run.poll_interval}

    def wait(self, run: TrainingRun, located: dict[str, Any]) -> dict[str, Any]:
        name = located["job_name"]
        state = self.jobs.wait(name, run.settings.pending_timeout, run.poll_interval)
        return {"status": state.status, "message": state.message, "job_name": name}

    def outcome(self, run: TrainingRun, state: dict[str, Any]) -> dict[str, Any]:
        """Rank 0's result for a succeeded Job; otherwise raise with what went wrong. A Job stuck
        unschedulable is deleted, so that it cannot grab GPUs later with nobody watching."""
        name, verdict = state["job_name"], JobState(state["status"], state.get("message", ""))
        _, pods = self.jobs.read(name)
        if verdict.status == SUCCEEDED:
            try:
                return rank0_result(pods)
            except ResultUnreadable as exc:  # retried: the next try returns the finished run's result
                raise AirflowException(f"Job {name} succeeded, but its result cannot be read: {exc}") from None
        if verdict.status == UNSCHEDULABLE:
            self.jobs.delete(name)
            raise AirflowException(f"Job {name}: {verdict.message}")
        failures = "\n".join(describe_failures(pods)) or "(no failed pod left to inspect)"
        if configuration_error(pods):
            raise AirflowFailException(f"Job {name} failed on a configuration error (exit code 2; not retried): "
                                       f"{verdict.message}\n{failures}")
        raise AirflowException(f"Job {name} failed: {verdict.message}\n{failures}")

    def kill(self, task: TaskTry) -> None:
        """Every try's Job of the task instance: a try that adopted an earlier try's Job stops that one."""
        for job in self.jobs.task_instance_jobs(**self._identity(task)):
            self.jobs.delete(job["metadata"]["name"])

    def test_connection(self) -> str:
        self.jobs.hook.batch_v1_client.list_namespaced_job(self.settings.namespace, limit=1)
        return f"Kubernetes API reachable; Jobs in namespace {self.settings.namespace!r} readable."


def _under(directory: str, path: str) -> bool:
    """Whether ``path`` (relative ones from ``directory``) lies within ``directory``."""
    return posixpath.commonpath([directory, posixpath.normpath(posixpath.join(directory, path))]) == directory
