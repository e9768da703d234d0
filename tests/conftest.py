"""Shared fixtures: a tiny real model on disk (made offline) and the bundled sample data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO / "airflow_provider_training_hub" / "samples" / "sft_sample.jsonl"
SUPPORT = Path(__file__).resolve().parent / "support"


@pytest.fixture(autouse=True)
def _restore_environ():
    """Put the environment back by content: `datasets` rebinds `os.environ` to a copy after a
    multi-process map, so monkeypatch's undo would edit a stale object and leak PET_*/PATH."""
    before = dict(os.environ)
    yield
    for key in set(os.environ) - set(before):
        del os.environ[key]
    os.environ.update(before)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from airflow_provider_training_hub.models import make_tiny_model

    corpus = SAMPLE_DATA.read_text(encoding="utf-8").splitlines()
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", corpus)


@pytest.fixture
def sample_data() -> Path:
    return SAMPLE_DATA


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch):
    """GPU REPLACED: CUDA detection reports one device, and `torchrun` is tests/support/fake_gpu_torchrun.py.

    Everything else in the instructlab-training backend is real: our argument mapping, upstream's
    `run_training` (its checks, its real data processing on the tiny model, its command builder and
    process streaming) and our result collection.
    """
    import sys

    from airflow_provider_training_hub.algorithms.backends import instructlab

    bin_dir = tmp_path / "fake-gpu-bin"
    bin_dir.mkdir()
    script = bin_dir / "torchrun"
    script.write_text(f"#!{sys.executable}\n" + (SUPPORT / "fake_gpu_torchrun.py").read_text())
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(instructlab, "_cuda_device_count", lambda: 1)
    return bin_dir
