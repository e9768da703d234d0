"""DAGs of the real-node tests (tests/test_real_pods.py): 2-node Jobs of real pods through the
`training_hub_real` connection, with the model and the data on the test bed's volume."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from airflow_provider_training_hub.operators import SFTTrainOperator

for dag_id, deferrable in (("th_real_train", False), ("th_real_train_deferred", True)):
    with DAG(dag_id, schedule=None, render_template_as_native_obj=True,
             default_args={"retries": 1, "retry_delay": timedelta(seconds=5)}):
        SFTTrainOperator(
            task_id="train",
            training_hub_conn_id="training_hub_real",
            backend="pytorch",
            model_path="{{ dag_run.conf.get('model_path', '/mnt/training/models/tiny') }}",
            data_path="/mnt/training/data/train.jsonl",
            nnodes=2,
            nproc_per_node=1,
            num_epochs="{{ dag_run.conf.get('num_epochs', 2) }}",
            learning_rate=1e-3,
            effective_batch_size=8,
            max_seq_len=256,
            ttl_seconds_after_finished=20,  # the tests wait for the clean-up: 20 s, not a day
            poll_interval=1,
            deferrable=deferrable,
        )
