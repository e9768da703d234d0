"""A training process's lines, as the task log shows them.

A training process (a local subprocess, or rank 0's pod) writes text; the task relays it line by
line (``targets/local.py``, ``targets/kubernetes_jobs.py``, ``triggers/training_job.py``). Its own
warnings and errors are relayed at their level, so that they stand out in Airflow's log view
instead of passing as ``info``. Two shapes carry a level: its ``print``ed warnings
(``WARNING_MARK``) and its Python log records (``LOG_FORMAT``, set by ``cli.py``).
"""

from __future__ import annotations

import logging
import re

WARNING_MARK = "[training-hub] warning: "
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (WARNING|ERROR|CRITICAL) ")


def level(line: str) -> int:
    """The level to relay ``line`` at: searched, not matched, since a relay may prefix it."""
    if WARNING_MARK in line:
        return logging.WARNING
    record = _RECORD.search(line)
    return logging.getLevelName(record.group(1)) if record else logging.INFO
