"""Messages-format JSONL (and DPO's preference pairs, ``preference.py``): streaming validation with
statistics, and preparation for training (tokenize + mask with instructlab's own code). No Airflow here; datasets, transformers and
instructlab are imported only inside the functions that need them.
"""

from airflow_provider_training_hub.data.formats import DATA_FORMATS, validate_any
from airflow_provider_training_hub.data.prepare import PreparedData, prepare_for_training
from airflow_provider_training_hub.data.validate import LineError, ValidationReport, validate_messages

__all__ = ["DATA_FORMATS", "LineError", "PreparedData", "ValidationReport", "prepare_for_training", "validate_any",
           "validate_messages"]
