"""Training operators: one templated field per parameter of the algorithm's schema.

The fields are generated from the schema when the class is created, so ``SFTTrainOperator``
gains a field the moment ``SFTParams`` gains a parameter, and a plugin's algorithm gets an
operator with one line, as ``DPOTrainOperator`` below.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Sequence
from functools import cached_property
from typing import Any, ClassVar

from airflow.configuration import conf
from airflow.sdk import BaseOperator, Context, ResumableJobMixin
from airflow.sdk.exceptions import AirflowFailException, TaskDeferralError, TaskDeferralTimeout

from airflow_provider_training_hub.algorithms import AlgorithmRegistry
from airflow_provider_training_hub.algorithms.params import unknown_parameter_message
from airflow_provider_training_hub.connection import DEFAULT_CONN_ID
from airflow_provider_training_hub.hooks.training_hub import TrainingHubHook
from airflow_provider_training_hub.kubernetes.names import label_value
from airflow_provider_training_hub.run_states import RUNNING, SUCCEEDED
from airflow_provider_training_hub.operators.lineage import training_lineage
from airflow_provider_training_hub.operators.links import MLflowRunLink, TrainingRunLink
from airflow_provider_training_hub.operators.object_paths import plain_paths
from airflow_provider_training_hub.targets.task_settings import TaskSettings
from airflow_provider_training_hub.targets import RUN_URL_KEY, TaskTry, TrainingRun

_OPERATOR_ARGS = frozenset(inspect.signature(BaseOperator.__init__).parameters)
JOB_DEADLINE_MARGIN_SECONDS = 60


def _init_naming(cls: type[TrainOperator], names: Sequence[str]):
    """An ``__init__`` for ``cls`` whose signature names each parameter of the schema: Airflow takes
    only named arguments in ``partial()``/``expand()`` (dynamic task mapping) and ``default_args``."""

    def __init__(self: TrainOperator, **kwargs: Any) -> None:
        super(cls, self).__init__(**kwargs)

    inherited = inspect.signature(super(cls, cls).__init__)
    keyword = inspect.Parameter.KEYWORD_ONLY
    fields = [inspect.Parameter(name, keyword, default=None) for name in names]
    *own, rest = inherited.parameters.values()  # rest: **kwargs, for BaseOperator's arguments
    __init__.__signature__ = inherited.replace(parameters=[*own, *fields, rest])
    return __init__


class TrainOperator(ResumableJobMixin, BaseOperator):
    """Train with ``algorithm`` through ``TrainingHubHook``; XCom is the ``TrainingResult``.

    :param backend: registered backend; default: the connection's, else the algorithm's.
    :param training_hub_conn_id: ``training_hub`` connection (missing default: local execution).
    :param connection_overrides: connection fields for this task only, e.g.
        ``{"node_selector": {...}, "tolerations": [...], "image": "..."}``.
    :param deferrable: (Kubernetes) wait in the triggerer instead of holding a worker slot.
    :param poll_interval: (Kubernetes) seconds between status checks.
    :param pending_timeout: (Kubernetes) fail, and delete the Job, when a pod has not started this
        many seconds after its creation for a reason it will not get over by itself (no node with
        enough GPUs, an image that cannot be pulled, a missing Secret), or the Job could not create
        its pods for that long (a quota, Pod Security, a missing service account).
    :param job_backoff_limit: (Kubernetes) pod failures the Job retries before it fails.
    :param ttl_seconds_after_finished: (Kubernetes) when Kubernetes deletes the finished Job (at
        least 60 s, so that the task reads its result first).
    :param pod_annotations: (Kubernetes) extra annotations of the training pods.
    :param durable: (``ResumableJobMixin``) the next try after a dead worker or a failed wait
        adopts the run this task left training (its Job, or its local run on the same host) if it
        trains the same thing, instead of stopping it and starting another; ``False``: every try
        starts its own run.

    Every other keyword that names a parameter of the algorithm is a templated field, and may be
    an ``XComArg`` (``data_path=validate.output["data_path"]``).

    ``ckpt_output_dir`` left unset means ``<checkpoint root>/<dag_id>/<run_id>/<task_id>``: the
    same directory on every try, so a retry resumes from the last full-state checkpoint.
    """

    algorithm: ClassVar[str]
    param_names: ClassVar[tuple[str, ...]]
    # Where the task state store keeps a try's run (what the target's submit returned). Renaming
    # it strands the runs of tasks deployed with the old name.
    external_id_key = "training_hub_run"
    template_fields: Sequence[str] = ("backend",)
    operator_extra_links = (TrainingRunLink(), MLflowRunLink())
    ui_color = "#e8d5f5"

    def __init_subclass__(cls, algorithm: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if algorithm is None:
            return
        schema = AlgorithmRegistry.get_algorithm(algorithm).params_schema
        clashes = sorted(set(schema.model_fields) & (_OPERATOR_ARGS | set(vars(BaseOperator))))
        if clashes:
            raise TypeError(f"{algorithm} parameters {clashes} clash with BaseOperator attributes")
        cls.algorithm = algorithm
        cls.param_names = tuple(schema.model_fields)
        cls.template_fields = (
            "backend", "connection_overrides", "pending_timeout", "job_backoff_limit", "pod_annotations", *cls.param_names
        )
        if "__init__" not in vars(cls):
            cls.__init__ = _init_naming(cls, cls.param_names)

    def __init__(
        self,
        *,
        backend: str | None = None,
        training_hub_conn_id: str = DEFAULT_CONN_ID,
        connection_overrides: dict[str, Any] | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 10,
        pending_timeout: float = 900,
        job_backoff_limit: int = 0,
        ttl_seconds_after_finished: int | None = 86400,
        pod_annotations: dict[str, str] | None = None,
        durable: bool = True,
        **kwargs: Any,
    ) -> None:
        values = {name: kwargs.pop(name, None) for name in self.param_names}
        unknown = [k for k in kwargs if k not in _OPERATOR_ARGS]
        if unknown:  # a typo must not become BaseOperator's generic "invalid arguments"
            schema = AlgorithmRegistry.get_algorithm(self.algorithm).params_schema
            raise ValueError(f"{type(self).__name__}: " + " ".join(unknown_parameter_message(schema, k) for k in unknown))
        kwargs.setdefault("multiple_outputs", True)  # so that op.output["key"] is an XComArg of one key
        super().__init__(durable=durable, **kwargs)
        self.backend = backend
        self.training_hub_conn_id = training_hub_conn_id
        self.connection_overrides = connection_overrides or {}
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.pending_timeout = pending_timeout
        self.job_backoff_limit = job_backoff_limit
        self.ttl_seconds_after_finished = ttl_seconds_after_finished
        self.pod_annotations = pod_annotations or {}
        self._run: TrainingRun | None = None
        self._located: dict[str, Any] = {}  # where this try's submit put the run
        self._found: dict[str, Any] | None = None  # the state of an earlier try's run, when there is one
        self._result: dict[str, Any] | None = None
        for name, value in values.items():
            setattr(self, name, value)

    @cached_property
    def task_settings(self) -> TaskSettings:
        """This try's rendered operator settings, converted; ``ValueError`` naming a bad one."""
        return TaskSettings.parse({"connection_overrides": self.connection_overrides,
                                   "pending_timeout": self.pending_timeout, "job_backoff_limit": self.job_backoff_limit,
                                   "pod_annotations": self.pod_annotations,
                                   "ttl_seconds_after_finished": self.ttl_seconds_after_finished,
                                   "active_deadline_seconds": self._deadline_seconds(),
                                   "unwatched_timeout": self._unwatched_timeout()})

    def _deadline_seconds(self) -> int | None:
        """The Job's activeDeadlineSeconds: a minute past ``execution_timeout``. The timed-out
        task deletes its Job itself, with the reason in its log; the deadline stops the pods of a
        task that is gone without doing so."""
        timeout = self.execution_timeout
        return math.ceil(timeout.total_seconds()) + JOB_DEADLINE_MARGIN_SECONDS if timeout else None

    def _unwatched_timeout(self) -> float:
        """How long a local run whose task died waits for the next try to adopt it: the time
        Airflow takes to fail a task whose worker is gone, the longest retry delay, and a minute."""
        delay = self.max_retry_delay if self.retry_exponential_backoff and self.max_retry_delay else self.retry_delay
        heartbeat_timeout = conf.getint("scheduler", "task_instance_heartbeat_timeout", fallback=300)
        return heartbeat_timeout + delay.total_seconds() + 60

    def _take_object_storage_paths(self) -> None:
        """Parameters given as ``ObjectStoragePath``: their URIs, and their connection the task's
        storage connection (before ``hook`` is made from the settings)."""
        values, conn_id = plain_paths({n: getattr(self, n) for n in self.param_names})
        for name, value in values.items():
            setattr(self, name, value)
        if conn_id is not None:
            self.connection_overrides = {**self.connection_overrides, "storage_conn_id": conn_id}

    @cached_property
    def hook(self) -> TrainingHubHook:
        return TrainingHubHook(self.training_hub_conn_id, **self.task_settings.connection_overrides)

    def default_ckpt_output_dir(self, context: Context) -> str:
        """One directory per task instance: each id by the Job labels' rule (``[A-Za-z0-9_.-]``,
        and a hash of the original wherever a character had to change), so that run ids such as
        ``a:b``, ``a+b`` and ``a_b`` get three directories and ``..`` cannot climb out."""
        ti = context["ti"]
        parts = [ti.dag_id, ti.run_id, ti.task_id + (f"-{ti.map_index}" if ti.map_index >= 0 else "")]
        return "/".join([self.hook.default_checkpoint_root().rstrip("/"), *map(label_value, parts)])

    def training_run(self, context: Context) -> TrainingRun:
        """This try's run, from the rendered fields; ``ValueError`` naming a bad one."""
        hook = self.hook
        values = {n: getattr(self, n) for n in self.param_names if getattr(self, n) is not None}
        values.setdefault("ckpt_output_dir", self.default_ckpt_output_dir(context))
        return TrainingRun(self.algorithm, hook.backend_for(self.algorithm, self.backend),
                           hook.parse_params(self.algorithm, values), TaskTry.of(context["ti"]),
                           self.task_settings, self.poll_interval)

    def execute(self, context: Context) -> dict[str, Any]:
        # Airflow reads each extra link's XCom when the task ends, and logs a missing one as an
        # error: a link with nowhere to lead (yet) is an empty XCom, not an alarming log line.
        for link in self.operator_extra_links:
            context["ti"].xcom_push(key=link.key, value=None)
        try:
            self._take_object_storage_paths()
            hook = self.hook
            run = self.training_run(context)
            with hook.storage_access():  # a bucket these credentials cannot open fails here, before any pod
                hook.target.check(run)
                hook.check_memory(run)
        except ValueError as exc:  # a retry cannot fix a configuration error
            raise AirflowFailException(f"Invalid {self.algorithm} configuration: {exc}") from exc
        self.log.info("%s with backend %s; checkpoints in %s", self.algorithm, run.backend, run.params.ckpt_output_dir)
        context["ti"].xcom_push(key="ckpt_output_dir", value=run.params.ckpt_output_dir)
        self._run = run
        return self.execute_resumable(context)

    # --- ResumableJobMixin: its external id is what the target's submit returned ---

    def submit_job(self, context: Context) -> dict[str, Any] | None:
        self._located = self.hook.target.submit(self._run)
        return self._located if self.hook.target.adoptable else None  # None: nothing is stored

    def get_job_status(self, external_id: dict[str, Any], context: Context) -> str:
        self._found = self.hook.target.find(self._run, external_id)
        return self._found["status"] if self._found else "gone"

    def is_job_active(self, status: str) -> bool:
        return status == RUNNING

    def is_job_succeeded(self, status: str) -> bool:
        return status == SUCCEEDED

    def poll_until_complete(self, external_id: dict[str, Any] | None, context: Context) -> dict[str, Any]:
        """Wait for the run at ``external_id`` (this try's, or an earlier try's it adopts), in the
        triggerer where deferrable. Returns the result too: the mixin returns this method's value
        when it adopts a running Job, and ``get_job_result``'s after a submit."""
        located = external_id if external_id is not None else self._located
        self._show(context, located)
        hook = self.hook
        if self.deferrable and (trigger := hook.target.trigger(self._run, located)) is not None:
            classpath, kwargs = trigger
            module, _, name = classpath.rpartition(".")
            self.defer(
                trigger=getattr(importlib.import_module(module), name)(**kwargs),
                method_name="execute_complete",
                timeout=self.execution_timeout,  # as on the worker: the scheduler fails the task then
            )
        return self._finish(context, self._run, hook.target.wait(self._run, located))

    def get_job_result(self, external_id: dict[str, Any] | None, context: Context) -> dict[str, Any]:
        if self._result is None:  # an earlier try's run had succeeded: its result, read again
            self._show(context, external_id)
            return self._finish(context, self._run, self._found)
        return self._result

    def _show(self, context: Context, located: dict[str, Any]) -> None:
        """This try's XComs that locate the run (the Job's name, the "Training run" link): the
        try's own, or the earlier try's that it adopted."""
        ti = context["ti"]
        for key, value in located.items():
            ti.xcom_push(key=key, value=value)
        if RUN_URL_KEY in located:  # the button works while it trains, not only once the task ends
            ti.xcom_push(key=TrainingRunLink().xcom_key, value=located[RUN_URL_KEY])

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """A deferral that ends with no event from the trigger (``execution_timeout`` passed, or the
        trigger failed) fails the task; its run must not train on with nobody watching it."""
        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except (TaskDeferralTimeout, TaskDeferralError):
            self.hook.target.kill(TaskTry.of(context["ti"]))
            raise

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Back from the trigger: its event is the state ``wait`` returns, so the verdict is the same."""
        self._run = self.training_run(context)
        return self._finish(context, self._run, event)

    def _finish(self, context: Context, run: TrainingRun, state: dict[str, Any]) -> dict[str, Any]:
        try:
            result = self.hook.target.outcome(run, state)
        except ValueError as exc:  # the training process refused its input (exit code 2): no retry either
            raise AirflowFailException(f"Invalid {self.algorithm} input: {exc}") from exc
        self.log.info("Newest checkpoint: %s; metrics: %s", result.get("checkpoint"), result.get("metrics"))
        for outlet in self.outlets:  # a model Asset carries where its checkpoint is
            context["outlet_events"][outlet].extra = {"checkpoint": result.get("checkpoint"), "metrics": result.get("metrics")}
        # The run is done with: a user who clears the task wants it trained again (on the data as
        # it is now), not this result handed back by a try that adopts the finished run.
        if (store := context.get("task_state_store")) is not None:
            store.delete(self.external_id_key)
        self._result = result
        return result

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Called by apache-airflow-providers-openlineage, where installed (see ``lineage.py``)."""
        return training_lineage(self.algorithm, self._run.backend, self._run.params, self._result)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        """What was to be trained, where the parameters were valid; nothing came out."""
        if self._run is None:
            return None
        return training_lineage(self.algorithm, self._run.backend, self._run.params, None)

    def on_kill(self) -> None:
        """Stop the run this try started: the local process group, or the Job and Service."""
        if self._run is not None:
            self.hook.target.kill(self._run.task)


class SFTTrainOperator(TrainOperator, algorithm="sft"):
    """Supervised fine-tuning (``sft()``) as a task; see ``SFTParams`` for the parameters."""


class LoRATrainOperator(TrainOperator, algorithm="lora_sft"):
    """LoRA fine-tuning (``lora_sft()``) as a task; see ``LoRAParams`` for the parameters."""


class DPOTrainOperator(TrainOperator, algorithm="dpo"):
    """Preference tuning (``dpo()``) as a task; see ``DPOParams`` for the parameters."""
