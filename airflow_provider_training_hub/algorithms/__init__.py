"""The training_hub API: no Airflow here, and torch/transformers/instructlab only inside backends."""

from airflow_provider_training_hub.algorithms.callbacks import TrainingHubCallback, TrainingHubContext
from airflow_provider_training_hub.algorithms.memory import estimate
from airflow_provider_training_hub.algorithms.registry import (
    Algorithm,
    AlgorithmRegistry,
    Backend,
    create_algorithm,
    register_algorithm,
    register_backend,
)
from airflow_provider_training_hub.algorithms.sft import SFTAlgorithm, SFTParams, sft
from airflow_provider_training_hub.algorithms.lora import LoRASFTAlgorithm, LoRAParams, lora_sft
from airflow_provider_training_hub.algorithms.dpo import DPOAlgorithm, DPOParams, dpo
from airflow_provider_training_hub.algorithms import backends  # noqa: F401  (registers the built-in backends)

__all__ = [
    "Algorithm",
    "AlgorithmRegistry",
    "Backend",
    "DPOAlgorithm",
    "DPOParams",
    "LoRASFTAlgorithm",
    "LoRAParams",
    "SFTAlgorithm",
    "SFTParams",
    "TrainingHubCallback",
    "TrainingHubContext",
    "create_algorithm",
    "dpo",
    "estimate",
    "register_algorithm",
    "lora_sft",
    "register_backend",
    "sft",
]
