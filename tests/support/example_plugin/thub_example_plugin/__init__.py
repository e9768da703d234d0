"""A third-party plugin, as a separate distribution would ship it: an algorithm this package lacks.

It adds an algorithm (`kto`, with its own schema and backend) and a second backend for the
built-in `sft` (`copy-model`, which "trains" by copying the model into instructlab's layout, so
the CLI's success path can be exercised on any machine).
"""

import json
import shutil
from pathlib import Path

from airflow_provider_training_hub.algorithms import Algorithm, Backend
from airflow_provider_training_hub.algorithms.params import ParamSchema
from airflow_provider_training_hub.checkpoints import collect_result


class KTOParams(ParamSchema):
    model_path: str
    data_path: str
    ckpt_output_dir: str
    beta: float = 0.1


class KTOAlgorithm(Algorithm):
    params_schema = KTOParams

    def train(self, **kwargs):
        return self.backend.execute(KTOParams.parse(kwargs))


class CopyModelBackend(Backend):
    def execute(self, params):
        out = Path(params.ckpt_output_dir)
        shutil.copytree(params.model_path, out / "hf_format" / "samples_1", dirs_exist_ok=True)
        record = {"step": 1, "epoch": 0, "avg_loss": 1.0, "samples_seen": 1, "params": params.model_dump()}
        (out / "training_params_and_metrics_global0.jsonl").write_text(json.dumps(record) + "\n")
        return collect_result(out)


def register(registry):
    registry.register_algorithm("kto", KTOAlgorithm)
    registry.register_backend("kto", "reference", CopyModelBackend)
    registry.register_backend("sft", "copy-model", CopyModelBackend)
