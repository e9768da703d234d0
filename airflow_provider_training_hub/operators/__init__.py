"""Airflow operators: validate messages data, and train with a registered algorithm."""

from airflow_provider_training_hub.operators.train import LoRATrainOperator, SFTTrainOperator, TrainOperator
from airflow_provider_training_hub.operators.validate import ValidateMessagesDataOperator

__all__ = ["LoRATrainOperator", "SFTTrainOperator", "TrainOperator", "ValidateMessagesDataOperator"]
