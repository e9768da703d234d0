"""`training-hub` exit codes: 0 on success, 2 with one line (no traceback) on bad configuration."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SUPPORT


def _cli(*args: str, plugin: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if plugin:
        env["PYTHONPATH"] = str(SUPPORT / "example_plugin")
    exe = Path(sys.executable).parent / "training-hub"
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=300)


def _one_line_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    import re

    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    assert re.search(pattern, lines[-1]), lines


def test_list():
    proc = _cli("list")
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == ["sft: instructlab-training (default), pytorch",
                                        "lora_sft: instructlab-training, pytorch (default)",
                                        "dpo: pytorch (default)"]


def test_config_file_with_flag_overrides_runs_sft(tiny_model, sample_data, tmp_path):
    config = tmp_path / "params.yaml"
    config.write_text(f"model_path: {tiny_model}\ndata_path: {sample_data}\nckpt_output_dir: {tmp_path / 'out'}\nnum_epochs: 5\n")
    proc = _cli("sft", "--config", str(config), "--backend", "copy-model", "--num-epochs", "2",
                "--no-checkpoint-at-epoch", "--result-file", str(tmp_path / "result.json"), plugin=True)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["checkpoint"] == str(tmp_path / "out" / "hf_format" / "samples_1")
    assert json.loads((tmp_path / "result.json").read_text()) == result
    # the plugin backend records the parameters it received: the flag beat the config file
    metrics = json.loads((tmp_path / "out" / "training_params_and_metrics_global0.jsonl").read_text())
    assert metrics["params"]["num_epochs"] == 2 and metrics["params"]["checkpoint_at_epoch"] is False


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["sft", "--model-path", "m", "--data-path", "d"], r"Missing required parameter 'ckpt_output_dir'"),
        (["sft", "--model-path", "/nope", "--data-path", "d", "--ckpt-output-dir", "c"], r"model_path '/nope' is not a model directory"),
        (["sft", "--model-path", "m", "--data-path", "d", "--ckpt-output-dir", "c", "--num-epochs", "x"], r"'num_epochs': must be a whole number \(got 'x'\)"),
        (["sft", "--model-path", "m", "--data-path", "d", "--ckpt-output-dir", "c", "--lerning-rate", "1"], r"Did you mean 'learning_rate'"),
        (["sft", "--backend", "nope", "--model-path", "m", "--data-path", "d", "--ckpt-output-dir", "c"], r"Unknown backend"),
        (["sft", "--config", "/does/not/exist.yaml"], r"cannot read config '/does/not/exist.yaml'"),
        (["nope"], r"invalid choice: 'nope'"),
    ],
)
def test_bad_configuration_exits_2_with_one_line(args, pattern):
    _one_line_error(_cli(*args), pattern)


def test_validate_exits_0_for_valid_data_and_1_for_invalid(sample_data, tmp_path):
    proc = _cli("validate", str(sample_data), "--workers", "2", "--report", str(tmp_path / "report.json"))
    assert proc.returncode == 0, proc.stderr
    assert "VALID" in proc.stdout.splitlines()[0]
    assert json.loads((tmp_path / "report.json").read_text())["stats"]["samples"] > 0
    (tmp_path / "bad.jsonl").write_text(sample_data.read_text() + '{"messages": [{"role": "bot", "content": "x"}]}\n')
    proc = _cli("validate", str(tmp_path / "bad.jsonl"))
    assert proc.returncode == 1 and "INVALID" in proc.stdout and "messages[0].role" in proc.stdout


def test_validate_refuses_a_bad_workers_count():
    _one_line_error(_cli("validate", "x.jsonl", "--workers", "0"), r"workers must be at least 1, got 0")


def test_bad_config_file_contents(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    _one_line_error(_cli("sft", "--config", str(tmp_path / "bad.json")),
                    r"is not valid JSON: line 1, column 2: expected a key in double quotes$")
    (tmp_path / "bad.yaml").write_text("model_path: m\n  data_path: d: e\n")
    _one_line_error(_cli("sft", "--config", str(tmp_path / "bad.yaml")), r"is not valid YAML: line 2, column \d+: ")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    _one_line_error(_cli("sft", "--config", str(tmp_path / "list.yaml")), r"must hold a mapping")
    (tmp_path / "typo.yaml").write_text("model_path: m\ndata_path: d\nckpt_output_dir: c\nnum_epoch: 3\n")
    _one_line_error(_cli("sft", "--config", str(tmp_path / "typo.yaml")), r"Did you mean 'num_epochs'")


def test_no_cuda_is_a_configuration_error(tiny_model, sample_data, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = _cli("sft", "--model-path", str(tiny_model), "--data-path", str(sample_data), "--ckpt-output-dir", str(tmp_path))
    _one_line_error(proc, r"needs a CUDA GPU")
