"""lora_adapters: one LoRA adapter per dataset on one shared, frozen base model, as mapped tasks."""

from __future__ import annotations

import os

from airflow.sdk import Asset, Param, dag, task

from airflow_provider_training_hub.operators import LoRATrainOperator, ValidateMessagesDataOperator
from airflow_provider_training_hub.operators.params import algorithm_params

ADAPTERS = Asset("training_hub_lora_adapters")  # one event per adapter; its extra holds the checkpoint
TUNED = ["num_epochs", "learning_rate", "lora_r", "lora_alpha", "max_seq_len"]

DOC = """
### One adapter per dataset

The base model stays frozen and shared; each dataset (a team's messages JSONL, say) gets its own
LoRA adapter, a few MB rather than a copy of the model. One task per dataset, made at run time
from the **Datasets** list (dynamic task mapping):

1. **plan** pairs each dataset with the path of its validated copy.
2. **validate** checks each file; bad lines go to `<copy>.rejected.jsonl` with their line numbers
   and reasons (`on_invalid=skip`), and the valid ones on to training.
3. **adapter** (`LoRATrainOperator`) trains one adapter per validated file, into
   `<checkpoint root>/lora_adapters/<run_id>/adapter-<map index>`, and emits the
   `training_hub_lora_adapters` Asset with the checkpoint as the event's `extra`.
4. **catalog** lists dataset, adapter checkpoint and final loss.

Training runs where the `training_hub_default` connection says: on the worker when there is no
such connection (`pytorch` backend, CPU or GPU), or as Kubernetes Jobs when its execution is
`kubernetes`; every path is then as the pods see it on the PVC.
"""


def validated_path(result: dict) -> str:
    """What a validate task passes on: its XCom's ``data_path`` (Airflow maps over whole XComs only)."""
    return result["data_path"]


@dag(
    dag_id="lora_adapters",
    schedule=None,
    catchup=False,
    doc_md=DOC,
    tags=["training-hub", "lora", "data"],
    render_template_as_native_obj=True,
    params={
        "model_path": Param(
            "/mnt/training/models/granite-3.1-8b-instruct", type="string", title="Base model",
            description="Model directory that every adapter is trained on (it is not changed).",
        ),
        "datasets": Param(
            ["/mnt/training/datasets/support.jsonl", "/mnt/training/datasets/billing.jsonl"],
            type="array", items={"type": "string"}, minItems=1, title="Datasets",
            description="Messages JSONL files, one adapter each.",
        ),
        "validated_dir": Param(
            "/mnt/training/datasets/validated", type="string", title="Validated copies",
            description="Where the validated copy of each dataset goes, under a folder per run.",
        ),
        **algorithm_params("lora_sft", TUNED),
    },
)
def lora_adapters():
    @task
    def plan(params: dict, run_id=None) -> list[dict[str, str]]:
        folder = os.path.join(params["validated_dir"], run_id.replace(":", "_"))
        return [
            {"data_path": path, "output_path": os.path.join(folder, f"{i}-{os.path.basename(path)}")}
            for i, path in enumerate(params["datasets"])
        ]

    validate = ValidateMessagesDataOperator.partial(task_id="validate", on_invalid="skip").expand_kwargs(plan())
    adapters = LoRATrainOperator.partial(
        task_id="adapter",
        model_path="{{ params.model_path }}",
        **{name: "{{ params.%s }}" % name for name in TUNED},
        outlets=[ADAPTERS],
    ).expand(data_path=validate.output.map(validated_path))

    @task
    def catalog(results: list[dict], params: dict) -> list[dict]:
        rows = [
            {"dataset": dataset, "checkpoint": result["checkpoint"], "loss": result["metrics"].get("loss")}
            for dataset, result in zip(params["datasets"], results, strict=True)
        ]
        for row in rows:
            print(f"{row['dataset']}: {row['checkpoint']} (final loss {row['loss']})")
        return rows

    catalog(adapters.output)


lora_adapters()
