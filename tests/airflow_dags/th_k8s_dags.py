"""Kubernetes-execution DAGs for the k8s tests: everything that varies comes from the conf."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from airflow_provider_training_hub.operators import LoRATrainOperator, SFTTrainOperator

# th_k8s_train_retried: a try that fails (an API outage) is retried after 20 s.
for dag_id, deferrable, native, retries in (
    ("th_k8s_train", False, True, 0), ("th_k8s_train_deferred", True, True, 0), ("th_k8s_train_text", False, False, 0),
    ("th_k8s_train_retried", False, True, 1),
):
    with DAG(dag_id, schedule=None, render_template_as_native_obj=native,
             default_args={"retries": retries, "retry_delay": timedelta(seconds=20)}):
        SFTTrainOperator(
            task_id="train",
            training_hub_conn_id="training_hub_k8s",
            backend="pytorch",
            model_path="/mnt/training/models/tiny",
            data_path="/mnt/training/data/train.jsonl",
            nnodes="{{ dag_run.conf.get('nnodes', 2) }}",
            nproc_per_node="{{ dag_run.conf.get('nproc_per_node', 1) }}",
            connection_overrides="{{ dag_run.conf.get('overrides', {}) }}",
            pod_annotations="{{ dag_run.conf.get('pod_annotations', {}) }}",
            pending_timeout="{{ dag_run.conf.get('pending_timeout', 120) }}",
            job_backoff_limit="{{ dag_run.conf.get('job_backoff_limit', 0) }}",
            poll_interval=1,
            deferrable=deferrable,
        )

with DAG("th_k8s_lora", schedule=None, render_template_as_native_obj=True):
    LoRATrainOperator(
        task_id="train",
        training_hub_conn_id="training_hub_k8s",
        model_path="/mnt/training/models/tiny",
        data_path="/mnt/training/data/train.jsonl",
        nnodes=2,
        lora_r=8,
        target_modules=["q_proj", "v_proj"],
        pod_annotations="{{ dag_run.conf.get('pod_annotations', {}) }}",
        poll_interval=1,
    )
