"""DAGs for the provider tests only (copied into the test DAG folder by conftest)."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Asset, ObjectStoragePath

from airflow_provider_training_hub.operators import SFTTrainOperator, ValidateMessagesDataOperator

# Every value comes from the trigger's conf, as a UI user or an upstream XCom would supply it.
with DAG("th_train_from_conf", schedule=None, render_template_as_native_obj=True):
    SFTTrainOperator(
        task_id="train",
        backend="pytorch",
        model_path="{{ dag_run.conf['model_path'] }}",
        data_path="{{ dag_run.conf['data_path'] }}",
        ckpt_output_dir="{{ dag_run.conf.get('ckpt_output_dir') }}",  # None: the per-task default
        learning_rate="{{ dag_run.conf['learning_rate'] }}",
        num_epochs="{{ dag_run.conf['num_epochs'] }}",
        effective_batch_size=8,
        max_seq_len=256,
        retries=1,
        retry_delay=timedelta(seconds=0),
    )

# Local execution with MLflow tracking: the tracking server comes from the conf.
with DAG("th_tracked_train", schedule=None, render_template_as_native_obj=True):
    SFTTrainOperator(
        task_id="train",
        backend="pytorch",
        model_path="{{ dag_run.conf['model_path'] }}",
        data_path="{{ dag_run.conf['data_path'] }}",
        mlflow_tracking_uri="{{ dag_run.conf['mlflow_tracking_uri'] }}",
        mlflow_experiment_name="airflow-runs",
        num_epochs=1,
        effective_batch_size=16,
        max_seq_len=256,
    )

# Validate, then train on what validation wrote (OpenLineage: data in, checkpoint out).
with DAG("th_lineage", schedule=None, render_template_as_native_obj=True):
    validated = ValidateMessagesDataOperator(
        task_id="validate",
        data_path="{{ dag_run.conf['data_path'] }}",
        output_path="{{ dag_run.conf['output_path'] }}",
        model_path="{{ dag_run.conf['model_path'] }}",
    )
    SFTTrainOperator(
        task_id="train",
        backend="pytorch",
        model_path="{{ dag_run.conf['model_path'] }}",
        data_path=validated.output["data_path"],
        num_epochs=1,
        effective_batch_size=16,
        max_seq_len=256,
    )

with DAG("th_validate", schedule=None, render_template_as_native_obj=True):
    ValidateMessagesDataOperator(
        task_id="validate",
        data_path="{{ dag_run.conf['data_path'] }}",
        output_path="{{ dag_run.conf.get('output_path') }}",
        on_invalid="{{ dag_run.conf.get('on_invalid', 'fail') }}",
        model_path="{{ dag_run.conf.get('model_path') }}",
        max_seq_len="{{ dag_run.conf.get('max_seq_len') }}",
        prepare_dir="{{ dag_run.conf.get('prepare_dir') }}",
        workers="{{ dag_run.conf.get('workers') }}",
        outlets=[Asset("th_validated_messages")],
    )

# Everything in a bucket (tests/test_object_storage.py): paths as Airflow's ObjectStoragePath, whose
# connection (`th_s3`) holds the credentials; checkpoints under the connection's s3:// checkpoint root.
with DAG("th_object_storage", schedule=None):
    validated = ValidateMessagesDataOperator(
        task_id="validate", data_path=ObjectStoragePath("s3://th_s3@thub-airflow/data/train.jsonl"))
    SFTTrainOperator(
        task_id="train",
        training_hub_conn_id="training_hub_s3",
        backend="pytorch",
        model_path=ObjectStoragePath("s3://th_s3@thub-airflow/models/tiny"),
        data_path=validated.output["data_path"],
        num_epochs=1,
        effective_batch_size=16,
        max_seq_len=256,
    )
