"""Messages-format JSONL: preparation for training (tokenize + mask with instructlab's own code).

No Airflow here, and datasets/transformers/instructlab are imported only inside functions.
"""

from airflow_provider_training_hub.data.prepare import PreparedData, prepare_for_training

__all__ = ["PreparedData", "prepare_for_training"]
