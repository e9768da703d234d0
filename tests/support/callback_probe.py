"""Callbacks as a user writes them, for tests/test_callbacks.py: importable by the training ranks
(the test puts tests/ on their PYTHONPATH), each hook a line in ``$CALLBACK_PROBE_LOG``."""

from __future__ import annotations

import json
import os

from airflow_provider_training_hub import TrainingHubCallback, TrainingHubContext


class Recorder(TrainingHubCallback):
    def _record(self, hook: str, context: TrainingHubContext) -> None:
        line = {"hook": hook, "step": context.step, "epoch": context.epoch, "loss": context.loss,
                "learning_rate": context.learning_rate, "main": context.is_main_process,
                "output_dir": context.output_dir, "metrics": context.metrics, "rank": os.environ.get("RANK")}
        with open(os.environ["CALLBACK_PROBE_LOG"], "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")

    def on_train_begin(self, context: TrainingHubContext) -> None:
        self._record("on_train_begin", context)

    def on_epoch_begin(self, context: TrainingHubContext) -> None:
        self._record("on_epoch_begin", context)

    def on_step_begin(self, context: TrainingHubContext) -> None:
        self._record("on_step_begin", context)

    def on_log(self, context: TrainingHubContext) -> None:
        self._record("on_log", context)

    def on_evaluate(self, context: TrainingHubContext) -> None:
        self._record("on_evaluate", context)

    def on_save(self, context: TrainingHubContext) -> None:
        self._record("on_save", context)

    def on_step_end(self, context: TrainingHubContext) -> None:
        self._record("on_step_end", context)

    def on_epoch_end(self, context: TrainingHubContext) -> None:
        self._record("on_epoch_end", context)

    def on_train_end(self, context: TrainingHubContext) -> None:
        self._record("on_train_end", context)


class Failing(TrainingHubCallback):
    """A hook that raises: reported, and training goes on."""

    def on_log(self, context: TrainingHubContext) -> None:
        raise RuntimeError("the dashboard is down")


class HoldAfterFirstEpoch(TrainingHubCallback):
    """Holds the run once its first epoch's full state is saved, until the test kills it: a kill at
    an exact point of training, however late the test reads the log line that announces it."""

    def on_save(self, context: TrainingHubContext) -> None:
        if context.metrics.get("checkpoint_path", "").endswith(os.path.join("full_state", "epoch_0")):
            import time

            time.sleep(600)
