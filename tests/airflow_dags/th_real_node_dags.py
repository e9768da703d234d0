"""DAGs of the real-node tests (tests/test_real_pods.py): 2-node Jobs of real pods through the
`training_hub_real` connection, with the model and the data on the test bed's volume."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from airflow_provider_training_hub.operators import DPOTrainOperator, SFTTrainOperator

# th_real_train_once: no retry, for the pods that cannot start (a retry would wait as long again).
for dag_id, deferrable, retries in (("th_real_train", False, 1), ("th_real_train_deferred", True, 1),
                                    ("th_real_train_once", False, 0)):
    with DAG(dag_id, schedule=None, render_template_as_native_obj=True,
             default_args={"retries": retries, "retry_delay": timedelta(seconds=5)}):
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
            ttl_seconds_after_finished=60,  # the tests wait for the clean-up: the least allowed, not a day
            connection_overrides="{{ dag_run.conf.get('overrides', {}) }}",
            pending_timeout="{{ dag_run.conf.get('pending_timeout', 900) }}",
            poll_interval=1,
            deferrable=deferrable,
        )

# Everything in the S3 server of the node's network namespace (tests/test_pods_without_a_volume.py):
# the `training_hub_s3_pods` connection names no PVC.
with DAG("th_real_train_s3", schedule=None, render_template_as_native_obj=True,
         default_args={"retries": 1, "retry_delay": timedelta(seconds=5)}):
    SFTTrainOperator(
        task_id="train",
        training_hub_conn_id="training_hub_s3_pods",
        backend="pytorch",
        model_path="{{ dag_run.conf['model_path'] }}",
        data_path="{{ dag_run.conf['data_path'] }}",
        ckpt_output_dir="{{ dag_run.conf['ckpt_output_dir'] }}",
        nnodes=2,
        nproc_per_node=1,
        num_epochs="{{ dag_run.conf.get('num_epochs', 2) }}",
        learning_rate=1e-3,
        effective_batch_size=8,
        max_seq_len=256,
        ttl_seconds_after_finished=60,
        connection_overrides="{{ dag_run.conf.get('overrides', {}) }}",
        poll_interval=1,
    )

# DPO on two real pods (tests/test_real_pods.py), the tiny model, pairs on the volume.
with DAG("th_real_dpo", schedule=None, render_template_as_native_obj=True):
    DPOTrainOperator(
        task_id="train",
        training_hub_conn_id="training_hub_real",
        model_path="/mnt/training/models/tiny",
        data_path="/mnt/training/data/pairs.jsonl",
        nnodes=2,
        nproc_per_node=1,
        num_epochs=2,
        learning_rate=1e-3,
        effective_batch_size=8,
        max_length=256,
        ttl_seconds_after_finished=60,
        poll_interval=1,
    )
