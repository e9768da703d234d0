"""Reading a training Job's state from its API objects (plain dicts; no I/O).

One function decides "running, done, failed, stuck" for both the polling operator and the
deferrable trigger, from what the API server returns, so a restarted triggerer (which remembers
nothing) reaches the same verdict: the pending clock is each pod's creation time, not ours.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from airflow_provider_training_hub.cli import EXIT_BAD_CONFIG
from airflow_provider_training_hub.kubernetes.job import COMPLETION_INDEX_ANNOTATION, CONTAINER

RUNNING, SUCCEEDED, FAILED, UNSCHEDULABLE = "running", "succeeded", "failed", "unschedulable"


@dataclass(frozen=True)
class JobState:
    status: str  # running | succeeded | failed | unschedulable
    message: str = ""
    phases: dict[str, int] = field(default_factory=dict)  # pod phase -> count, for progress lines
    waiting: tuple[str, ...] = ()  # the scheduler's reasons for pods it has not placed yet

    @property
    def finished(self) -> bool:
        return self.status != RUNNING

    def progress(self, job_name: str) -> str:
        """The task-log line for this state: pod phases and the scheduler's reasons."""
        return f"Job {job_name}: {self.status}; pods {self.phases or 'not created yet'}" + "".join(
            f"; waiting for a node: {r}" for r in self.waiting
        )


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def _created(obj: dict[str, Any]) -> datetime:
    stamp = obj["metadata"]["creationTimestamp"]
    if isinstance(stamp, datetime):
        return stamp
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def completion_index(pod: dict[str, Any]) -> int | None:
    value = (pod["metadata"].get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION)
    return int(value) if value is not None else None


def unscheduled_reason(pod: dict[str, Any]) -> str | None:
    """The scheduler's message for a pod it could not place (e.g. "0/3 nodes are available: 3
    Insufficient nvidia.com/gpu"), or None."""
    if (pod.get("status") or {}).get("phase") != "Pending":
        return None
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return cond.get("message") or cond.get("reason") or "not scheduled"
    return None


def assess(job: dict[str, Any], pods: list[dict[str, Any]], pending_timeout: float, now: datetime | None = None) -> JobState:
    now = now or datetime.now(timezone.utc)
    phases: dict[str, int] = {}
    for pod in pods:
        phase = (pod.get("status") or {}).get("phase") or "Unknown"
        phases[phase] = phases.get(phase, 0) + 1
    unscheduled = [(pod, reason) for pod in pods if (reason := unscheduled_reason(pod))]
    waiting = tuple(sorted({reason for _, reason in unscheduled}))
    if _condition(job, "Complete") or _condition(job, "SuccessCriteriaMet"):
        return JobState(SUCCEEDED, "", phases, waiting)
    if failed := (_condition(job, "Failed") or _condition(job, "FailureTarget")):
        message = f"{failed.get('reason', 'Failed')}: {failed.get('message', '')}".strip(": ")
        return JobState(FAILED, message, phases, waiting)
    for pod, reason in unscheduled:
        if (now - _created(pod)).total_seconds() > pending_timeout:
            return JobState(
                UNSCHEDULABLE,
                f"pod {pod['metadata']['name']} could not be scheduled for {pending_timeout:.0f}s: {reason}",
                phases,
                waiting,
            )
    return JobState(RUNNING, "", phases, waiting)


def _terminated(pod: dict[str, Any]) -> dict[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER:
            return (status.get("state") or {}).get("terminated") or {}
    return {}


def rank0_result(pods: list[dict[str, Any]]) -> dict[str, Any]:
    """The result JSON that rank 0 wrote to its termination message."""
    for pod in pods:
        if completion_index(pod) == 0 and (pod.get("status") or {}).get("phase") == "Succeeded":
            message = _terminated(pod).get("message") or ""
            try:
                result = json.loads(message)
            except json.JSONDecodeError:
                raise ValueError(f"pod {pod['metadata']['name']} left no result in its termination message: {message[:500]!r}") from None
            if not isinstance(result, dict):
                raise ValueError(f"pod {pod['metadata']['name']}'s termination message is not a result object")
            return result
    raise ValueError("no succeeded pod of completion index 0 (rank 0) was found")


def configuration_error(pods: list[dict[str, Any]]) -> bool:
    """Whether a pod exited with the CLI's configuration-error code: the pod failure policy failed
    the Job at once, and a retry would fail the same way."""
    return any(_terminated(pod).get("exitCode") == EXIT_BAD_CONFIG for pod in pods)


def describe_failures(pods: list[dict[str, Any]]) -> list[str]:
    """One line per failed pod: name, index, exit code, reason, and its message (with
    FallbackToLogsOnError, the last lines of its log)."""
    lines = []
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        if (pod.get("status") or {}).get("phase") != "Failed":
            continue
        term = _terminated(pod)
        reason = term.get("reason") or (pod.get("status") or {}).get("reason") or "Failed"
        lines.append(
            f"pod {pod['metadata']['name']} (index {completion_index(pod)}) failed: exit code "
            f"{term.get('exitCode', '?')}, {reason}" + (f"\n{term['message'].rstrip()}" if term.get("message") else "")
        )
    return lines
