"""training_hub's callback API: ``TrainingHubCallback`` hooks, called in the training processes of
both backends, on rank 0 (on every rank for a class with ``run_on_all_ranks``).

Training runs in torchrun processes, and on Kubernetes in pods, so a callback travels as the
import path of its class (``package.module:Class``): JSON that a DAG's parameters carry, and that
each rank imports and instantiates with no arguments. training_hub sends a class's source code
instead, which loses every module-level name the class uses; an import path keeps them, but the
class must be importable where training runs (not defined in ``__main__`` or inside a function).
As in training_hub, a hook that raises is reported and training goes on: a dashboard's failure
must not cost hours of training.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_training_hub.log_lines import WARNING_MARK

HOOKS = ("on_train_begin", "on_epoch_begin", "on_step_begin", "on_log", "on_evaluate", "on_save", "on_step_end",
         "on_epoch_end", "on_train_end")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


@dataclass
class TrainingHubContext:
    """The training state a hook sees, the same on both backends (training_hub's fields)."""

    step: int = 0
    epoch: int = 0
    loss: float | None = None
    learning_rate: float | None = None
    is_main_process: bool = True
    output_dir: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


class TrainingHubCallback:
    """Subclass it and override the hooks you need; each is a no-op here."""

    run_on_all_ranks: bool = False

    def on_train_begin(self, context: TrainingHubContext) -> None:
        """Before the first step (of this attempt: a resumed run begins again)."""

    def on_epoch_begin(self, context: TrainingHubContext) -> None:
        """At the start of each epoch."""

    def on_step_begin(self, context: TrainingHubContext) -> None:
        """Before each optimizer step."""

    def on_log(self, context: TrainingHubContext) -> None:
        """After each step's metrics are written (``context.metrics`` is the metrics file's record)."""

    def on_evaluate(self, context: TrainingHubContext) -> None:
        """After each evaluation (``context.metrics`` holds ``val_loss``)."""

    def on_save(self, context: TrainingHubContext) -> None:
        """After a checkpoint or full state is complete (``context.metrics["checkpoint_path"]``)."""

    def on_step_end(self, context: TrainingHubContext) -> None:
        """After each optimizer step."""

    def on_epoch_end(self, context: TrainingHubContext) -> None:
        """At the end of each epoch."""

    def on_train_end(self, context: TrainingHubContext) -> None:
        """After the last step and its saves."""


def import_path(callback: Any) -> str:
    """``package.module:Class`` for a callback given as that text, as its class, or as an instance
    (whose constructor arguments cannot travel: each rank makes its own with none)."""
    if isinstance(callback, str):
        if not _IMPORT_PATH.match(callback):
            raise ValueError(f"callback {callback!r} is not an import path 'package.module:Class'")
        return callback
    cls = callback if isinstance(callback, type) else type(callback)
    if not _has_hooks(cls):
        raise ValueError(f"callback {callback!r} is not an import path, nor a class or an instance with "
                         f"TrainingHubCallback's hooks ({', '.join(HOOKS)})")
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        raise ValueError(
            f"callback {cls.__qualname__} is defined in {'a function' if '<locals>' in cls.__qualname__ else '__main__'}"
            ", which the training processes cannot import: define it at the top level of a module that training "
            "can import (on its PYTHONPATH, or in the training image)"
        )
    return f"{cls.__module__}:{cls.__qualname__}"


def load_class(path: str) -> type:
    module_name, _, qualname = path.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"callback {path!r} cannot be imported here: {exc}") from None
    if not isinstance(found, type) or not _has_hooks(found):
        raise ValueError(f"callback {path!r} is not a class with TrainingHubCallback's hooks ({', '.join(HOOKS)})")
    return found


def _has_hooks(cls: type) -> bool:
    """A class written for training_hub subclasses training_hub's own base, not ours: its hooks say what it is."""
    return any(callable(getattr(cls, hook, None)) for hook in HOOKS)


class Callbacks:
    """This rank's callbacks, each made once, and the one way their hooks are called."""

    def __init__(self, paths: Iterable[str], rank: int) -> None:
        made = [load_class(path)() for path in paths]
        self.active = [cb for cb in made if rank == 0 or getattr(cb, "run_on_all_ranks", False)]

    def fire(self, hook: str, context: TrainingHubContext) -> None:
        for callback in self.active:
            try:
                getattr(callback, hook)(context)
            except Exception as exc:  # a user's hook: whatever it raises, training goes on
                print(f"{WARNING_MARK}callback {type(callback).__qualname__}.{hook} failed "
                      f"({type(exc).__name__}: {exc}); training goes on", file=sys.stderr, flush=True)
