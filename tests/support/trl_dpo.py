"""TRL's ``DPOTrainer`` on the same run as ``dpo()``: the reference that ``tests/test_dpo.py``
holds our DPO to, and the other engine of ``benchmarks/cpu_vs_trl.py``'s DPO rows.

The hyperparameters are set to ours, where TRL's defaults differ: AdamW's beta2 0.95, a cosine
schedule with no warmup, float32 on the CPU, no dropout; TRL computes the reference
log-probabilities at every step with a frozen copy of the model (or, under LoRA, with the
adapters disabled), as it does by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def lora_model(model_path: str | Path, seed: int, r: int, alpha: int) -> Any:
    """The model with fresh LoRA adapters on every linear projection, drawn as the ``pytorch``
    backend draws them (the seed set before the model loads), so both engines start equal."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def run_trl_dpo(model_path: str | Path, data_path: str | Path, output_dir: str | Path, *, steps: int, batch: int,
                learning_rate: float, beta: float = 0.1, loss_type: str = "sigmoid", max_length: int = 1024,
                seed: int = 42, lora: dict[str, int] | None = None, callbacks: list[Any] = ()) -> list[dict[str, Any]]:
    """``steps`` optimizer steps of ``batch`` pairs; TRL's log history, one record per step."""
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    if lora:
        model = lora_model(model_path, seed, lora["r"], lora["alpha"])
    else:
        model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    args = DPOConfig(
        output_dir=str(output_dir), per_device_train_batch_size=batch, gradient_accumulation_steps=1,
        max_steps=steps, learning_rate=learning_rate, lr_scheduler_type="cosine", warmup_steps=0,
        adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch", beta=beta, loss_type=[loss_type], max_length=max_length, logging_steps=1,
        save_strategy="no", report_to=[], use_cpu=True, bf16=False, fp16=False, seed=seed,
        gradient_checkpointing=False, disable_dropout=True, dataloader_num_workers=0,
    )
    dataset = load_dataset("json", data_files=str(data_path), split="train")
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=list(callbacks))
    trainer.train()
    return [record for record in trainer.state.log_history if "loss" in record]
