"""Experiment tracking, read back from the real thing: an MLflow tracking server (SQLite store) on
loopback through the MLflow client, TensorBoard event files through TensorBoard's reader, and
W&B's offline run files."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow_server import started_mlflow_server
from support.callback_probe import Recorder
from support.wandb_log import history_and_config

from airflow_provider_training_hub import lora_sft, sft
from airflow_provider_training_hub.algorithms import SFTParams
from airflow_provider_training_hub.algorithms.errors import TrainingFailedError
from airflow_provider_training_hub.checkpoints import read_metrics

STEP_METRICS = ("avg_loss", "lr", "tokens_per_second", "samples_seen", "gradnorm")
TESTS = Path(__file__).parent
EVAL_DATA = TESTS / "data" / "mascot_eval.jsonl"  # questions the sample answers, worded anew


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _history(client, run_id: str, metric: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, metric)]


@pytest.mark.slow
def test_pytorch_backend_logs_to_mlflow_tensorboard_and_wandb(mlflow_server, smollm2_model, sample_data, tmp_path,
                                                              monkeypatch):
    """SmolLM2's LoRA run, evaluated on held-out questions (eval_data_path, every eval_steps): each
    step's metrics and the falling val_loss reach every tracker, and the user's callbacks (one of
    them failing, which training survives)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("CALLBACK_PROBE_LOG", str(tmp_path / "hooks.jsonl"))
    ckpt = tmp_path / "ckpt"
    result = lora_sft(model_path=str(smollm2_model), data_path=str(sample_data), ckpt_output_dir=str(ckpt),
                      backend="pytorch", num_epochs=2, effective_batch_size=16, learning_rate=1e-3, warmup_steps=0,
                      max_seq_len=256, eval_data_path=str(EVAL_DATA), eval_steps=2,
                      callbacks=[Recorder(), "support.callback_probe:Failing"],
                      mlflow_tracking_uri=mlflow_server, mlflow_experiment_name="tiny-sft",
                      mlflow_run_name="tiny_rank{rank}",
                      wandb_project="tiny-sft", wandb_run_name="tiny-wandb", tensorboard_log_dir=str(tmp_path / "tb"))
    steps = read_metrics(ckpt)
    assert len(steps) == 6  # 48 samples / 16 per step x 2 epochs
    evaluations = read_metrics(ckpt, "val_loss")
    assert [e["step"] for e in evaluations] == [2, 4, 6] and {e["val_num_samples"] for e in evaluations} == {8}
    val_loss = [e["val_loss"] for e in evaluations]
    assert val_loss[0] > val_loss[1] > val_loss[2], val_loss  # learnt from the training data, on unseen questions
    assert (result.metrics["val_loss"], result.metrics["val_loss_step"]) == (val_loss[-1], 6)

    # The callbacks, on the one rank, in training_hub's order
    hooks = [json.loads(line) for line in (tmp_path / "hooks.jsonl").read_text().splitlines()]
    step = ["on_step_begin", "on_log", "on_step_end"]
    epoch_end = ["on_save", "on_save", "on_epoch_end"]  # the checkpoint, the full state
    assert [h["hook"] for h in hooks] == [
        "on_train_begin", "on_epoch_begin", *step, *step[:2], "on_evaluate", step[2], *step, *epoch_end,
        "on_epoch_begin", *step[:2], "on_evaluate", step[2], *step, *step[:2], "on_evaluate", step[2], *epoch_end,
        "on_train_end"]
    logs = [h for h in hooks if h["hook"] == "on_log"]
    assert [(h["step"], h["loss"], h["learning_rate"]) for h in logs] == [
        (r["step"], pytest.approx(r["avg_loss"]), pytest.approx(r["lr"])) for r in steps]
    assert [(h["step"], h["metrics"]["val_loss"]) for h in hooks if h["hook"] == "on_evaluate"] == [
        (2, pytest.approx(val_loss[0])), (4, pytest.approx(val_loss[1])), (6, pytest.approx(val_loss[2]))]
    saves = [h["metrics"]["checkpoint_path"] for h in hooks if h["hook"] == "on_save"]
    assert saves == [str(ckpt / "hf_format" / "samples_48"), str(ckpt / "full_state" / "epoch_0"),
                     str(ckpt / "hf_format" / "samples_96"), str(ckpt / "full_state" / "epoch_1")]
    assert {(h["main"], h["output_dir"], h["rank"]) for h in hooks} == {(True, str(ckpt), "0")}
    assert "callback Failing.on_log failed (RuntimeError: the dashboard is down); training goes on" in (
        ckpt / "full_logs_global0.log").read_text()

    # MLflow: the run the launcher opened, named by rank 0, with every step and the parameters.
    client = _client(mlflow_server)
    run = client.get_run(result.mlflow_run_id)
    experiment = client.get_experiment_by_name("tiny-sft")
    assert run.info.experiment_id == experiment.experiment_id
    assert result.mlflow_run_url == f"{mlflow_server}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
    assert (run.info.status, run.info.run_name) == ("FINISHED", "tiny_rank0")
    assert run.data.tags["training_hub.algorithm"] == "lora_sft" and run.data.tags["training_hub.backend"] == "pytorch"
    assert not any(tag.startswith("airflow.") for tag in run.data.tags)  # not run by Airflow
    assert run.data.params["learning_rate"] == "0.001" and run.data.params["effective_batch_size"] == "16"
    assert run.data.params["world_size"] == "1" and run.data.params["backend"] == "pytorch"
    for metric in STEP_METRICS:
        logged = _history(client, run.info.run_id, metric)
        assert [step for step, _ in logged] == [1, 2, 3, 4, 5, 6], metric
    logged_loss = [v for _, v in _history(client, run.info.run_id, "avg_loss")]
    assert logged_loss == pytest.approx([r["avg_loss"] for r in steps])
    assert dict(_history(client, run.info.run_id, "val_loss")) == pytest.approx(dict(zip([2, 4, 6], val_loss)))

    # TensorBoard: one run directory, the same scalars at the same steps.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tb_run,) = (tmp_path / "tb").iterdir()
    events = EventAccumulator(str(tb_run))
    events.Reload()
    assert [e.step for e in events.Scalars("avg_loss")] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in events.Scalars("avg_loss")] == pytest.approx([r["avg_loss"] for r in steps], rel=1e-6)
    assert set(STEP_METRICS) <= set(events.Tags()["scalars"])
    assert {e.step: e.value for e in events.Scalars("val_loss")} == pytest.approx(dict(zip([2, 4, 6], val_loss)))

    # W&B offline: the run's log holds every step and the parameters as its config.
    (wandb_log,) = (ckpt / "wandb").glob("offline-run-*/run-*.wandb")
    history, config = history_and_config(wandb_log)
    assert [h["_step"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert [h["avg_loss"] for h in history] == pytest.approx([r["avg_loss"] for r in steps])
    assert {h["_step"]: h["val_loss"] for h in history if "val_loss" in h} == pytest.approx(dict(zip([2, 4, 6], val_loss)))
    assert config["learning_rate"] == 0.001 and config["wandb_project"] == "tiny-sft"


@pytest.mark.slow
def test_a_failed_run_is_marked_failed_and_the_next_try_continues_the_same_run(mlflow_server, tiny_model,
                                                                               sample_data, tmp_path, monkeypatch):
    """Two tries of one Airflow task (the ids Airflow exports to a task's processes): the first
    fails before training, the second trains; MLflow shows one run, FAILED then FINISHED."""
    for name, value in {"AIRFLOW_CTX_DAG_ID": "d", "AIRFLOW_CTX_DAG_RUN_ID": "manual__1",
                        "AIRFLOW_CTX_TASK_ID": "train", "AIRFLOW_CTX_TRY_NUMBER": "1"}.items():
        monkeypatch.setenv(name, value)
    tracking = {"mlflow_tracking_uri": mlflow_server, "mlflow_experiment_name": "retries"}
    ckpt = str(tmp_path / "ckpt")
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    with pytest.raises((TrainingFailedError, OSError, ValueError)):
        sft(model_path=str(not_a_model), data_path=str(sample_data), ckpt_output_dir=ckpt, backend="pytorch",
            **tracking)
    client = _client(mlflow_server)
    experiment_id = client.get_experiment_by_name("retries").experiment_id
    (first,) = client.search_runs([experiment_id])
    assert first.info.status == "FAILED" and first.data.tags["airflow.try_number"] == "1"

    monkeypatch.setenv("AIRFLOW_CTX_TRY_NUMBER", "2")
    result = sft(model_path=str(tiny_model), data_path=str(sample_data), ckpt_output_dir=ckpt, backend="pytorch",
                 num_epochs=1, effective_batch_size=16, max_seq_len=256, **tracking)
    (run,) = client.search_runs([experiment_id])
    assert run.info.run_id == first.info.run_id == result.mlflow_run_id
    assert run.info.status == "FINISHED" and run.data.tags["airflow.try_number"] == "2"
    assert run.data.tags["airflow.dag_id"] == "d" and run.data.tags["airflow.task_id"] == "train"
    assert [step for step, _ in _history(client, run.info.run_id, "avg_loss")] == [1, 2, 3]


def test_without_tracking_parameters_no_tracking_library_is_imported(tiny_model, sample_data, tmp_path):
    """What a run without them loads: the launcher and rank 0's metric logger, in a fresh interpreter."""
    code = """
import sys
from airflow_provider_training_hub.algorithms import SFTParams
from airflow_provider_training_hub.algorithms.tracking import metric_logger, mlflow_run
p = SFTParams.parse({"model_path": "m", "data_path": "d", "ckpt_output_dir": "c"})
with mlflow_run(p, "sft", "pytorch") as run:
    assert run is None
assert metric_logger(p, "c") is None
import airflow_provider_training_hub.algorithms.backends.pytorch_trainer
print(sorted(m for m in sys.modules if m.split(".")[0] in ("mlflow", "wandb", "tensorboard", "tensorboardX")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("uri", ["http://alice:s3cret@mlflow:5000", "https://:token@mlflow.example",
                                 "https://s3cret@mlflow.example", "https://mlflow.example/?token=s3cret",
                                 "https://mlflow.example/api?X-Amz-Signature=s3cret"])
def test_a_tracking_uri_with_credentials_is_refused(uri):
    refused = r"mlflow_tracking_uri must not carry credentials \(.*\): set MLFLOW_TRACKING_USERNAME"
    with pytest.raises(ValueError, match=refused) as error:
        SFTParams.parse({"model_path": "m", "data_path": "d", "ckpt_output_dir": "c", "mlflow_tracking_uri": uri})
    assert "s3cret" not in str(error.value)
    SFTParams.parse({"model_path": "m", "data_path": "d", "ckpt_output_dir": "c",
                     "mlflow_tracking_uri": "https://mlflow.example:5000/?experiment=7"})  # no secret: fine


def test_a_tracking_uri_with_credentials_from_the_environment_is_refused_before_training(
        tiny_model, sample_data, tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI from a Secret (tracking_secret) would reach the run's link, the task log,
    XCom and lineage: refused like the parameter, before anything is trained or contacted."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://alice:s3cret@127.0.0.1:9")
    with pytest.raises(ValueError, match=r"^MLFLOW_TRACKING_URI must not carry credentials") as error:
        sft(str(tiny_model), str(sample_data), str(tmp_path / "ckpt"), backend="pytorch", mlflow_experiment_name="x")
    assert "s3cret" not in str(error.value)
    assert not (tmp_path / "ckpt" / "hf_format").exists()


@pytest.mark.slow
def test_instructlab_backend_hands_the_parameters_to_its_own_loggers(fake_gpu, mlflow_server, tiny_model,
                                                                     sample_data, tmp_path):
    """GPU REPLACED (``fake_gpu``): the seven parameters reach main_ds.py's command line, and its
    own loggers (set up by main_ds.py itself, which the stand-in runs up to the GPU; the stand-in's
    epoch records go through them) log into the MLflow run the launcher opened, and to TensorBoard."""
    ckpt = tmp_path / "ckpt"
    tracking = {"mlflow_tracking_uri": mlflow_server, "mlflow_experiment_name": "instructlab",
                "mlflow_run_name": "ilab", "wandb_project": "p", "wandb_entity": "team", "wandb_run_name": "w",
                "tensorboard_log_dir": str(tmp_path / "tb")}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        result = sft(model_path=str(tiny_model), data_path=str(sample_data), ckpt_output_dir=str(ckpt), num_epochs=2,
                     **tracking)
    argv = json.loads((ckpt / "torchrun_argv.json").read_text())
    assert all(f"--{name}={value}" in argv for name, value in tracking.items())
    client = _client(mlflow_server)
    run = client.get_run(result.mlflow_run_id)
    assert (run.info.status, run.info.run_name) == ("FINISHED", "ilab")
    assert run.data.tags["training_hub.backend"] == "instructlab-training"
    assert _history(client, run.info.run_id, "avg_loss") == [(1, 3.0), (2, 1.5)]
    assert run.data.params["learning_rate"] == str(SFTParams.model_fields["learning_rate"].default)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tb_run,) = (tmp_path / "tb").iterdir()
    events = EventAccumulator(str(tb_run))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("avg_loss")] == [(1, 3.0), (2, 1.5)]


@pytest.mark.slow
def test_under_airflow_the_run_is_tagged_linked_and_no_credential_leaks(airflow_db, mlflow_server, tiny_model,
                                                                       sample_data, monkeypatch, capfd):
    """A real DAG run (local execution): the worker's MLFLOW_TRACKING_TOKEN reaches the training
    process by inheritance only, and appears in neither the parameters, the XComs nor the task log."""
    from airflow_runs import run_dag, states, xcoms

    planted = "planted-7d2b0c-mlflow-token"
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", planted)  # the MLflow server ignores it (no auth configured)
    run = run_dag("th_tracked_train", {"model_path": str(tiny_model), "data_path": str(sample_data),
                                       "mlflow_tracking_uri": mlflow_server})
    assert states(run) == {"train": "success"}
    got = xcoms(run)
    client = _client(mlflow_server)
    mlflow_run = client.get_run(got[("train", "mlflow_run_id")])
    tags = mlflow_run.data.tags
    assert (tags["airflow.dag_id"], tags["airflow.run_id"], tags["airflow.task_id"], tags["airflow.try_number"]) == (
        "th_tracked_train", run.run_id, "train", "1")
    assert mlflow_run.info.status == "FINISHED" and len(_history(client, mlflow_run.info.run_id, "avg_loss")) == 3
    url = got[("train", "mlflow_run_url")]
    assert url == f"{mlflow_server}/#/experiments/{mlflow_run.info.experiment_id}/runs/{mlflow_run.info.run_id}"
    assert got[("train", "_link_MLflowRunLink")] == url  # the task's "MLflow run" button
    assert planted not in json.dumps({f"{task}.{key}": value for (task, key), value in got.items()}, default=str)
    assert planted not in json.dumps(mlflow_run.data.params)
    log = capfd.readouterr()
    assert "MLflow run " in log.out + log.err  # the launcher names the run in the task log
    assert planted not in log.out + log.err


@pytest.mark.slow
def test_a_tracking_server_lost_mid_run_costs_the_dashboard_not_the_training(tiny_model, sample_data, tmp_path):
    """The MLflow server dies after the run opened: rank 0 drops its MLflow logger with a warning,
    training finishes, its checkpoint is there, and the launcher's final status update only warns.
    (MLflow's own retry settings say how long a call waits first; the test keeps them short.)"""
    ckpt = tmp_path / "ckpt"
    with started_mlflow_server(tmp_path / "mlflow") as (uri, server):
        command = [str(Path(sys.executable).with_name("training-hub")), "sft", "--backend", "pytorch",
                   "--model-path", str(tiny_model), "--data-path", str(sample_data), "--ckpt-output-dir", str(ckpt),
                   "--effective-batch-size", "4", "--max-seq-len", "256", "--mlflow-tracking-uri", uri]
        env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        output = []
        for line in proc.stdout:
            output.append(line)
            if "step 1/12" in line and server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
        proc.wait(timeout=600)
    text = "".join(output)
    assert proc.returncode == 0, text[-3000:]
    assert "warning: MLflowHandler failed" in text and "training goes on without it" in text
    assert re.search(r"MLflow run \w+ could not be marked FINISHED", text), text[-3000:]
    result = json.loads(text.strip().splitlines()[-1])
    assert Path(result["checkpoint"], "config.json").is_file() and result["metrics"]["steps"] == 12
