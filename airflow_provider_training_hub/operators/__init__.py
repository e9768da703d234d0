"""Airflow operators: validate messages data or preference pairs, and train with a registered algorithm."""

from airflow_provider_training_hub.operators.train import (
    DPOTrainOperator,
    LoRATrainOperator,
    SFTTrainOperator,
    TrainOperator,
)
from airflow_provider_training_hub.operators.validate import ValidateMessagesDataOperator

__all__ = ["DPOTrainOperator", "LoRATrainOperator", "SFTTrainOperator", "TrainOperator", "ValidateMessagesDataOperator"]
