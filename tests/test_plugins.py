"""Third-party algorithms and backends arrive through the `training_hub.plugins` entry-point group.

The example plugin in tests/support/example_plugin is a real distribution (dist-info with
entry_points.txt) found by importlib.metadata on sys.path, in a fresh interpreter.
"""

import json
import os
import subprocess
import sys

from conftest import SUPPORT

PLUGIN_PATH = str(SUPPORT / "example_plugin")


def _python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": PLUGIN_PATH}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def test_plugin_algorithm_and_backend_are_discovered(tiny_model, sample_data, tmp_path):
    out = _python(
        "import json\n"
        "from airflow_provider_training_hub import AlgorithmRegistry, create_algorithm, sft\n"
        "algo = create_algorithm('kto')\n"
        f"r = algo.train(model_path={str(tiny_model)!r}, data_path='d', ckpt_output_dir={str(tmp_path / 'kto')!r}, beta=0.2)\n"
        f"r2 = sft({str(tiny_model)!r}, {str(sample_data)!r}, {str(tmp_path / 'sft')!r}, backend='copy-model', num_epochs=2)\n"
        "print(json.dumps([AlgorithmRegistry.list_algorithms(), AlgorithmRegistry.list_backends('sft'),"
        " list(algo.get_optional_params()), r.checkpoint, r2.checkpoint]))\n"
    )
    algorithms, sft_backends, kto_optional, kto_ckpt, sft_ckpt = json.loads(out)
    assert algorithms == ["sft", "lora_sft", "dpo", "kto"]
    assert sft_backends == ["instructlab-training", "pytorch", "copy-model"]
    assert kto_optional == ["beta"]
    assert kto_ckpt == str(tmp_path / "kto" / "hf_format" / "samples_1")
    assert sft_ckpt == str(tmp_path / "sft" / "hf_format" / "samples_1")


def test_without_the_plugin_nothing_extra_appears():
    out = subprocess.run(
        [sys.executable, "-c", "from airflow_provider_training_hub import AlgorithmRegistry as R; print(R.list_algorithms())"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert out.strip() == "['sft', 'lora_sft', 'dpo']"
