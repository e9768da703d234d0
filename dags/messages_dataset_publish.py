"""messages_dataset_publish: the data team's gate. Validate a day's messages JSONL, keep the bad
lines for a human, and publish the good part as an Asset that retraining consumes."""

from __future__ import annotations

from airflow.sdk import Asset, Param, dag

from airflow_provider_training_hub.operators import ValidateMessagesDataOperator

# Assets match by name across DAG files: sft_retrain schedules on this one.
MESSAGES_DATASET = Asset("training_hub_messages_dataset")

DOC = """
### Publish a validated messages dataset

- **validate_and_publish** reads `source` (a local path or any fsspec URL, `.gz` included),
  writes the valid samples to `destination`, and the invalid lines, each with its line number
  and reason, to `<destination>.rejected.jsonl` (`on_invalid=skip`). With `on_invalid=fail`
  any invalid line fails the task and lists the first errors.
- On success it emits the `training_hub_messages_dataset` Asset; the event's `extra` carries the
  `data_path`, so `sft_retrain` trains on exactly this file. Put `destination` on storage the
  training pods mount (the connection's PVC).
"""


@dag(
    dag_id="messages_dataset_publish",
    schedule="@daily",
    catchup=False,
    doc_md=DOC,
    tags=["training-hub", "data"],
    params={
        "source": Param(
            "/mnt/training/incoming/train.jsonl", type="string", title="Source",
            description="Messages JSONL written by an upstream pipeline (path or fsspec URL).",
        ),
        "destination": Param(
            "/mnt/training/datasets/messages/train.jsonl", type="string", title="Destination",
            description="Where the validated samples go; training reads this file.",
        ),
        "on_invalid": Param("skip", type="string", enum=["skip", "fail"], title="On invalid lines"),
    },
)
def messages_dataset_publish():
    ValidateMessagesDataOperator(
        task_id="validate_and_publish",
        data_path="{{ params.source }}",
        output_path="{{ params.destination }}",
        on_invalid="{{ params.on_invalid }}",
        outlets=[MESSAGES_DATASET],
    )


messages_dataset_publish()
