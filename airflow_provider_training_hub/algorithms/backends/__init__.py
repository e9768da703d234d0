"""Built-in backends; importing this registers them (each imports its heavy libraries lazily)."""

from airflow_provider_training_hub.algorithms.backends import instructlab  # noqa: F401
from airflow_provider_training_hub.algorithms.backends import pytorch  # noqa: F401
