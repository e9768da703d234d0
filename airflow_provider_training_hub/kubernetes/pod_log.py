"""Following rank 0's log through repeated ``pods/log`` reads (no I/O here).

The polling operator and the deferred trigger both read the log again on every check; the
kubelet's timestamps say which lines are new. A trigger remembers nothing across a triggerer
restart, so it starts again from the pod's first line then.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from airflow_provider_training_hub.kubernetes.job import CONTAINER
from airflow_provider_training_hub.kubernetes.status import completion_index

LOGGING_PHASES = ("Running", "Succeeded", "Failed")


def rank0_pod(pods: list[dict[str, Any]]) -> str | None:
    """The newest pod of completion index 0 that has a log to read."""
    ready = [p for p in pods if completion_index(p) == 0 and (p.get("status") or {}).get("phase") in LOGGING_PHASES]
    return ready[-1]["metadata"]["name"] if ready else None


class LogCursor:
    """Where the last read of a pod's timestamped log ended."""

    def __init__(self) -> None:
        self.since: datetime | None = None

    def request(self) -> dict[str, Any]:
        """Keyword arguments of ``read_namespaced_pod_log`` for the lines after the last read."""
        kwargs: dict[str, Any] = {"container": CONTAINER, "timestamps": True}
        if self.since:
            kwargs["since_seconds"] = max(1, int((datetime.now(timezone.utc) - self.since).total_seconds()) + 1)
        return kwargs

    def new_lines(self, text: str) -> list[str]:
        """The lines of ``text`` stamped after the last read, without their stamps."""
        lines = []
        for line in text.splitlines():
            stamp, _, message = line.partition(" ")
            try:
                when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            except ValueError:
                when = None
            if when and self.since and when <= self.since:
                continue
            lines.append(message)
            if when:
                self.since = when
        return lines
