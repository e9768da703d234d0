"""Airflow's provider metadata, found through the ``apache_airflow_provider`` entry point."""

from airflow_provider_training_hub import __version__


def get_provider_info() -> dict:
    return {
        "package-name": "airflow-provider-training-hub",
        "name": "Training Hub",
        "description": "Fine-tune language models (SFT) from Airflow, locally or as GPU Jobs on Kubernetes.",
        "versions": [__version__],
    }
