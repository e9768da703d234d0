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
from airflow_provider_training_hub.run_states import FAILED, RUNNING, SUCCEEDED, UNSCHEDULABLE

# A container the kubelet cannot start; these do not mend themselves (a registry hiccup may, so
# each counts against ``pending_timeout`` like an unschedulable pod, from the pod's creation).
# ContainerCreating and PodInitializing are progress (a large image being pulled), not these.
NOT_STARTING = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                          "CreateContainerConfigError", "CreateContainerError", "RunContainerError"})
FAILED_CREATE = "FailedCreate"  # the Job controller's event for a pod the API server refused


@dataclass(frozen=True)
class JobState:
    status: str  # running | succeeded | failed | unschedulable (: cannot start, for any reason)
    message: str = ""
    phases: dict[str, int] = field(default_factory=dict)  # pod phase -> count, for progress lines
    waiting: tuple[str, ...] = ()  # why pods are not running yet: the scheduler's, kubelet's, Job's

    @property
    def finished(self) -> bool:
        return self.status != RUNNING

    def progress(self, job_name: str) -> str:
        """The task-log line for this state: pod phases and the scheduler's reasons."""
        return f"Job {job_name}: {self.status}; pods {self.phases or 'not created yet'}" + "".join(
            f"; {r}" for r in self.waiting
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


def not_starting_reason(pod: dict[str, Any]) -> str | None:
    """Why a pending pod cannot start: the scheduler's message for a pod it could not place
    ("waiting for a node: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu"), or the
    kubelet's for a container it cannot create (an image that cannot be pulled, a missing
    Secret); None for a pod on its way."""
    status = pod.get("status") or {}
    if status.get("phase") != "Pending":
        return None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return "waiting for a node: " + (cond.get("message") or cond.get("reason") or "not scheduled")
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in NOT_STARTING:
            return f"{waiting['reason']}: {waiting.get('message') or ''}".rstrip(": ")
    return None


def failed_create(job: dict[str, Any], pods: list[dict[str, Any]], events: list[dict[str, Any]]) -> str | None:
    """The Job controller's newest reason for not creating a pod (a quota, Pod Security, a missing
    service account), while the Job has fewer pods than it runs at once; None otherwise."""
    if len(pods) >= ((job.get("spec") or {}).get("parallelism") or 1):
        return None
    refusals = [e for e in events if e.get("reason") == FAILED_CREATE]
    if not refusals:
        return None
    newest = max(refusals, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    return f"the Job controller cannot create its pods: {newest.get('message', '')}".rstrip(": ")


def assess(job: dict[str, Any], pods: list[dict[str, Any]], pending_timeout: float, now: datetime | None = None,
           events: list[dict[str, Any]] = ()) -> JobState:
    """The Job's state; ``UNSCHEDULABLE`` once a pod has not started for ``pending_timeout``
    seconds after its creation for a reason it will not get over by itself, or the Job has
    created too few pods for that long after its own. ``events``: the Job's, where it has fewer
    pods than its parallelism (``needs_events``)."""
    now = now or datetime.now(timezone.utc)
    phases: dict[str, int] = {}
    for pod in pods:
        phase = (pod.get("status") or {}).get("phase") or "Unknown"
        phases[phase] = phases.get(phase, 0) + 1
    stuck = [(pod, reason) for pod in pods if (reason := not_starting_reason(pod))]
    refused = failed_create(job, pods, list(events))
    waiting = tuple(sorted({reason for _, reason in stuck} | ({refused} if refused else set())))
    if _condition(job, "Complete") or _condition(job, "SuccessCriteriaMet"):
        return JobState(SUCCEEDED, "", phases, waiting)
    if failed := (_condition(job, "Failed") or _condition(job, "FailureTarget")):
        message = f"{failed.get('reason', 'Failed')}: {failed.get('message', '')}".strip(": ")
        return JobState(FAILED, message, phases, waiting)
    for pod, reason in stuck:
        if (now - _created(pod)).total_seconds() > pending_timeout:
            return JobState(UNSCHEDULABLE, f"pod {pod['metadata']['name']} did not start for {pending_timeout:.0f}s: "
                            f"{reason}", phases, waiting)
    if refused and (now - _created(job)).total_seconds() > pending_timeout:
        return JobState(UNSCHEDULABLE, f"Job {job['metadata']['name']} had too few pods for {pending_timeout:.0f}s: "
                        f"{refused}", phases, waiting)
    return JobState(RUNNING, "", phases, waiting)


def needs_events(job: dict[str, Any], pods: list[dict[str, Any]]) -> bool:
    """Whether the Job's events must be read to judge it: it has fewer pods than it runs at once
    and has not ended (one more API call only then)."""
    ended = _condition(job, "Complete") or _condition(job, "Failed") or _condition(job, "SuccessCriteriaMet") \
        or _condition(job, "FailureTarget")
    return not ended and len(pods) < ((job.get("spec") or {}).get("parallelism") or 1)


def job_events_selector(job_name: str) -> str:
    """The field selector of a Job's events."""
    return f"involvedObject.kind=Job,involvedObject.name={job_name}"


def _terminated(pod: dict[str, Any]) -> dict[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER:
            return (status.get("state") or {}).get("terminated") or {}
    return {}


class ResultUnreadable(RuntimeError):
    """A succeeded Job whose result cannot be read: rank 0's pod is gone (its Job's TTL, a
    user), or its termination message is not the result. Not the input's fault: a retry, which
    finds the finished run in its ckpt_output_dir, can return it."""


def rank0_result(pods: list[dict[str, Any]]) -> dict[str, Any]:
    """The result JSON that rank 0 wrote to its termination message."""
    for pod in pods:
        if completion_index(pod) == 0 and (pod.get("status") or {}).get("phase") == "Succeeded":
            message = _terminated(pod).get("message") or ""
            try:
                result = json.loads(message)
            except json.JSONDecodeError:
                raise ResultUnreadable(
                    f"pod {pod['metadata']['name']} left no result in its termination message: {message[:500]!r}"
                ) from None
            if not isinstance(result, dict):
                raise ResultUnreadable(f"pod {pod['metadata']['name']}'s termination message is not a result object")
            return result
    raise ResultUnreadable("no succeeded pod of completion index 0 (rank 0) was found")


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
