"""Airflow's ``ObjectStoragePath`` as an operator argument: its URI, and the connection it names.

``ObjectStoragePath("s3://aws_default@bucket/train.jsonl")`` carries the id of the Airflow
connection with its credentials in the URI's user part. A training process and a pod need the
plain URI (``s3://bucket/train.jsonl``); the connection becomes the task's ``storage_conn_id``.
"""

from __future__ import annotations

from typing import Any


def plain_paths(values: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """``values`` with each ``ObjectStoragePath`` as its URI, and the one connection id they name;
    ``ValueError`` where two name different connections (a task has one storage connection)."""
    from airflow.sdk import ObjectStoragePath

    conn_ids = {}
    plain = dict(values)
    for name, value in values.items():
        if isinstance(value, ObjectStoragePath):
            plain[name] = value.as_uri() if value.protocol not in ("", "file", "local") else value.path
            if value.conn_id:
                conn_ids[name] = value.conn_id
    if len(set(conn_ids.values())) > 1:
        named = ", ".join(f"{name}: {conn_id!r}" for name, conn_id in sorted(conn_ids.items()))
        raise ValueError(f"the object storage paths name different connections ({named}); a task reads and writes "
                         "with one: give every path the same connection, or none and set storage_conn_id")
    return plain, next(iter(conn_ids.values()), None)
