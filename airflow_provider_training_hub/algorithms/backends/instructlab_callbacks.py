"""Our callbacks in instructlab-training's ranks: one ``TrainerCallback`` that calls them.

Upstream sends a callback to its ranks as its class's source (``--callbacks``: ``inspect.getsource``
here, ``exec`` there with only ``TrainerCallback`` and ``TrainingContext`` in scope), so the class
imports what it uses inside its methods, and reads the callbacks' import paths from
``CALLBACKS_ENV``, which the ranks inherit from the process that starts torchrun; its annotations
name only what that scope has.
"""

from __future__ import annotations

from instructlab.training.callbacks import TrainerCallback, TrainingContext

CALLBACKS_ENV = "TRAINING_HUB_CALLBACKS"


class TrainingHubCallbacks(TrainerCallback):
    """Upstream's context as ours (its batch and validation metrics, and the checkpoint saved, in
    ``metrics``); rank by torchrun's ``RANK``."""

    def _fire(self, hook: str, context: TrainingContext) -> None:
        import json
        import os

        from airflow_provider_training_hub.algorithms.callbacks import Callbacks, TrainingHubContext

        if getattr(self, "_callbacks", None) is None:
            self._callbacks = Callbacks(json.loads(os.environ.get("TRAINING_HUB_CALLBACKS", "[]")),
                                        int(os.environ.get("RANK", "0")))
        metrics = {**context.batch_metrics, **context.val_metrics}
        if context.checkpoint_path:
            metrics["checkpoint_path"] = context.checkpoint_path
        self._callbacks.fire(hook, TrainingHubContext(
            step=context.step, epoch=context.epoch, loss=context.loss, learning_rate=context.learning_rate,
            is_main_process=context.is_world_process_zero, output_dir=context.output_dir, metrics=metrics))

    def on_train_begin(self, context: TrainingContext) -> None:
        self._fire("on_train_begin", context)

    def on_epoch_begin(self, context: TrainingContext) -> None:
        self._fire("on_epoch_begin", context)

    def on_step_begin(self, context: TrainingContext) -> None:
        self._fire("on_step_begin", context)

    def on_log(self, context: TrainingContext) -> None:
        self._fire("on_log", context)

    def on_evaluate(self, context: TrainingContext) -> None:
        self._fire("on_evaluate", context)

    def on_save(self, context: TrainingContext) -> None:
        self._fire("on_save", context)

    def on_step_end(self, context: TrainingContext) -> None:
        self._fire("on_step_end", context)

    def on_epoch_end(self, context: TrainingContext) -> None:
        self._fire("on_epoch_end", context)

    def on_train_end(self, context: TrainingContext) -> None:
        self._fire("on_train_end", context)
