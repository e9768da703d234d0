"""Models, data and checkpoints in a real S3 server (SeaweedFS, tests/s3_server.py) on loopback:
``sft()`` with three ``s3://`` paths, the checks before any work, the resume from the bucket."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from airflow_provider_training_hub import object_storage, sft
from airflow_provider_training_hub.algorithms import SFTParams
from airflow_provider_training_hub.algorithms.errors import TrainingFailedError
from airflow_provider_training_hub.algorithms.scratch import SCRATCH_ENV, on_scratch

COMMON = {"learning_rate": 5e-3, "max_seq_len": 512, "effective_batch_size": 8, "random_seed": 3}


@pytest.fixture
def bucket(s3_server, monkeypatch, tmp_path) -> str:
    """A fresh bucket, and this process's environment pointing at the server (as a pod's Secret would)."""
    for name, value in s3_server.environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(SCRATCH_ENV, str(tmp_path / "scratch"))
    name = f"thub-{secrets.token_hex(4)}"
    s3_server.filesystem().mkdir(name)
    return name


def _upload_inputs(s3_server, bucket: str, model: Path, data: Path) -> tuple[str, str]:
    fs = s3_server.filesystem()
    fs.put(f"{model}/", f"{bucket}/models/tiny/", recursive=True)
    fs.put_file(str(data), f"{bucket}/data/{data.name}")
    return f"s3://{bucket}/models/tiny", f"s3://{bucket}/data/{data.name}"


@pytest.mark.slow
def test_sft_with_three_s3_paths_trains_and_the_checkpoint_loads_after_download(
        s3_server, bucket, tiny_model, sample_data, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    model_uri, data_uri = _upload_inputs(s3_server, bucket, tiny_model, sample_data)
    ckpt = f"s3://{bucket}/runs/one"
    result = sft(model_uri, data_uri, ckpt, backend="pytorch", num_epochs=2, **COMMON)

    assert result.ckpt_output_dir == ckpt
    assert result.checkpoint == f"{ckpt}/hf_format/samples_96"
    assert result.checkpoints == [f"{ckpt}/hf_format/samples_48", f"{ckpt}/hf_format/samples_96"]
    assert result.full_state == [f"{ckpt}/full_state/epoch_0", f"{ckpt}/full_state/epoch_1"]
    assert result.metrics["steps"] == 12 and result.metrics["loss"] < result.metrics["first_loss"]
    fs = s3_server.filesystem()
    for uploaded in (*result.checkpoints, *result.full_state):  # each whole, its marker last
        marker = json.loads(fs.cat_file(f"{uploaded.removeprefix('s3://')}/{object_storage.MARKER}"))
        assert marker["files"] == len([p for p in fs.find(uploaded.removeprefix("s3://"))
                                       if not p.endswith(object_storage.MARKER)])
    assert fs.exists(f"{bucket}/runs/one/run_identity.json")
    assert fs.exists(f"{bucket}/runs/one/training_params_and_metrics_global0.jsonl")
    assert not fs.exists(f"{bucket}/runs/one/data"), "processed data is scratch, not uploaded"
    assert not any((tmp_path / "scratch").rglob("*.safetensors")), "the scratch is removed when the run ends"

    local = object_storage.download(result.checkpoint, tmp_path / "downloaded")
    trained = AutoModelForCausalLM.from_pretrained(local, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    assert not torch.equal(trained.lm_head.weight, base.lm_head.weight)

    # A retry of the finished run resumes from its newest full state in the bucket: nothing to train.
    again = sft(model_uri, data_uri, ckpt, backend="pytorch", num_epochs=2, **COMMON)
    assert again.checkpoint == result.checkpoint and again.metrics["steps"] == 12


def test_a_half_uploaded_state_is_ignored_and_the_newest_complete_one_resumes(
        s3_server, bucket, tiny_model, sample_data, capfd):
    model_uri, data_uri = _upload_inputs(s3_server, bucket, tiny_model, sample_data)
    ckpt = f"s3://{bucket}/runs/cut"
    sft(model_uri, data_uri, ckpt, backend="pytorch", num_epochs=2, **COMMON)
    fs = s3_server.filesystem()
    # What a pod killed while uploading its second epoch leaves: the files, not the marker.
    for name in ("full_state/epoch_1", "hf_format/samples_96"):
        fs.rm_file(f"{bucket}/runs/cut/{name}/{object_storage.MARKER}")
    capfd.readouterr()
    result = sft(model_uri, data_uri, ckpt, backend="pytorch", num_epochs=2, **COMMON)
    out = capfd.readouterr().out
    assert "full_state/epoch_0: epoch 1, step 6, samples 48" in out, out[-3000:]
    assert "epoch 1 step 7/12" in out and "epoch 0 step" not in out, out[-3000:]
    assert result.checkpoint == f"{ckpt}/hf_format/samples_96"
    assert result.full_state == [f"{ckpt}/full_state/epoch_0", f"{ckpt}/full_state/epoch_1"]
    for name in ("full_state/epoch_1", "hf_format/samples_96"):  # uploaded again, whole
        assert fs.exists(f"{bucket}/runs/cut/{name}/{object_storage.MARKER}")

    changed = {**COMMON, "learning_rate": 1e-3}
    with pytest.raises(ValueError, match=rf"ckpt_output_dir '{ckpt}' holds the checkpoints of another run: "
                                         "learning_rate 0.005 then, 0.001 now"):
        sft(model_uri, data_uri, ckpt, backend="pytorch", num_epochs=2, **changed)
    fresh = sft(model_uri, data_uri, ckpt, backend="pytorch", num_epochs=1, restart_changed_run=True, **changed)
    assert fresh.checkpoints == [f"{ckpt}/hf_format/samples_48"]  # the earlier run's are aside, not listed
    assert len(fs.glob(f"{bucket}/runs/cut/superseded/*/hf_format/samples_96/{object_storage.MARKER}")) == 1


@pytest.mark.slow
def test_checkpoint_storage_uploads_from_a_local_ckpt_output_dir(s3_server, bucket, tiny_model, sample_data, tmp_path):
    """training_hub's form: ckpt_output_dir on local disk, checkpoint_storage the bucket."""
    uri = f"s3://{bucket}/runs/storage"
    result = sft(str(tiny_model), str(sample_data), str(tmp_path / "ckpt"), backend="pytorch", num_epochs=1,
                 checkpoint_storage=uri, **COMMON)
    assert result.ckpt_output_dir == str(tmp_path / "ckpt")
    assert (result.checkpoint, result.full_state) == (f"{uri}/hf_format/samples_48", [f"{uri}/full_state/epoch_0"])
    assert (tmp_path / "ckpt" / "hf_format" / "samples_48" / "config.json").is_file(), "the local copy stays"
    assert s3_server.filesystem().exists(f"{bucket}/runs/storage/hf_format/samples_48/{object_storage.MARKER}")
    same = sft(str(tiny_model), str(sample_data), str(tmp_path / "ckpt"), backend="pytorch", num_epochs=1,
               checkpoint_storage="pvc", **COMMON)  # training_hub's "pvc": they stay in ckpt_output_dir
    assert same.checkpoint == str(tmp_path / "ckpt" / "hf_format" / "samples_48")
    with pytest.raises(ValueError, match="both name the bucket the checkpoints go to"):
        sft(str(tiny_model), str(sample_data), uri, backend="pytorch", checkpoint_storage=uri)
    with pytest.raises(ValueError, match=r"checkpoint_storage must be an object storage URI .*, got '/mnt/x'"):
        sft(str(tiny_model), str(sample_data), str(tmp_path / "ckpt"), backend="pytorch", checkpoint_storage="/mnt/x")


def test_bad_credentials_and_missing_objects_fail_before_any_work(s3_server, bucket, tiny_model, sample_data,
                                                                  tmp_path):
    model_uri, data_uri = _upload_inputs(s3_server, bucket, tiny_model, sample_data)
    with pytest.raises(ValueError, match=r"model_path 's3://[^']+/models/absent' has no config.json"):
        sft(f"s3://{bucket}/models/absent", data_uri, f"s3://{bucket}/runs/x", backend="pytorch")
    with pytest.raises(ValueError, match=r"data_path 's3://[^']+/data/absent.jsonl' does not exist"):
        sft(model_uri, f"s3://{bucket}/data/absent.jsonl", f"s3://{bucket}/runs/x", backend="pytorch")
    with pytest.raises(ValueError, match=r"carries credentials"):
        sft(model_uri, data_uri, f"s3://key:secret@{bucket}/runs/x", backend="pytorch")
    # A training process (a pod, a local run) whose credentials the bucket refuses: exit 2, no work.
    command = [str(Path(sys.executable).parent / "training-hub"), "sft", "--backend", "pytorch", "--model-path",
               model_uri, "--data-path", data_uri, "--ckpt-output-dir", f"s3://{bucket}/runs/x"]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert re.search(rf"model_path 's3://{bucket}/models/tiny': the storage refused access \(PermissionError: Forbidden\)\. "
                     r"Check the credentials", refused.stderr), refused.stderr[-3000:]
    assert "not-the-secret" not in refused.stderr + refused.stdout
    assert not (tmp_path / "scratch").exists(), "nothing was downloaded"


def test_a_failed_last_upload_fails_the_run_and_keeps_the_scratch(s3_server, bucket, tiny_model, sample_data,
                                                                    tmp_path):
    """The bucket refuses the last pass (its credentials change under it): the run fails, rather
    than report the bucket's older checkpoints as its result, and the scratch keeps the one that
    did not upload."""
    params = SFTParams(model_path=str(tiny_model), data_path=str(sample_data),
                       ckpt_output_dir=f"s3://{bucket}/runs/refused")
    with ExitStack() as refusing:
        with pytest.raises(TrainingFailedError, match=rf"uploading the checkpoints to s3://{bucket}/runs/refused "
                                                      r"failed \(PermissionError: Forbidden\); what did not upload is "
                                                      r"kept in .*/ckpt\."):
            with on_scratch(params) as (local, _):
                checkpoint = Path(local.ckpt_output_dir) / "hf_format" / "samples_8"
                checkpoint.mkdir(parents=True)
                (checkpoint / "config.json").write_text("{}")
                refusing.enter_context(object_storage.connection_options(
                    "s3", {"key": s3_server.access_key, "secret": "not-the-secret"}))
    assert (checkpoint / "config.json").is_file(), "kept"
    assert not s3_server.filesystem().exists(f"{bucket}/runs/refused/hf_format/samples_8")


@pytest.mark.slow
@pytest.mark.usefixtures("airflow_db")
def test_a_dag_validates_and_trains_from_the_bucket_with_the_connections_credentials(s3_server, tiny_model,
                                                                                      sample_data):
    """No AWS_* variable anywhere: the `th_s3` Airflow connection (an ObjectStoragePath's) opens
    the bucket for the validation on the worker and for the local training process; XComs carry
    plain URIs, and nothing carries the secret."""
    from airflow_runs import run_dag, states, xcoms

    assert not set(s3_server.environment) & set(os.environ)
    fs = s3_server.filesystem()
    if not fs.exists("thub-airflow"):
        fs.mkdir("thub-airflow")
    _upload_inputs(s3_server, "thub-airflow", tiny_model, sample_data)
    fs.put_file(str(sample_data), "thub-airflow/data/train.jsonl")  # the name th_object_storage reads
    os.environ["AIRFLOW_CONN_TH_S3"] = s3_server.airflow_connection()
    os.environ["AIRFLOW_CONN_TRAINING_HUB_S3"] = json.dumps({"conn_type": "training_hub", "extra": {
        "checkpoint_root": "s3://thub-airflow/checkpoints"}})
    run = run_dag("th_object_storage")
    assert states(run) == {"validate": "success", "train": "success"}
    values = xcoms(run)
    assert values[("validate", "data_path")] == "s3://thub-airflow/data/train.jsonl"
    ckpt = values[("train", "ckpt_output_dir")]
    assert ckpt.startswith("s3://thub-airflow/checkpoints/th_object_storage/"), ckpt
    assert values[("train", "checkpoint")] == f"{ckpt}/hf_format/samples_48"
    assert fs.exists(f"{ckpt.removeprefix('s3://')}/hf_format/samples_48/{object_storage.MARKER}")
    assert s3_server.secret_key not in json.dumps({f"{k}": v for k, v in values.items()}, default=str)

    os.environ["AIRFLOW_CONN_TH_S3"] = s3_server.airflow_connection(secret_key="not-the-secret")
    refused = run_dag("th_object_storage")
    assert states(refused) == {"validate": "failed", "train": "upstream_failed"}
