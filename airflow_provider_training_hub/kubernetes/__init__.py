"""Pure builders of the Kubernetes objects of a training run (no I/O, no Airflow, no torch)."""

from airflow_provider_training_hub.kubernetes.job import TrainingJob, build_job, build_service
from airflow_provider_training_hub.kubernetes.names import job_name, label_value

__all__ = ["TrainingJob", "build_job", "build_service", "job_name", "label_value"]
