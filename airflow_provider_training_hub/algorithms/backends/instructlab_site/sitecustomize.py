"""Run at start-up by every instructlab-training rank process, which the backend launches with this
folder first on ``PYTHONPATH``.

instructlab-training 0.16.2's ``Model.prepare_peft_model`` (every ``lora_sft`` run) imports
``peft_module_casting_to_bf16`` from ``trl.trainer.utils``, which trl removed in 1.0.0. An upper
bound on trl is no way out: trl 0.26, the last release that has it, misreads transformers 5's
``_is_package_available`` (a tuple, always true) and fails to import its own DPO trainer. So the
function is added to ``trl.trainer.utils`` when, and only when, that module is imported without it:
nothing is imported here at start-up, and a trl that still has the function keeps its own.

Python runs only the first ``sitecustomize`` on its path, so the one this file hides (a
distribution's, an image's) is run afterwards.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import runpy
import sys

_MODULE = "trl.trainer.utils"
_FUNCTION = "peft_module_casting_to_bf16"


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


class _AddMissingFunction(importlib.abc.MetaPathFinder):
    """Finds ``trl.trainer.utils`` as the path finder would, and adds the function once it has run."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module) -> None:
            run_module(module)
            if not hasattr(module, _FUNCTION):
                setattr(module, _FUNCTION, peft_module_casting_to_bf16)

        spec.loader.exec_module = exec_module
        return spec


def _run_hidden_sitecustomize() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        candidate = os.path.join(entry or os.getcwd(), "sitecustomize.py")
        if os.path.abspath(entry or os.getcwd()) != here and os.path.isfile(candidate):
            runpy.run_path(candidate, run_name="sitecustomize")
            return


sys.meta_path.insert(0, _AddMissingFunction())
_run_hidden_sitecustomize()
