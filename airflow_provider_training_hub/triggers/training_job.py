"""``TrainingJobTrigger``: waits for a training Job in the triggerer, freeing the worker slot.

It keeps no state of its own (the verdict comes from the API objects, see ``kubernetes.status``),
so a triggerer restart resumes watching where it was (rank 0's log is then shown again from its
first line). It logs what the polling operator logs: pod phases, the scheduler's reasons, rank 0's
log lines; and it retries transient API errors as the operator does (``targets.kubernetes_api``).

``cleanup()`` is left alone: it runs on every triggerer shutdown and must not stop the training;
``on_kill()``, called when a user marks the deferred task failed or clears it, deletes the Job and
its Service.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook
from airflow.triggers.base import BaseTrigger, TriggerEvent
from kubernetes_asyncio import client as async_client
from kubernetes_asyncio.client.exceptions import ApiException

from airflow_provider_training_hub.targets.kubernetes_api import BEST_EFFORT_FAILURES, REQUEST_TIMEOUT, retry_transient
from airflow_provider_training_hub.kubernetes.job import pod_selector
from airflow_provider_training_hub.kubernetes.pod_log import LogCursor, rank0_pod
from airflow_provider_training_hub.kubernetes.status import FAILED, assess, job_events_selector, needs_events


class TrainingJobTrigger(BaseTrigger):
    def __init__(
        self, job_name: str, namespace: str, kubernetes_conn_id: str, pending_timeout: float, poll_interval: float = 10
    ) -> None:
        super().__init__()
        self.job_name = job_name
        self.namespace = namespace
        self.kubernetes_conn_id = kubernetes_conn_id
        self.pending_timeout = pending_timeout
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job_name": self.job_name,
                "namespace": self.namespace,
                "kubernetes_conn_id": self.kubernetes_conn_id,
                "pending_timeout": self.pending_timeout,
                "poll_interval": self.poll_interval,
            },
        )

    def _event(self, status: str, message: str = "") -> TriggerEvent:
        return TriggerEvent({"status": status, "message": message, "job_name": self.job_name, "namespace": self.namespace})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = AsyncKubernetesHook(conn_id=self.kubernetes_conn_id)
        last = ""
        cursor = LogCursor()
        log_error_reported = False
        while True:
            async with hook.get_conn() as api:
                try:
                    job, pods, events = await self._read(api)
                except ApiException as exc:
                    if exc.status == 404:
                        yield self._event(FAILED, f"Job {self.job_name} no longer exists in {self.namespace}")
                        return
                    raise
                state = assess(job, pods, self.pending_timeout, events=events)
                if (progress := state.progress(self.job_name)) != last:
                    last = progress
                    self.log.info("%s", last)
                if pod := rank0_pod(pods):  # best effort, not retried, as in polling mode
                    try:
                        # The raw body, as in polling mode (the clients' decoding mangles log text).
                        response = await async_client.CoreV1Api(api).read_namespaced_pod_log(
                            pod, self.namespace, _request_timeout=REQUEST_TIMEOUT, _preload_content=False,
                            **cursor.request()
                        )
                        text = (await response.read()).decode("utf-8", "replace")
                        for line in cursor.new_lines(text):
                            self.log.info("[%s] %s", pod, line)
                    except BEST_EFFORT_FAILURES as exc:
                        if not log_error_reported:
                            self.log.info("Rank 0's log (pod %s) is not readable now: %s", pod, getattr(exc, "reason", exc))
                            log_error_reported = True
            if state.finished:
                yield self._event(state.status, state.message)
                return
            await asyncio.sleep(self.poll_interval)

    @retry_transient
    async def _read(self, api: Any) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
        """The Job, its pods and, where ``assess`` needs them, its events."""
        core = async_client.CoreV1Api(api)
        job = api.sanitize_for_serialization(await async_client.BatchV1Api(api).read_namespaced_job(
            self.job_name, self.namespace, _request_timeout=REQUEST_TIMEOUT
        ))
        pods = api.sanitize_for_serialization(await core.list_namespaced_pod(
            self.namespace, label_selector=pod_selector(self.job_name), _request_timeout=REQUEST_TIMEOUT
        ))["items"]
        events = []
        if needs_events(job, pods):
            events = api.sanitize_for_serialization(await core.list_namespaced_event(
                self.namespace, field_selector=job_events_selector(self.job_name), _request_timeout=REQUEST_TIMEOUT
            ))["items"]
        return job, pods, events

    async def on_kill(self) -> None:
        hook = AsyncKubernetesHook(conn_id=self.kubernetes_conn_id)
        async with hook.get_conn() as api:
            for delete in (
                async_client.BatchV1Api(api).delete_namespaced_job(
                    self.job_name, self.namespace, propagation_policy="Foreground"
                ),
                async_client.CoreV1Api(api).delete_namespaced_service(self.job_name, self.namespace),
            ):
                try:
                    await delete
                except ApiException as exc:
                    if exc.status != 404:
                        raise
        self.log.info("Deleted Job and Service %s in %s", self.job_name, self.namespace)
