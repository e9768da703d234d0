"""sft_retrain: retrain on Kubernetes whenever the data team publishes a dataset, and weekly."""

from __future__ import annotations

from airflow.sdk import Asset, Param, dag, task
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable

from airflow_provider_training_hub.operators import SFTTrainOperator
from airflow_provider_training_hub.operators.params import algorithm_params

MESSAGES_DATASET = Asset("training_hub_messages_dataset")  # emitted by messages_dataset_publish
FINE_TUNED_MODEL = Asset("training_hub_fine_tuned_model")  # its events' extra holds the checkpoint

DOC = """
### Scheduled retraining on GPU pods

Runs when `messages_dataset_publish` emits `training_hub_messages_dataset`, and every Monday
03:00 UTC. **train** submits an Indexed Job of `nnodes` pods with `nproc_per_node` GPUs each
through the `training_hub_k8s` connection (execution `kubernetes`, image, namespace, PVC).
Paths are as the pods see them on the PVC. The checkpoint location comes back through XCom and
is published as the `training_hub_fine_tuned_model` Asset.
"""


@dag(
    dag_id="sft_retrain",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 3 * * 1", timezone="UTC"), assets=[MESSAGES_DATASET]
    ),
    catchup=False,
    doc_md=DOC,
    tags=["training-hub", "kubernetes"],
    render_template_as_native_obj=True,
    params={
        "model_path": Param(
            "/mnt/training/models/granite-3.1-8b-instruct", type="string", title="Base model",
            description="Model directory on the PVC.",
        ),
        "data_path": Param(
            "/mnt/training/datasets/messages/train.jsonl", type="string", title="Data",
            description="Used when no dataset event triggered the run.",
        ),
        **algorithm_params("sft", ["num_epochs", "learning_rate", "nnodes", "nproc_per_node"], nnodes=2, nproc_per_node=8),
    },
)
def sft_retrain():
    @task
    def dataset_path(params: dict, triggering_asset_events=None) -> str:
        events = triggering_asset_events[MESSAGES_DATASET] if triggering_asset_events else []
        return events[-1].extra["data_path"] if events else params["data_path"]

    SFTTrainOperator(
        task_id="train",
        training_hub_conn_id="training_hub_k8s",
        model_path="{{ params.model_path }}",
        data_path=dataset_path(),
        num_epochs="{{ params.num_epochs }}",
        learning_rate="{{ params.learning_rate }}",
        nnodes="{{ params.nnodes }}",
        nproc_per_node="{{ params.nproc_per_node }}",
        max_tokens_per_gpu=20000,
        save_samples=250000,
        outlets=[FINE_TUNED_MODEL],
    )


sft_retrain()
