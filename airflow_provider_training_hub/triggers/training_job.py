"""``TrainingJobTrigger``: waits for a training Job in the triggerer, freeing the worker slot.

It keeps no state of its own (the verdict comes from the API objects, see ``kubernetes.status``),
so a triggerer restart resumes watching where it was (rank 0's log is then shown again from its
first line). It logs what the polling operator logs: pod phases, the scheduler's reasons, rank 0's
log lines; and it retries transient API errors as the operator does (``targets.kubernetes_api``).
An outage beyond those retries (an API server restarting, the connection store unreachable) is
waited out for up to ``OUTAGE_GRACE_SECONDS``: giving up would fail the task and delete its Job,
which trains on regardless.

``cleanup()`` is left alone: it runs on every triggerer shutdown and must not stop the training;
``on_kill()``, called when a user marks the deferred task failed or clears it, deletes the Job and
its Service.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook
from airflow.triggers.base import BaseTrigger, TriggerEvent
from kubernetes_asyncio import client as async_client
from kubernetes_asyncio.client.exceptions import ApiException

from airflow_provider_training_hub.log_lines import level
from airflow_provider_training_hub.targets.kubernetes_api import (
    BEST_EFFORT_FAILURES,
    PERMANENT,
    REQUEST_TIMEOUT,
    retry_transient,
)
from airflow_provider_training_hub.kubernetes.job import pod_selector
from airflow_provider_training_hub.kubernetes.pod_log import LogCursor, rank0_pod
from airflow_provider_training_hub.kubernetes.status import assess, job_events_selector, needs_events
from airflow_provider_training_hub.run_states import FAILED

# How long an unreachable API server is waited out (each call has retried already) before the
# trigger gives up on the Job.
OUTAGE_GRACE_SECONDS = 900


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
        unreachable_since: float | None = None
        while True:
            try:
                async with hook.get_conn() as api:
                    job, pods, events = await self._read(api)
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
                                self.log.log(level(line), "[%s] %s", pod, line)
                        except BEST_EFFORT_FAILURES as exc:
                            if not log_error_reported:
                                self.log.info("Rank 0's log (pod %s) is not readable now: %s", pod,
                                              getattr(exc, "reason", exc))
                                log_error_reported = True
            except ApiException as exc:
                if exc.status == 404:
                    yield self._event(FAILED, f"Job {self.job_name} no longer exists in {self.namespace}")
                    return
                if exc.status in PERMANENT:
                    raise
                unreachable_since = self._outage(unreachable_since, exc)
            except Exception as exc:  # a lost API server or connection store, beyond the calls' own retries
                unreachable_since = self._outage(unreachable_since, exc)
            else:
                if unreachable_since is not None:
                    self.log.info("The Kubernetes API answers again after %.0fs", time.monotonic() - unreachable_since)
                    unreachable_since = None
                if state.finished:
                    yield self._event(state.status, state.message)
                    return
            if unreachable_since is not None and time.monotonic() - unreachable_since > OUTAGE_GRACE_SECONDS:
                yield self._event(FAILED, f"the Kubernetes API could not be reached for {OUTAGE_GRACE_SECONDS}s")
                return
            await asyncio.sleep(self.poll_interval)

    def _outage(self, since: float | None, exc: BaseException) -> float:
        """An API outage rides out: the Job trains on without us, and a trigger that gave up
        would have the task delete a healthy Job. Logged once, when it begins."""
        if since is None:
            self.log.warning("The Kubernetes API cannot be reached (%s: %s); still waiting for Job %s, for up to %ds",
                             type(exc).__name__, getattr(exc, "reason", None) or exc, self.job_name,
                             OUTAGE_GRACE_SECONDS)
            return time.monotonic()
        return since

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
