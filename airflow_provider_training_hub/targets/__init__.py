"""Execution targets: where a training run happens, behind one small interface.

The operator drives every target the same way (``operators/train.py``)::

    target.check(run)                # ValueError before anything starts (no pod for a typo)
    target.find(run, located)        # a retry: the state of the run an earlier try started, to adopt
    target.submit(run) -> located    # start it, or reattach to this try's run if it is there
    target.trigger(run, located)     # deferrable: the trigger (as a class path and its arguments)
                                     # that waits in the triggerer; its event is the state
    target.wait(run, located)        # or wait on the worker; the same state
    target.outcome(run, state)       # the TrainingResult dict, or an exception saying why not
    target.kill(task_try)            # a stopped task or a timed-out deferral stops its run

``located`` is what ``submit`` returned. Where the target is ``adoptable``, the operator keeps it in
Airflow's task state store (``ResumableJobMixin``), so that the try after a dead worker waits for
the run that is still training instead of starting another.

The connection's ``execution`` field names the target; ``TARGETS`` (``target_names.py``, below
both this package and the connection) maps each name to its class, imported only when used. A
third target (a Kubeflow TrainJob, a Ray job) is one module with an ``ExecutionTarget`` subclass
and one line in ``TARGETS``; its own settings are fields of the connection (``connection.py``),
as the Kubernetes ones are.

This module imports no Airflow.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_training_hub.target_names import TARGETS

if TYPE_CHECKING:
    from logging import Logger

    from airflow_provider_training_hub.algorithms.params import ParamSchema
    from airflow_provider_training_hub.connection import ConnectionSettings
    from airflow_provider_training_hub.targets.task_settings import TaskSettings


# The XCom entry, among those submit() returns, that is the run's URL in its own console: the
# operator's "Training run" link (operators/links.py).
RUN_URL_KEY = "run_url"


@dataclass(frozen=True)
class TaskTry:
    """The Airflow task try a run belongs to: what names a run and finds an earlier try's."""

    dag_id: str
    task_id: str
    run_id: str
    map_index: int
    try_number: int

    @classmethod
    def of(cls, ti: Any) -> TaskTry:
        return cls(ti.dag_id, ti.task_id, ti.run_id, ti.map_index, ti.try_number)

    def __str__(self) -> str:
        return f"{self.dag_id}/{self.run_id}/{self.task_id}/{self.try_number}"


@dataclass(frozen=True)
class TrainingRun:
    """One try's training, as every target receives it."""

    algorithm: str
    backend: str
    params: ParamSchema
    task: TaskTry
    settings: TaskSettings  # the operator's own settings (pending timeout, Job knobs...), converted
    poll_interval: float = 10


class ExecutionTarget(ABC):
    """A place to train: ``settings`` is the task's connection, overrides applied."""

    # Whether a run outlives the task process that started it, so that a later try can find it
    # (``find``) and wait for it instead of starting another.
    adoptable: bool = False

    def __init__(self, settings: ConnectionSettings, log: Logger,
                 storage_environment: Callable[[], dict[str, str]] = dict) -> None:
        """``storage_environment``: the object storage credentials, as variables, of a training
        process that this target starts itself (read only when a run needs them)."""
        self.settings = settings
        self.log = log
        self.storage_environment = storage_environment

    @abstractmethod
    def default_checkpoint_root(self) -> str:
        """Where a task's default ``ckpt_output_dir`` lies when the connection names no root."""

    @abstractmethod
    def check(self, run: TrainingRun) -> None:
        """Raise ``ValueError`` for a run that cannot work here, before anything is started."""

    def find(self, run: TrainingRun, located: dict[str, Any]) -> dict[str, Any] | None:
        """The state (as ``wait`` returns it) of the run an earlier try of this task started at
        ``located``, when this try may adopt it; ``None`` when it is gone, trains something other
        than ``run``, or cannot be found again (not ``adoptable``). Its ``status`` is
        ``run_states.RUNNING`` for a run to wait for, ``SUCCEEDED`` for one whose result
        ``outcome`` reads; any other starts a new run."""
        return None

    @abstractmethod
    def submit(self, run: TrainingRun) -> dict[str, Any]:
        """Start the run, or reattach to this try's run when it already exists; the XCom entries
        that locate it (e.g. the Job's name), with ``RUN_URL_KEY`` where the run has a page."""

    def trigger(self, run: TrainingRun, located: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """The trigger that waits for the submitted run in the triggerer, as ``BaseTrigger.serialize``
        gives it (class path, keyword arguments: the operator builds it, so targets stay below the
        triggers); ``None``: this target cannot wait there, and the task waits on the worker. The
        trigger's event is a state."""
        return None

    @abstractmethod
    def wait(self, run: TrainingRun, located: dict[str, Any]) -> dict[str, Any]:
        """Block until the run at ``located`` ends, logging its progress; its final state, in the same
        form as the trigger's event, so that both paths reach one verdict in ``outcome``."""

    @abstractmethod
    def outcome(self, run: TrainingRun, state: dict[str, Any]) -> dict[str, Any]:
        """The run's result (``TrainingResult`` fields), or an exception that says what went wrong:
        ``ValueError`` when the training refused its input, which no retry can fix."""

    @abstractmethod
    def kill(self, task: TaskTry) -> None:
        """Stop the run of ``task``'s task instance (its own, or the one it adopted from an earlier
        try) and remove what it left running; nothing to stop is fine."""

    @abstractmethod
    def test_connection(self) -> str:
        """What the connection form's test button reports; raise when the target is unusable."""


def get_target(name: str) -> type[ExecutionTarget]:
    """The class of the target ``name`` (the connection has checked that it exists)."""
    module, _, cls = TARGETS[name].rpartition(".")
    return getattr(importlib.import_module(module), cls)
