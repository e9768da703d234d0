"""The ``training_hub`` connection's settings: one model gives the UI form, the defaults and the
checks, so a field is declared once.

Pure pydantic, no Airflow import: ``get_provider_info`` builds the connection form from it, and
the Kubernetes builders read their pod settings from it.
"""

from __future__ import annotations

import json
import re
import string
from typing import Any

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from airflow_provider_training_hub.algorithms.params import ParamSchema
from airflow_provider_training_hub.json_syntax import at_character
from airflow_provider_training_hub.target_names import TARGETS

CONN_TYPE = "training_hub"
DEFAULT_CONN_ID = "training_hub_default"
JOB_LINK_FIELDS = ("namespace", "job_name")  # the placeholders of job_url_template
NO_GPU = "none"  # gpu_resource of a CPU-only cluster (a blank field means the default)
_CPU_QUANTITY = re.compile(r"(\d+(?:\.\d+)?)(m?)")  # Kubernetes' usual spellings: 8, 2.5, 500m


def _quantity(text: str) -> int | None:
    """Bytes of a Kubernetes memory quantity (80Gi, 80G, 85899345920); None for anything else."""
    from kubernetes.utils import parse_quantity  # here: get_provider_info imports this module, often

    try:
        size = int(parse_quantity(text))
    except ValueError:
        return None
    return size if size > 0 else None


def cpu_cores(quantity: str) -> float:
    """A CPU quantity as the validator below admits it, in cores."""
    number, milli = _CPU_QUANTITY.fullmatch(quantity).groups()  # type: ignore[union-attr]
    return float(number) / (1000 if milli else 1)


class ConnectionSettings(ParamSchema):
    """Where and how training runs; an operator argument of the same name overrides a field."""

    execution: str = Field(
        "local",
        title="Execution",
        description="local: a subprocess on the worker; kubernetes: an Indexed Job.",
        json_schema_extra=lambda schema: schema.update(enum=list(TARGETS)),  # the form's choices, read when drawn
    )
    backend: str | None = Field(
        None, title="Default backend", description="Backend when a task names none; empty: the algorithm's default."
    )
    checkpoint_root: str | None = Field(
        None,
        title="Checkpoint root",
        description=(
            "Where a task without ckpt_output_dir writes (<root>/<dag>/<run>/<task>); "
            "empty: $AIRFLOW_HOME/training_hub/checkpoints locally, <pvc mount path>/checkpoints on Kubernetes."
        ),
    )
    kubernetes_conn_id: str = Field(
        "kubernetes_default", title="Kubernetes connection", description="cncf-kubernetes connection of the cluster."
    )
    namespace: str = Field("default", title="Namespace", description="Namespace of the training Jobs.")
    image: str | None = Field(None, title="Training image", description="Image with `training-hub` and the [train] extra.")
    pvc_claim: str | None = Field(
        None, title="PVC claim", description="PersistentVolumeClaim holding models, data and checkpoints."
    )
    pvc_mount_path: str = Field("/mnt/training", title="PVC mount path", description="Where the PVC is mounted in pods.")
    gpu_resource: str = Field(
        "nvidia.com/gpu",
        title="GPU resource",
        description=f"Extended resource name of a GPU; {NO_GPU!r} for a CPU-only cluster (the pods request no GPU).",
    )
    gpu_memory: str | int | None = Field(
        None,
        title="GPU memory per device",
        description=(
            "Memory of each GPU as torch reports it, e.g. 79Gi for an H100 80GB or 139Gi for an H200; a training "
            "task whose estimate (training_hub's estimate(), from the model's config.json) cannot fit is refused "
            "before it starts. Empty: no check."
        ),
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, title="Node selector", description='JSON object, e.g. {"gpu": "h100"}.'
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list, title="Tolerations", description="JSON list of Kubernetes tolerations."
    )
    affinity: dict[str, Any] = Field(
        default_factory=dict, title="Affinity", description="JSON object: a Kubernetes pod affinity."
    )
    cpu: str = Field(
        "8",
        title="CPU per node",
        description="CPU request of each training pod, e.g. 8 or 500m; its ranks share it as their torch threads.",
    )
    memory: str = Field("64Gi", title="Memory per node", description="Memory request of each training pod.")
    shm_size: str = Field("16Gi", title="/dev/shm size", description="In-memory /dev/shm of each pod (NCCL needs it).")
    ephemeral_storage: str = Field(
        "20Gi",
        title="Local disk per node",
        description=(
            "Ephemeral storage each training pod requests and may use outside its volumes (logs, caches); "
            "the kubelet evicts a pod that writes more. Checkpoints go to the PVC or, from scratch_size, to object storage."
        ),
    )
    service_account: str | None = Field(None, title="Service account", description="Service account of the pods.")
    # The volume's owner decides who may write checkpoints: the image's uid 1000 by default.
    run_as_user: int | None = Field(
        None, ge=1, title="Run as user",
        description="uid of the training processes (not 0: the pods run as non-root); empty: the image's user (1000).",
    )
    run_as_group: int | None = Field(
        None, ge=0, title="Run as group", description="Primary gid of the training processes; empty: the image's."
    )
    fs_group: int | None = Field(
        None,
        ge=0,
        title="FS group",
        description=(
            "A supplementary gid of the training processes, and the group of volumes that support ownership "
            "(not NFS or hostPath: give their directory to this group, group-writable)."
        ),
    )
    termination_grace_period_seconds: int = Field(
        120,
        ge=1,
        title="Stop grace period (s)",
        description=(
            "Seconds a stopped or preempted run has to save its full state before it is killed: "
            "the pods' terminationGracePeriodSeconds, and locally the wait before SIGKILL."
        ),
    )
    image_pull_secrets: list[str] = Field(
        default_factory=list, title="Image pull secrets", description='JSON list of secret names, e.g. ["regcred"].'
    )
    tracking_secret: str | None = Field(
        None,
        title="Tracking secret",
        description=(
            "Secret whose keys become the training pods' environment (envFrom), for tracking credentials "
            "such as MLFLOW_TRACKING_TOKEN or WANDB_API_KEY; they never enter parameters, Job spec or XCom."
        ),
    )
    storage_conn_id: str = Field(
        "aws_default",
        title="Object storage connection",
        description=(
            "Airflow connection with the credentials of s3:// paths (an AWS connection: login = access key id, "
            "password = secret, extra endpoint_url and region_name), for the worker's checks, validation and local "
            "training; missing: the worker's own (AWS_* variables, an instance role). Never part of a path."
        ),
    )
    storage_secret: str | None = Field(
        None,
        title="Object storage secret",
        description=(
            "Secret whose keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL...) become the training "
            "pods' environment (envFrom), for s3:// paths; empty: the pods' own (a service account's role)."
        ),
    )
    scratch_size: str = Field(
        "100Gi",
        title="Scratch per node",
        description=(
            "Size limit of each pod's scratch (an emptyDir), where a run whose paths are in object storage keeps "
            "the model, the data and each checkpoint before it is uploaded; added to its ephemeral storage."
        ),
    )
    job_url_template: str | None = Field(
        None,
        title="Job link",
        description=(
            "URL of a training Job in your console, shown as the task's 'Training run' link; {namespace} and "
            "{job_name} are filled in, e.g. https://console.example.com/k8s/ns/{namespace}/jobs/{job_name}."
        ),
    )

    @field_validator("execution")
    @classmethod
    def _known_target(cls, value: str) -> str:
        """Checked against ``TARGETS`` when a connection is read, so a target added there is a choice."""
        if value not in TARGETS:
            *others, last = (repr(name) for name in TARGETS)
            expected = f"{', '.join(others)} or {last}" if others else last
            raise PydanticCustomError("literal_error", "must be {expected}", {"expected": expected})
        return value

    @field_validator("cpu")
    @classmethod
    def _cpu_quantity(cls, value: str) -> str:
        """Read here, not only by the API server: the pods' thread count derives from it."""
        if not _CPU_QUANTITY.fullmatch(value) or cpu_cores(value) <= 0:
            raise ValueError(f"must be a positive CPU quantity such as '8', '2.5' or '500m', got {value!r}")
        return value

    @field_validator("gpu_memory", "scratch_size")
    @classmethod
    def _memory_quantity(cls, value: str | int | None) -> str | None:
        """Read here, so that a typo fails when the connection is read, not when a task starts."""
        if value is not None and _quantity(str(value)) is None:
            raise ValueError(f"must be a positive memory quantity such as '80Gi' or '85899345920', got {value!r}")
        return None if value is None else str(value)

    @property
    def scratch_bytes(self) -> int:
        return _quantity(self.scratch_size)  # type: ignore[return-value]  # checked above

    @property
    def ephemeral_storage_bytes(self) -> int | None:
        return _quantity(self.ephemeral_storage)

    @property
    def gpu_memory_bytes(self) -> int | None:
        return None if self.gpu_memory is None else _quantity(str(self.gpu_memory))

    @field_validator("job_url_template")
    @classmethod
    def _link_template(cls, value: str | None) -> str | None:
        """A typo in a placeholder must fail when the connection is read, not when a link is drawn."""
        if value is None:
            return value
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as exc:
            raise ValueError(f"is not a valid template ({exc}): {value!r}") from None
        unknown = sorted(names - set(JOB_LINK_FIELDS))
        if unknown:
            raise ValueError(f"may contain {{namespace}} and {{job_name}} only, not {{{unknown[0]}}}: {value!r}")
        return value

    @field_validator("node_selector", "tolerations", "affinity", "image_pull_secrets", mode="before")
    @classmethod
    def _json_text(cls, value: Any) -> Any:
        """The connection form and ``AIRFLOW_CONN_*`` URIs may hand JSON over as text."""
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{at_character(exc)}.") from None
        return value

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> ConnectionSettings:
        """Read a connection's ``extra``; keys may carry Airflow 2's ``extra__training_hub__`` prefix.

        Blank form fields mean "default".
        """
        prefix = f"extra__{CONN_TYPE}__"
        values = {k.removeprefix(prefix): v for k, v in extra.items() if v not in (None, "")}
        try:
            return cls.parse(values)
        except ValueError as exc:
            raise ValueError(f"connection of type {CONN_TYPE!r}: {exc}") from None


_JSON_TYPES = {"string", "integer", "number", "boolean", "object", "array"}


def connection_form_fields() -> dict[str, dict[str, Any]]:
    """``conn-fields`` for ``get_provider_info``: the declarative connection form of Airflow >= 3.2."""
    schema = ConnectionSettings.model_json_schema()
    fields = {}
    for name, prop in schema["properties"].items():
        types = [t["type"] for t in prop.get("anyOf", [prop]) if t.get("type") in _JSON_TYPES]
        field_schema: dict[str, Any] = {"type": [*types, "null"]}
        if "enum" in prop:
            field_schema["enum"] = prop["enum"]
        if prop.get("default") not in (None, {}, []):
            field_schema["default"] = prop["default"]
        fields[name] = {"label": prop["title"], "description": prop["description"], "schema": field_schema}
    return fields
