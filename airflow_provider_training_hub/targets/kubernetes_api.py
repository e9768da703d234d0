"""Which Kubernetes API errors a training Job's calls retry, and how a final one is worded.

The policy is cncf-kubernetes' own (``generic_api_retry``): its transient status codes and
connection errors, Retry-After on 429, exponential backoff, ``[workers] api_retries`` attempts,
each call bounded by its API timeout. One difference: a 409 is an answer here, not a hiccup.
Creating a Job or Service that exists means this try created it already (a reply lost to a reset
connection), and the caller reattaches to it.
"""

from __future__ import annotations

import json
import logging

import tenacity
from airflow.providers.cncf.kubernetes.kubernetes_helper_functions import (
    API_RETRIES,
    API_TIMEOUT,
    TRANSIENT_CONNECTION_ERRORS,
    TRANSIENT_STATUS_CODES,
    WaitRetryAfterOrExponential,
)
from kubernetes.client import ApiException
from kubernetes_asyncio.client.exceptions import ApiException as AsyncApiException

TRANSIENT = TRANSIENT_STATUS_CODES - {409}
# A retry of the task cannot fix these: credentials, permissions, a missing namespace, a spec the
# API server refuses.
PERMANENT = frozenset({400, 401, 403, 404, 422})
REQUEST_TIMEOUT = API_TIMEOUT
# What a best-effort call (rank 0's log) shrugs off: any refusal, lost connection or timeout.
BEST_EFFORT_FAILURES = (ApiException, AsyncApiException, *TRANSIENT_CONNECTION_ERRORS, TimeoutError)

log = logging.getLogger(__name__)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (ApiException, AsyncApiException)):
        return exc.status in TRANSIENT
    return isinstance(exc, TRANSIENT_CONNECTION_ERRORS)


retry_transient = tenacity.retry(
    stop=tenacity.stop_after_attempt(API_RETRIES),
    wait=WaitRetryAfterOrExponential(),
    retry=tenacity.retry_if_exception(is_transient),
    reraise=True,
    before_sleep=tenacity.before_sleep_log(log, logging.WARNING),
)


def api_error(exc: ApiException | AsyncApiException) -> str:
    """``403 Forbidden: jobs.batch is forbidden: User ...``: the status and the API server's own
    message, not the client's dump of headers and body."""
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return f"{exc.status} {exc.reason}" + (f": {message}" if message else "")
