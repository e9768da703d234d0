"""Run at start-up by every instructlab-training rank process, which the backend launches with this
folder first on ``PYTHONPATH``: it mends, as each is imported, what keeps ``lora_sft`` from working
on instructlab-training 0.16.2.

- ``Model.prepare_peft_model`` imports ``peft_module_casting_to_bf16`` from ``trl.trainer.utils``,
  which trl removed in 1.0.0. An upper bound on trl is no way out: trl 0.26, the last release that
  has it, misreads transformers 5's ``_is_package_available`` (a tuple, always true) and fails to
  import its own DPO trainer. So ``trl.trainer.utils`` gets the function when it lacks it.
- ``utils.save_fsdp_lora_model``, which saves every LoRA checkpoint under FSDP, reads
  ``args.lora_config``, which main_ds.py never sets, and loads the trained state into a
  ``LoraModel`` copy although the trained model is a ``PeftModel`` (whose keys carry one more
  prefix). Up to 0.16.2 it is replaced by ``save_fsdp_lora_model`` below, which does what upstream
  means: the merged model, saved in safetensors.

Nothing is imported here at start-up. Python runs only the first ``sitecustomize`` on its path, so
the one this file hides (a distribution's, an image's) is run afterwards.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import runpy
import sys
from collections.abc import Callable
from types import ModuleType

BROKEN_LORA_SAVE_UP_TO = (0, 16, 2)  # the newest instructlab-training release, checked on a GPU


def peft_module_casting_to_bf16(model) -> None:
    """trl 0.x's meaning: in a QLoRA model trained in bf16, norms compute in float32 and the float32
    embeddings and output head in bf16."""
    import torch

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.LayerNorm) or "norm" in name:
            module.to(torch.float32)
        elif any(part in name for part in ("lm_head", "embed_tokens", "wte", "wpe")):
            weight = getattr(module, "weight", None)
            if weight is not None and weight.dtype == torch.float32:
                module.to(torch.bfloat16)


def save_fsdp_lora_model(args, model, tokenizer, accelerator, output_dir) -> None:
    """Upstream's: the FSDP model's full state gathered on rank 0, loaded into a CPU copy of the base
    model wrapped as the trained one is, the adapters merged, the result saved. The LoRA
    configuration is the trained model's own."""
    import copy

    import torch.distributed as dist
    from peft import LoraModel, PeftModel, get_peft_model
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from transformers import AutoModelForCausalLM

    trained = model.module
    config = copy.deepcopy(trained.peft_config["default"])
    with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=True,
                                                                                       rank0_only=True)):
        state = model.state_dict()
    if accelerator.is_main_process:
        base_args = {k: v for k, v in args.base_model_args.items() if k != "device_map"}
        base = AutoModelForCausalLM.from_pretrained(**base_args, device_map="cpu")
        adapted = get_peft_model(base, config) if isinstance(trained, PeftModel) else LoraModel(base, config, "default")
        adapted.load_state_dict(state)
        adapted.merge_and_unload().save_pretrained(output_dir, safe_serialization=True)
        tokenizer.save_pretrained(output_dir)
    dist.barrier()


def _add_casting(module: ModuleType) -> None:
    if not hasattr(module, "peft_module_casting_to_bf16"):
        module.peft_module_casting_to_bf16 = peft_module_casting_to_bf16


def _mend_lora_save(module: ModuleType) -> None:
    from importlib.metadata import version

    release = tuple(int(part) for part in version("instructlab-training").split(".")[:3] if part.isdigit())
    if release <= BROKEN_LORA_SAVE_UP_TO:
        module.save_fsdp_lora_model = save_fsdp_lora_model


MENDS: dict[str, Callable[[ModuleType], None]] = {
    "trl.trainer.utils": _add_casting,
    "instructlab.training.utils": _mend_lora_save,
}


class _MendOnImport(importlib.abc.MetaPathFinder):
    """Finds a module of ``MENDS`` as the path finder would, and mends it once it has run."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in MENDS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run_module(module)
            MENDS[fullname](module)

        spec.loader.exec_module = exec_module
        return spec


def _run_hidden_sitecustomize() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        folder = os.path.abspath(entry or os.getcwd())
        candidate = os.path.join(folder, "sitecustomize.py")
        if folder != here and os.path.isfile(candidate):
            runpy.run_path(candidate, run_name="sitecustomize")
            return


sys.meta_path.insert(0, _MendOnImport())
_run_hidden_sitecustomize()
