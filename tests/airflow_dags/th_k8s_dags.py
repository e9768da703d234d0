"""Kubernetes-execution DAGs for the k8s tests: everything that varies comes from the conf."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from airflow_provider_training_hub.operators import DPOTrainOperator, LoRATrainOperator, SFTTrainOperator

# th_k8s_train_retried: a failed try is retried after 20 s (and adopts the Job its predecessor
# left running); th_k8s_train_retried_anew: the same, not durable (every try starts its own Job);
# th_k8s_train_deferred_timeout: the deferral ends after 30 s (execution_timeout), which only a real
# scheduler enforces.
VARIANTS = {
    "th_k8s_train": {},
    "th_k8s_train_deferred": {"deferrable": True},
    "th_k8s_train_text": {"native": False},
    "th_k8s_train_retried": {"retries": 1},
    "th_k8s_train_retried_anew": {"retries": 1, "durable": False},
    "th_k8s_train_deferred_timeout": {"deferrable": True, "execution_timeout": timedelta(seconds=30)},
}
for dag_id, variant in VARIANTS.items():
    with DAG(dag_id, schedule=None, render_template_as_native_obj=variant.get("native", True),
             default_args={"retries": variant.get("retries", 0), "retry_delay": timedelta(seconds=20),
                           "execution_timeout": variant.get("execution_timeout")}):
        SFTTrainOperator(
            task_id="train",
            training_hub_conn_id="training_hub_k8s",
            backend="pytorch",
            model_path="{{ dag_run.conf.get('model_path', '/mnt/training/models/tiny') }}",
            data_path="/mnt/training/data/train.jsonl",
            nnodes="{{ dag_run.conf.get('nnodes', 2) }}",
            nproc_per_node="{{ dag_run.conf.get('nproc_per_node', 1) }}",
            connection_overrides="{{ dag_run.conf.get('overrides', {}) }}",
            pod_annotations="{{ dag_run.conf.get('pod_annotations', {}) }}",
            pending_timeout="{{ dag_run.conf.get('pending_timeout', 120) }}",
            job_backoff_limit="{{ dag_run.conf.get('job_backoff_limit', 0) }}",
            poll_interval=1,
            deferrable=variant.get("deferrable", False),
            durable=variant.get("durable", True),
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

with DAG("th_k8s_dpo", schedule=None, render_template_as_native_obj=True):
    DPOTrainOperator(
        task_id="train",
        training_hub_conn_id="training_hub_k8s",
        model_path="/mnt/training/models/sft",
        data_path="/mnt/training/data/pairs.jsonl",
        nnodes=2,
        beta=0.2,
        lora_r=8,
        pod_annotations="{{ dag_run.conf.get('pod_annotations', {}) }}",
        poll_interval=1,
    )
