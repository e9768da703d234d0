"""What a callback may be, refused before any work when it cannot reach the training processes.
Their hooks firing, on both backends: tests/test_tracking.py (pytorch, for real) and
tests/test_instructlab_backend.py (through upstream's own --callbacks)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.callback_probe import Recorder

from airflow_provider_training_hub import TrainingHubCallback, sft
from airflow_provider_training_hub.algorithms import SFTParams

BASE = {"model_path": "m", "data_path": "d", "ckpt_output_dir": "c"}


class Written(TrainingHubCallback):  # defined in a test module: importable as tests' own
    pass


class UpstreamStyle:  # written for training_hub, whose base class is not ours: its hooks are what count
    def on_log(self, context) -> None:
        pass


@pytest.mark.parametrize("given", [Recorder(), Recorder, "support.callback_probe:Recorder", [Recorder()]])
def test_an_instance_a_class_or_a_path_travels_as_the_import_path(given):
    assert SFTParams.parse({**BASE, "callbacks": given}).callbacks == ["support.callback_probe:Recorder"]


def test_a_class_written_for_training_hub_is_taken_by_its_hooks():
    assert SFTParams.parse({**BASE, "callbacks": [UpstreamStyle()]}).callbacks == [
        f"{__name__}:UpstreamStyle"]


def test_what_cannot_travel_is_refused():
    class Local(TrainingHubCallback):
        pass

    with pytest.raises(ValueError, match=r"callback .*Local is defined in a function, which the training processes "
                                         r"cannot import: define it at the top level of a module"):
        SFTParams.parse({**BASE, "callbacks": [Local()]})
    Local.__module__, Local.__qualname__ = "__main__", "Local"
    with pytest.raises(ValueError, match=r"callback Local is defined in __main__"):
        SFTParams.parse({**BASE, "callbacks": [Local]})
    with pytest.raises(ValueError, match=r"callback 5 is not an import path, nor a class or an instance with "
                                         r"TrainingHubCallback's hooks \(on_train_begin, "):
        SFTParams.parse({**BASE, "callbacks": [5]})
    with pytest.raises(ValueError, match=r"callback 'notify' is not an import path 'package\.module:Class'"):
        SFTParams.parse({**BASE, "callbacks": "notify"})
    with pytest.raises(ValueError, match=r"callbacks is not a JSON list: a comma before '\]'"):
        SFTParams.parse({**BASE, "callbacks": '["a:B",]'})


def test_a_callback_that_does_not_import_where_training_runs_fails_before_any_work(tiny_model, sample_data,
                                                                                   tmp_path):
    ckpt = tmp_path / "ckpt"
    common = {"model_path": str(tiny_model), "data_path": str(sample_data), "ckpt_output_dir": str(ckpt),
              "backend": "pytorch"}
    with pytest.raises(ValueError, match=r"^callback 'my_hooks:Notify' cannot be imported here: No module named "
                                         r"'my_hooks'"):
        sft(**common, callbacks=["my_hooks:Notify"])
    with pytest.raises(ValueError, match=r"^callback 'pathlib:PurePath' is not a class with TrainingHubCallback's "
                                         r"hooks"):
        sft(**common, callbacks='["pathlib:PurePath"]')  # a CLI flag's JSON
    assert not Path(ckpt).exists()
