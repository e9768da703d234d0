"""Airflow's provider metadata, found through the ``apache_airflow_provider`` entry point.

The connection form is declared here (``conn-fields``), not by hook methods, which Airflow 3.2
deprecated; its fields come from ``ConnectionSettings``.
"""

from airflow_provider_training_hub import __version__
from airflow_provider_training_hub.connection import CONN_TYPE, connection_form_fields

_PKG = "airflow_provider_training_hub"


def get_provider_info() -> dict:
    return {
        "package-name": "airflow-provider-training-hub",
        "name": "Training Hub",
        "description": "Fine-tune language models (SFT) from Airflow, locally or as GPU Jobs on Kubernetes.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Training Hub",
                "external-doc-url": "https://github.com/Red-Hat-AI-Innovation-Team/training_hub",
                "tags": ["software"],
            }
        ],
        "hooks": [{"integration-name": "Training Hub", "python-modules": [f"{_PKG}.hooks.training_hub"]}],
        "operators": [
            {
                "integration-name": "Training Hub",
                "python-modules": [f"{_PKG}.operators.validate", f"{_PKG}.operators.train"],
            }
        ],
        "triggers": [{"integration-name": "Training Hub", "python-modules": [f"{_PKG}.triggers.training_job"]}],
        "extra-links": [f"{_PKG}.operators.links.TrainingRunLink", f"{_PKG}.operators.links.MLflowRunLink"],
        "connection-types": [
            {
                "connection-type": CONN_TYPE,
                "hook-class-name": f"{_PKG}.hooks.training_hub.TrainingHubHook",
                "hook-name": "Training Hub",
                "conn-fields": connection_form_fields(),
                "ui-field-behaviour": {
                    "hidden-fields": ["host", "port", "login", "password", "schema", "extra"],
                    "relabeling": {},
                    "placeholders": {},
                },
            }
        ],
    }
