"""Submitting, watching and removing training Jobs with cncf-kubernetes' ``KubernetesHook``
(its connection handles kubeconfig, in-cluster config and contexts; nothing is re-implemented).

Every API call goes through ``_call``: bounded by a timeout, and retried on transient errors
(``kubernetes_api``). Jobs are created only after every earlier try's Job of the same task instance is
gone, since all tries train into one checkpoint directory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cached_property
from typing import Any, TypeVar

from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
from kubernetes.client import ApiException

from airflow_provider_training_hub.log_lines import level
from airflow_provider_training_hub.targets.kubernetes_api import BEST_EFFORT_FAILURES, REQUEST_TIMEOUT, retry_transient
from airflow_provider_training_hub.kubernetes.job import (
    TRY_ANNOTATION,
    TrainingJob,
    pod_selector,
    same_task_instance,
    task_instance_selector,
)
from airflow_provider_training_hub.kubernetes.pod_log import LogCursor, rank0_pod
from airflow_provider_training_hub.kubernetes.status import JobState, assess, job_events_selector, needs_events
from airflow_provider_training_hub.run_states import FAILED

T = TypeVar("T")


class TrainingJobClient:
    """The Job and Service of one training run in ``namespace``."""

    def __init__(self, kubernetes_conn_id: str, namespace: str, log: Any) -> None:
        self.kubernetes_conn_id = kubernetes_conn_id
        self.namespace = namespace
        self.log = log
        self._log_error_reported = False

    @cached_property
    def hook(self) -> KubernetesHook:
        return KubernetesHook(conn_id=self.kubernetes_conn_id)

    def _plain(self, obj: Any) -> Any:
        return self.hook.api_client.sanitize_for_serialization(obj)

    @retry_transient
    def _call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return method(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)

    def submit(
        self, job: TrainingJob, job_manifest: dict[str, Any], service_manifest: dict[str, Any], earlier_tries_timeout: float
    ) -> bool:
        """Create the Service and the Job; ``True`` if this try's Job already existed (a restarted
        worker reattaches instead of launching a second run). The Service is made the Job's
        dependent, so whatever deletes the Job (its TTL, a user) deletes the Service too."""
        self.remove_earlier_tries(job, earlier_tries_timeout)
        try:
            self._call(self.hook.core_v1_client.create_namespaced_service, self.namespace, service_manifest)
        except ApiException as exc:
            if exc.status != 409:
                raise
        try:
            created = self._plain(self._call(self.hook.batch_v1_client.create_namespaced_job, self.namespace, job_manifest))
            self._own_service(job.name, created["metadata"]["uid"])
            return False
        except ApiException as exc:
            if exc.status != 409:
                raise
        existing = self._plain(self._call(self.hook.batch_v1_client.read_namespaced_job, job.name, self.namespace))
        labels = existing["metadata"].get("labels") or {}
        # Ours if it carries our labels; an admission webhook (Kueue, Kyverno) may have added more.
        if any(labels.get(key) != value for key, value in job.labels.items()):
            raise ValueError(
                f"Job {job.name!r} exists in {self.namespace!r} but was not created by this task try "
                f"(labels {labels})"
            )
        self._own_service(job.name, existing["metadata"]["uid"])
        return True

    def _own_service(self, name: str, job_uid: str) -> None:
        """Make the Job the Service's owner; if that fails for good, the task fails, so its Job
        must not train on unwatched: it is deleted, with the Service."""
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job_uid}
        try:
            self._call(self.hook.core_v1_client.patch_namespaced_service, name, self.namespace,
                       {"metadata": {"ownerReferences": [owner]}})
        except BaseException:
            self.log.error("Job %s was created but its Service could not be given to it; deleting both", name)
            try:
                self.delete(name)
            except Exception as exc:  # the first error is the one to report
                self.log.error("Job %s could not be deleted either: %s", name, exc)
            raise

    def remove_earlier_tries(self, job: TrainingJob, timeout: float) -> None:
        """Delete the Jobs that earlier tries of this task instance left (a worker killed while it
        waited, a try failed by the API), and wait until they and their pods are gone."""
        tries = self.task_instance_jobs(job.labels, job.annotations)
        earlier = [j for j in tries if job.is_other_try(j["metadata"].get("annotations") or {})]
        for old in earlier:
            name = old["metadata"]["name"]
            self.log.warning("Job %s of try %s of this task is still there; deleting it (and its pods) before "
                             "this try's Job, so that two runs never write one checkpoint directory",
                             name, old["metadata"]["annotations"].get(TRY_ANNOTATION))
            self.delete(name)
        deadline = time.monotonic() + timeout
        for old in earlier:
            name = old["metadata"]["name"]
            while self.find(name) is not None or self.pods(name):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Job {name} of an earlier try was deleted but it or its pods are still "
                                       f"there after {timeout:.0f}s; not starting a second run")
                time.sleep(1)

    def task_instance_jobs(self, labels: dict[str, str], annotations: dict[str, str]) -> list[dict[str, Any]]:
        """The Jobs of every try of the task instance whose Job has ``labels`` and ``annotations``."""
        if not (selector := task_instance_selector(labels)):  # not a task's Job: nothing to compare with
            return []
        listed = self._call(self.hook.batch_v1_client.list_namespaced_job, self.namespace, label_selector=selector)
        return [j for j in self._plain(listed)["items"]
                if same_task_instance(j["metadata"].get("annotations") or {}, annotations)]

    def find(self, name: str) -> dict[str, Any] | None:
        """The Job ``name``, or ``None`` when there is none."""
        try:
            return self._plain(self._call(self.hook.batch_v1_client.read_namespaced_job, name, self.namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def pods(self, name: str) -> list[dict[str, Any]]:
        listed = self._call(self.hook.core_v1_client.list_namespaced_pod, self.namespace, label_selector=pod_selector(name))
        return self._plain(listed)["items"]

    def read(self, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        job = self._plain(self._call(self.hook.batch_v1_client.read_namespaced_job, name, self.namespace))
        return job, self.pods(name)

    def events(self, name: str) -> list[dict[str, Any]]:
        listed = self._call(self.hook.core_v1_client.list_namespaced_event, self.namespace,
                            field_selector=job_events_selector(name))
        return self._plain(listed)["items"]

    def assess(self, job: dict[str, Any], pods: list[dict[str, Any]], pending_timeout: float) -> JobState:
        """``status.assess``, with the Job's events where they are needed to judge it."""
        events = self.events(job["metadata"]["name"]) if needs_events(job, pods) else []
        return assess(job, pods, pending_timeout, events=events)

    def wait(self, name: str, pending_timeout: float, poll_interval: float) -> JobState:
        """Poll until the Job ends or a pod stays unschedulable past ``pending_timeout``; log
        pod-phase changes, the scheduler's reasons, and rank 0's log lines as they come."""
        last = ""
        cursor = LogCursor()
        while True:
            try:
                job, pods = self.read(name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                return JobState(FAILED, f"Job {name} no longer exists in {self.namespace} (deleted by someone else?)")
            state = self.assess(job, pods, pending_timeout)
            if (progress := state.progress(name)) != last:
                last = progress
                self.log.info("%s", last)
            self._stream_rank0_log(pods, cursor)
            if state.finished:
                return state
            time.sleep(poll_interval)

    def _stream_rank0_log(self, pods: list[dict[str, Any]], cursor: LogCursor) -> None:
        """Best effort, not retried: a pod whose kubelet cannot serve logs must not fail or slow the task."""
        pod = rank0_pod(pods)
        if pod is None:
            return
        try:
            # The raw body: kubernetes 36 returns the repr of the bytes ("b'...'") as the text.
            text = self.hook.core_v1_client.read_namespaced_pod_log(
                pod, self.namespace, _request_timeout=REQUEST_TIMEOUT, _preload_content=False, **cursor.request()
            ).data.decode("utf-8", "replace")
        except BEST_EFFORT_FAILURES as exc:
            if not self._log_error_reported:
                self.log.info("Rank 0's log (pod %s) is not readable now: %s", pod, getattr(exc, "reason", exc))
                self._log_error_reported = True
            return
        for line in cursor.new_lines(text):
            self.log.log(level(line), "[%s] %s", pod, line)

    def delete(self, name: str) -> None:
        """Delete the Job (foreground: its pods go first) and the Service; absent ones are fine."""
        for delete in (
            lambda: self._call(self.hook.batch_v1_client.delete_namespaced_job, name, self.namespace,
                               propagation_policy="Foreground"),
            lambda: self._call(self.hook.core_v1_client.delete_namespaced_service, name, self.namespace),
        ):
            _ignore_missing(delete)
        self.log.info("Deleted Job and Service %s in %s", name, self.namespace)


def _ignore_missing(call: Callable[[], Any]) -> None:
    try:
        call()
    except ApiException as exc:
        if exc.status != 404:
            raise
