"""docker/: what can be checked without a Docker engine (none runs here).

- both Dockerfiles parse, and say what the images must be;
- their Python requirement sets resolve with `pip install --dry-run` (needs PyPI);
- the package works in an environment with neither Airflow nor torch (the pod's CLI path);
- `python -m build` makes the sdist and the wheel, and the wheel alone, in an environment without
  torch, is a provider that Airflow lists, whose example DAGs import (the Airflow side).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DPO_SAMPLE, REPO, SAMPLE_DATA, airflow_json
from dockerfile_parse import DockerfileParser

sys.path.insert(0, str(REPO / "docker"))
from requirements import requirement_set  # noqa: E402

pytestmark = pytest.mark.package
UV = ["python3", "-m", "uv"]  # scripts/bootstrap.sh installs it there
# The CUDA kernels' setup scripts can describe themselves without compiling (no CUDA here).
SKIP_CUDA_BUILDS = {"FLASH_ATTENTION_SKIP_CUDA_BUILD": "TRUE", "MAMBA_SKIP_CUDA_BUILD": "TRUE",
                    "CAUSAL_CONV1D_SKIP_CUDA_BUILD": "TRUE"}


def _instructions(image: str) -> list[dict]:
    parser = DockerfileParser(str(REPO / "docker" / image / "Dockerfile"))
    return parser.structure


def _tested_versions(directory: Path) -> Path:
    """The versions of the suite's own environment (the lock, or TRAINING_HUB_DEPS=latest's set)
    as a constraints file, so that a throw-away environment resolves to what the rest of the suite
    tests rather than to whatever the index holds today."""
    freeze = subprocess.run([*UV, "pip", "freeze", "--exclude-editable", "--python", sys.executable],
                            capture_output=True, text=True, check=True).stdout
    path = directory / "constraints.txt"
    path.write_text(freeze)
    return path


def _venv(path: Path, *requirements: str, no_deps: tuple[str, ...] = ()) -> Path:
    """A throw-away virtualenv with pip, made with uv from its (warm) cache, at the tested versions."""
    subprocess.run([*UV, "venv", "--quiet", "--seed", "--python", sys.executable, str(path)], check=True)
    python = path / "bin" / "python"
    if requirements:
        subprocess.run([*UV, "pip", "install", "--quiet", "--python", str(python),
                        "-c", str(_tested_versions(path)), *requirements], check=True)
    if no_deps:
        subprocess.run([*UV, "pip", "install", "--quiet", "--python", str(python), "--no-deps", *no_deps], check=True)
    return python


def _run(python: Path, *args: str, env: dict | None = None) -> str:
    """``python ARGS``, with ``-P``: the working directory (this repository) is not put on
    ``sys.path``, so the package imported is the one installed in that environment."""
    proc = subprocess.run([str(python), "-P", *args], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_training_dockerfile_parses_and_builds_a_training_hub_image_without_airflow():
    steps = _instructions("training")
    kinds = [s["instruction"] for s in steps]
    assert kinds[kinds.index("FROM") - 1] == "ARG" and "pytorch/pytorch" in steps[kinds.index("FROM") - 1]["value"]
    assert steps[-2]["instruction"] == "ENTRYPOINT" and json.loads(steps[-2]["value"]) == ["training-hub"]
    run = " ".join(s["value"] for s in steps if s["instruction"] == "RUN")
    assert "requirements.py train tracking" in run and "--no-deps ." in run
    assert "instructlab-training[${INSTRUCTLAB_TRAINING_EXTRAS}]" in run  # cuda unless a CPU build says ''
    args = {s["value"].split("=", 1)[0]: s["value"].split("=", 1)[-1] for s in steps if s["instruction"] == "ARG"}
    assert args["INSTRUCTLAB_TRAINING_EXTRAS"] == "cuda"
    assert "USER" in kinds
    for step in steps:
        if step["instruction"] == "COPY":
            for source in step["value"].split()[:-1]:
                assert (REPO / source).exists(), source


def test_airflow_dockerfile_parses_and_installs_the_provider_and_dags():
    steps = _instructions("airflow")
    kinds = [s["instruction"] for s in steps]
    assert steps[kinds.index("FROM")]["value"] == "${BASE_IMAGE}"
    assert steps[kinds.index("FROM") - 1]["value"] == "BASE_IMAGE=apache/airflow:${AIRFLOW_VERSION}-python3.11"
    run = " ".join(s["value"] for s in steps if s["instruction"] == "RUN")
    assert '"apache-airflow==${AIRFLOW_VERSION}" -r /tmp/base-requirements.txt' in run and "import torch" in run
    assert "requirements.py base" in run and "--no-deps /opt/training-hub" in run
    assert any(s["instruction"] == "COPY" and s["value"].split()[-2:] == ["dags", "/opt/airflow/dags"] for s in steps)


@pytest.mark.slow
def test_training_image_requirements_resolve_with_pip_dry_run(tmp_path):
    """As the Dockerfile does: torch present (the base image's), build helpers, no build isolation."""
    python = _venv(tmp_path / "venv", "torch", "packaging", "ninja", "wheel", "setuptools")
    requirements = tmp_path / "train.txt"
    requirements.write_text("\n".join(requirement_set("train") + requirement_set("tracking")))
    report = tmp_path / "report.json"
    _run(python, "-m", "pip", "install", "--dry-run", "--quiet", "--disable-pip-version-check",
         "--no-build-isolation", "--report", str(report), "-c", str(_tested_versions(tmp_path)), "-r", str(requirements),
         "instructlab-training[cuda]==0.16.2", env=SKIP_CUDA_BUILDS)
    names = {i["metadata"]["name"].lower().replace("_", "-") for i in json.loads(report.read_text())["install"]}
    assert {"instructlab-training", "flash-attn", "transformers", "pydantic", "mlflow-skinny", "wandb", "tensorboard"} <= names
    assert not {n for n in names if n.startswith("apache-airflow")}


@pytest.mark.slow
def test_airflow_image_requirements_resolve_with_pip_dry_run_and_bring_no_torch(tmp_path):
    """As the Dockerfile does: Airflow pinned, the package's own dependencies (its code follows with --no-deps)."""
    python = _venv(tmp_path / "venv")
    report = tmp_path / "report.json"
    _run(python, "-m", "pip", "install", "--dry-run", "--quiet", "--disable-pip-version-check", "--report",
         str(report), "-c", str(_tested_versions(tmp_path)), "apache-airflow==3.3.2", *requirement_set("base"))
    names = {i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]}
    assert {"apache-airflow", "apache-airflow-providers-cncf-kubernetes", "msgspec", "xxhash"} <= names
    assert "torch" not in names and "instructlab-training" not in names


@pytest.mark.slow
def test_pod_cli_works_with_neither_airflow_nor_torch(tmp_path):
    python = _venv(tmp_path / "venv", *requirement_set("core"), no_deps=(str(REPO),))
    _run(python, "-c", "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('airflow', 'torch')))")
    _run(python, "-c", "import airflow_provider_training_hub.kubernetes, airflow_provider_training_hub.checkpoints")
    assert _run(python, "-m", "airflow_provider_training_hub.cli", "list").strip().splitlines() == [
        "sft: instructlab-training (default), pytorch", "lora_sft: instructlab-training, pytorch (default)",
        "dpo: pytorch (default)"]
    assert "VALID" in _run(python, "-m", "airflow_provider_training_hub.cli", "validate", str(SAMPLE_DATA))
    assert "24 valid pairs" in _run(python, "-m", "airflow_provider_training_hub.cli", "validate", "--format",
                                    "preference", str(DPO_SAMPLE))
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in SAMPLE_DATA.read_text(encoding="utf-8").splitlines()]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    pq.write_table(pa.Table.from_pylist([{k: row.get(k) for k in columns} for row in rows]), tmp_path / "t.parquet")
    assert "VALID" in _run(python, "-m", "airflow_provider_training_hub.cli", "validate", str(tmp_path / "t.parquet"))
    bad = subprocess.run([str(python), "-P", "-m", "airflow_provider_training_hub.cli", "sft", "--config-env", "CFG"],
                         capture_output=True, text=True, env={**os.environ, "CFG": '{"learning_rte": 1}'})
    assert bad.returncode == 2 and "Did you mean 'learning_rate'" in bad.stderr


@pytest.mark.slow
def test_the_built_wheel_installs_clean_and_airflow_finds_the_provider_without_torch(tmp_path):
    """`python -m build` makes the sdist and the wheel; the wheel alone (not the source tree, not
    `-e`) in a fresh venv: no torch, `airflow providers list` shows the provider at its version,
    the example DAGs import, and the bundled samples came along."""
    from airflow_provider_training_hub import __version__

    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(dist), str(REPO)],
                   check=True, capture_output=True, timeout=600)
    wheel, = dist.glob(f"airflow_provider_training_hub-{__version__}-py3-none-any.whl")
    assert [p.name for p in dist.glob("*.tar.gz")] == [f"airflow_provider_training_hub-{__version__}.tar.gz"]
    python = _venv(tmp_path / "venv", str(wheel))
    _run(python, "-c", "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)")
    home = {"AIRFLOW_HOME": str(tmp_path / "airflow"), "PYTHONPATH": ""}
    providers = _run(python, "-m", "airflow", "providers", "list", "-o", "json", env=home)
    assert {"package_name": "airflow-provider-training-hub", "version": __version__} in [
        {k: p[k] for k in ("package_name", "version")} for p in airflow_json(providers)]
    out = _run(python, "-c", (
        "import sys, airflow_provider_training_hub as p\n"
        "from importlib.resources import files\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "import airflow_provider_training_hub.operators, airflow_provider_training_hub.triggers.training_job\n"
        "assert '/site-packages/' in p.__file__, p.__file__\n"
        "assert files('airflow_provider_training_hub').joinpath('samples/sft_sample.jsonl').is_file()\n"
        "bag = DagBag(sys.argv[1])\n"
        "print(sorted(bag.dag_ids), bag.import_errors)\n"
        "assert 'torch' not in sys.modules\n"
    ), str(REPO / "dags"), env=home)
    assert ("['dpo_retrain', 'first_fine_tune', 'lora_adapters', 'messages_dataset_publish', 'sft_demo', "
            "'sft_retrain'] {}") in out