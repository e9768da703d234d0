"""Direct Preference Optimization: its parameter schema, the algorithm, and the ``dpo()`` shortcut.

The schema is ``TrainingParams`` (epochs, learning rate, effective batch, checkpoints, tracking,
torchrun topology: what ``sft`` means by them) plus DPO's own fields under TRL 1.16's names and
defaults: ``beta``, ``loss_type``, ``label_smoothing``, ``max_length``. TRL 1.16 has no
``max_prompt_length`` any more (a pair whose prompt fills ``max_length`` is dropped), so neither
has this schema. The learning rate defaults to TRL's ``DPOConfig``'s 1e-6.

The reference model is the starting model, frozen: its log-probabilities of every pair are
computed once, before the first step (a resumed run computes them from ``model_path`` again), so
no second copy of the model is held while training. With ``lora_r`` set, only LoRA adapters are
trained and the reference is the model with its adapters disabled.

Only the ``pytorch`` backend has DPO: instructlab-training has none (its issue #341 is open).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from airflow_provider_training_hub.algorithms.lora import LoRAParams
from airflow_provider_training_hub.algorithms.params import reused_field
from airflow_provider_training_hub.algorithms.registry import Algorithm, create_algorithm, register_algorithm
from airflow_provider_training_hub.algorithms.training_params import TrainingParams

DEFAULT_BACKEND = "pytorch"


class DPOParams(TrainingParams):
    """Every parameter of ``dpo()``."""

    RESULT_NEUTRAL: ClassVar[frozenset[str]] = TrainingParams.RESULT_NEUTRAL

    data_path: str = reused_field(TrainingParams, "data_path", description=(
        "Preference pairs, JSONL: {\"prompt\": [messages], \"chosen\": [messages], \"rejected\": [messages]} per "
        "line, or {\"chosen\", \"rejected\"} whose shared leading messages are the prompt (TRL's formats)."))
    learning_rate: float = reused_field(TrainingParams, "learning_rate", default=1e-6, description=(
        "Peak learning rate, reached after warmup_steps (TRL's DPO default, 1e-6): DPO moves a model that "
        "already answers well, and a large step undoes what SFT taught."))

    beta: float = Field(0.1, gt=0, description=(
        "How far the policy may move from the reference model: higher keeps it closer (TRL's beta; for "
        "loss_type='ipo', the regularisation tau)."))
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field("sigmoid", description=(
        "'sigmoid': DPO's loss; 'ipo': IPO's, on per-token log-ratios; 'hinge': SLiC's hinge on the reward "
        "margin (TRL's names and formulas)."))
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description=(
        "The probability that a pair's preference is flipped (conservative DPO, loss_type='sigmoid' only): "
        "0 trusts every label."))
    max_length: int = Field(1024, ge=1, description=(
        "Most tokens of the prompt plus one reply; longer ones keep their start (TRL's keep_start), and a pair "
        "whose prompt alone fills max_length is dropped (and counted)."))

    lora_r: int | None = Field(None, ge=1, description=(
        "Train LoRA adapters of this rank on the frozen model instead of every weight; the reference model is "
        "then the model with its adapters disabled. Unset: full DPO."))
    lora_alpha: int = reused_field(LoRAParams, "lora_alpha")
    lora_dropout: float = reused_field(LoRAParams, "lora_dropout")
    target_modules: list[str] | None = reused_field(LoRAParams, "target_modules")

    @model_validator(mode="after")
    def _consistent(self) -> DPOParams:
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ValueError(f"label_smoothing ({self.label_smoothing}) applies to loss_type='sigmoid' only, "
                             f"not {self.loss_type!r}.")
        adapter_fields = {"lora_alpha", "lora_dropout", "target_modules"} & self.model_fields_set
        if self.lora_r is None and adapter_fields:
            raise ValueError(f"{', '.join(sorted(adapter_fields))} shape LoRA adapters: set lora_r too, or leave "
                             "them unset for full DPO.")
        return self

    @property
    def longest_sample(self) -> int:
        return 2 * self.max_length

    @property
    def longest_sample_name(self) -> str:
        return "2 x max_length (a pair's two sequences)"


@register_algorithm("dpo")
class DPOAlgorithm(Algorithm):
    """Preference tuning from chosen and rejected replies, against the frozen starting model."""

    params_schema = DPOParams


def dpo(model_path: str, data_path: str, ckpt_output_dir: str, backend: str = DEFAULT_BACKEND, **kwargs: Any):
    """Preference-tune ``model_path`` on the pairs of ``data_path``; see ``DPOParams`` for every parameter."""
    algorithm = create_algorithm("dpo", backend)
    return algorithm.train(model_path=model_path, data_path=data_path, ckpt_output_dir=ckpt_output_dir, **kwargs)


def preference_margins(model_path: str, data_path: str, max_length: int = 1024) -> list[float]:
    """Each pair's margin, log p(chosen) - log p(rejected) of its replies under ``model_path``
    (an adapter directory loads with its base model): above 0, the model prefers the chosen reply.
    Computed apart from the trainer (a plain forward per sequence), so it checks what training did."""
    import torch
    from transformers import AutoModelForCausalLM

    from airflow_provider_training_hub.data.preference import load_tokenizer, read_valid_pairs, tokenize_pair

    tokenizer = load_tokenizer(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()

    def reply_logp(prompt: list[int], reply: list[int]) -> float:
        ids = torch.tensor([(prompt + reply)[:max_length]])
        with torch.no_grad():
            logps = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
        targets = ids[0, 1:]
        return logps[len(prompt) - 1:].gather(-1, targets[len(prompt) - 1:, None]).sum().item()

    margins = []
    for pair in read_valid_pairs(data_path):
        prompt, chosen, rejected = tokenize_pair(tokenizer, pair)
        margins.append(reply_logp(prompt, chosen) - reply_logp(prompt, rejected))
    return margins
