"""Messages-format JSONL: streaming validation with statistics, and preparation for training
(tokenize + mask with instructlab's own code). No Airflow here; datasets, transformers and
instructlab are imported only inside the functions that need them.
"""

from airflow_provider_training_hub.data.prepare import PreparedData, prepare_for_training
from airflow_provider_training_hub.data.validate import LineError, ValidationReport, validate_messages

__all__ = ["LineError", "PreparedData", "ValidationReport", "prepare_for_training", "validate_messages"]
