"""Fine-tune language models as Airflow tasks: the training_hub API plus an Airflow provider.

``from airflow_provider_training_hub import sft, lora_sft, dpo, create_algorithm, AlgorithmRegistry``
(and the other names training_hub exports for them: ``Algorithm``, ``Backend``, ``SFTAlgorithm``,
``LoRASFTAlgorithm``, ``DPOAlgorithm``, ``TrainingHubCallback``, ``TrainingHubContext``, ``plot_loss``, ``estimate``) needs neither
Airflow nor torch; the Airflow pieces live in ``hooks``, ``operators`` and ``triggers``.
"""

from airflow_provider_training_hub.algorithms import (
    Algorithm,
    AlgorithmRegistry,
    Backend,
    DPOAlgorithm,
    LoRASFTAlgorithm,
    SFTAlgorithm,
    TrainingHubCallback,
    TrainingHubContext,
    create_algorithm,
    dpo,
    estimate,
    lora_sft,
    sft,
)
from airflow_provider_training_hub.loss_plot import plot_loss

__version__ = "0.1.0"

__all__ = [
    "Algorithm",
    "AlgorithmRegistry",
    "Backend",
    "DPOAlgorithm",
    "LoRASFTAlgorithm",
    "SFTAlgorithm",
    "TrainingHubCallback",
    "TrainingHubContext",
    "create_algorithm",
    "dpo",
    "estimate",
    "lora_sft",
    "plot_loss",
    "sft",
    "__version__",
]
