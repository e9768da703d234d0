"""Submitting, watching and removing training Jobs with cncf-kubernetes' ``KubernetesHook``
(its connection handles kubeconfig, in-cluster config and contexts; nothing is re-implemented).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
from kubernetes.client import ApiException

from airflow_provider_training_hub.kubernetes.job import CONTAINER, TrainingJob, pod_selector
from airflow_provider_training_hub.kubernetes.status import JobState, assess, completion_index


class TrainingJobClient:
    """The Job and Service of one training run in ``namespace``."""

    def __init__(self, kubernetes_conn_id: str, namespace: str, log: Any) -> None:
        self.kubernetes_conn_id = kubernetes_conn_id
        self.namespace = namespace
        self.log = log
        self._log_since: datetime | None = None
        self._log_error_reported = False

    @cached_property
    def hook(self) -> KubernetesHook:
        return KubernetesHook(conn_id=self.kubernetes_conn_id)

    def _plain(self, obj: Any) -> Any:
        return self.hook.api_client.sanitize_for_serialization(obj)

    def submit(self, job: TrainingJob, job_manifest: dict[str, Any], service_manifest: dict[str, Any]) -> bool:
        """Create the Service and the Job; ``True`` if this try's Job already existed (a restarted
        worker reattaches instead of launching a second run)."""
        try:
            self.hook.core_v1_client.create_namespaced_service(self.namespace, service_manifest)
        except ApiException as exc:
            if exc.status != 409:
                raise
        try:
            self.hook.batch_v1_client.create_namespaced_job(self.namespace, job_manifest)
            return False
        except ApiException as exc:
            if exc.status != 409:
                raise
        existing = self._plain(self.hook.batch_v1_client.read_namespaced_job(job.name, self.namespace))
        if existing["metadata"].get("labels") != job.labels:
            raise ValueError(
                f"Job {job.name!r} exists in {self.namespace!r} but was not created by this task try "
                f"(labels {existing['metadata'].get('labels')})"
            )
        return True

    def read(self, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        job = self._plain(self.hook.batch_v1_client.read_namespaced_job(name, self.namespace))
        pods = self._plain(
            self.hook.core_v1_client.list_namespaced_pod(self.namespace, label_selector=pod_selector(name))
        )["items"]
        return job, pods

    def wait(self, name: str, pending_timeout: float, poll_interval: float) -> JobState:
        """Poll until the Job ends or a pod stays unschedulable past ``pending_timeout``; log
        pod-phase changes, the scheduler's reasons, and rank 0's log lines as they come."""
        last: tuple[Any, ...] = ()
        while True:
            job, pods = self.read(name)
            state = assess(job, pods, pending_timeout)
            progress = (state.status, tuple(sorted(state.phases.items())), state.waiting)
            if progress != last:
                self.log.info("Job %s: %s; pods %s%s", name, state.status, state.phases or "not created yet",
                              "".join(f"; waiting for a node: {r}" for r in state.waiting))
                last = progress
            self._stream_rank0_log(pods)
            if state.finished:
                return state
            time.sleep(poll_interval)

    def _stream_rank0_log(self, pods: list[dict[str, Any]]) -> None:
        """Best effort: a pod whose kubelet cannot serve logs must not fail the task."""
        rank0 = [p for p in pods if completion_index(p) == 0 and p["status"].get("phase") in ("Running", "Succeeded", "Failed")]
        if not rank0:
            return
        pod = rank0[-1]["metadata"]["name"]
        try:
            kwargs: dict[str, Any] = {"container": CONTAINER, "timestamps": True}
            if self._log_since:
                kwargs["since_seconds"] = max(1, int((datetime.now(timezone.utc) - self._log_since).total_seconds()) + 1)
            text = self.hook.core_v1_client.read_namespaced_pod_log(pod, self.namespace, **kwargs)
        except ApiException as exc:
            if not self._log_error_reported:
                self.log.info("Rank 0's log (pod %s) is not readable yet: %s", pod, exc.reason)
                self._log_error_reported = True
            return
        for line in text.splitlines():
            stamp, _, message = line.partition(" ")
            try:
                when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            except ValueError:
                when = None
            if when and self._log_since and when <= self._log_since:
                continue
            self.log.info("[%s] %s", pod, message)
            if when:
                self._log_since = when

    def delete(self, name: str) -> None:
        """Delete the Job (foreground: its pods go first) and the Service; absent ones are fine."""
        for delete in (
            lambda: self.hook.batch_v1_client.delete_namespaced_job(name, self.namespace, propagation_policy="Foreground"),
            lambda: self.hook.core_v1_client.delete_namespaced_service(name, self.namespace),
        ):
            _ignore_missing(delete)
        self.log.info("Deleted Job and Service %s in %s", name, self.namespace)


def _ignore_missing(call: Callable[[], Any]) -> None:
    try:
        call()
    except ApiException as exc:
        if exc.status != 404:
            raise
