"""Kubernetes names from Airflow ids: DNS-1123 safe, at most 63 characters, deterministic.

A name that had to be changed (characters replaced, or cut to fit) gets a short hash of the
original, so two different ids never end up with the same name.
"""

from __future__ import annotations

import hashlib
import re

MAX_LABEL = 63
_HASH_LEN = 8
# An Indexed Job's pods are named <job>-<index> as their hostname (a 63-character DNS label);
# keep room for "-" and a 4-digit index.
MAX_JOB_NAME = MAX_LABEL - 5


def _digest(*parts: object) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:_HASH_LEN]


def _dns_chars(text: str) -> str:
    """Lowercase alphanumerics and '-', starting with a letter and ending alphanumeric."""
    clean = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return clean if clean and clean[0].isalpha() else "x-" + clean


def label_value(text: str) -> str:
    """A label value: up to 63 of ``[A-Za-z0-9_.-]``, alphanumeric at both ends (or empty)."""
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.-")
    if clean == text and len(clean) <= MAX_LABEL:
        return clean
    return f"{clean[: MAX_LABEL - _HASH_LEN - 1].rstrip('_.-')}-{_digest(text)}".lstrip("-")


def job_name(dag_id: str, task_id: str, run_id: str, map_index: int, try_number: int) -> str:
    """The Job (and headless Service) of one task try: the same for a restarted worker of that
    try, so it reattaches; different for the next try."""
    stem = _dns_chars(f"th-{dag_id}-{task_id}")[: MAX_JOB_NAME - _HASH_LEN - 1].rstrip("-")
    return f"{stem}-{_digest(dag_id, task_id, run_id, map_index, try_number)}"
