"""The CPU `pytorch` backend, for real: torchrun processes, gloo, the tiny model, no mocks."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import stop_when, wait_for
from loopback import free_port

from airflow_provider_training_hub import sft
from airflow_provider_training_hub.checkpoints import full_state_checkpoints, read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.library]
COMMON = {"learning_rate": 5e-3, "max_seq_len": 512, "effective_batch_size": 8, "random_seed": 3}


def _cli_command(model, data, ckpt, **params) -> list[str]:
    args = [str(Path(sys.executable).parent / "training-hub"), "sft", "--backend", "pytorch",
            "--model-path", str(model), "--data-path", str(data), "--ckpt-output-dir", str(ckpt)]
    for name, value in {**COMMON, **params}.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def test_single_process_learns_and_the_checkpoint_reloads(tiny_model, sample_data, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    result = sft(str(tiny_model), str(sample_data), str(tmp_path / "ckpt"), backend="pytorch",
                 num_epochs=4, save_samples=20, **COMMON)
    metrics = read_metrics(tmp_path / "ckpt")
    assert len(metrics) == 4 * 6  # 48 samples / batch 8 = 6 steps per epoch
    assert result.metrics["loss"] < 0.8 * result.metrics["first_loss"], result.metrics
    # save_samples=20 saves at the first step past each multiple of 20 (24, 40, 64, ...), plus epoch ends (48)
    names = [Path(c).name for c in result.checkpoints]
    assert names[:4] == ["samples_24", "samples_40", "samples_48", "samples_64"] and names[-1] == "samples_192"
    assert len(result.full_state) == 4
    # The checkpoint reloads as the trained model: on the training data it scores what training
    # reached, well below the base model (a checkpoint of the wrong weights would not).
    rows = [json.loads(line) for line in (tmp_path / "ckpt" / "data" / "data.jsonl").read_text().splitlines()]

    def mean_loss(model_dir) -> float:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        with torch.no_grad():
            return sum(model(input_ids=torch.tensor([r["input_ids"]]), labels=torch.tensor([r["labels"]])).loss.item()
                       for r in rows) / len(rows)

    trained, base = mean_loss(result.checkpoint), mean_loss(tiny_model)
    assert trained < 0.8 * base, (trained, base)
    assert abs(trained - result.metrics["loss"]) < 0.25 * result.metrics["loss"], (trained, result.metrics)


def test_two_processes_on_one_node_keep_identical_weights(tiny_model, sample_data, tmp_path, capfd):
    result = sft(str(tiny_model), str(sample_data), str(tmp_path / "ckpt"), backend="pytorch",
                 nproc_per_node=2, num_epochs=1, **COMMON)
    out = capfd.readouterr().out
    assert "6 steps/epoch" in out and "2 rank(s) on cpu" in out
    assert "weights identical on all 2 rank(s)" in out
    assert result.metrics["steps"] == 6 and result.metrics["samples_seen"] == 48


@pytest.mark.parametrize("rendezvous", ["rdzv_endpoint", "master_addr"])
def test_two_nodes_on_localhost(tiny_model, sample_data, tmp_path, rendezvous):
    port = free_port()
    meet = {"rdzv_endpoint": f"127.0.0.1:{port}"} if rendezvous == "rdzv_endpoint" else {
        "master_addr": "127.0.0.1", "master_port": port}
    ckpt = tmp_path / "shared-ckpt"
    procs = [
        subprocess.Popen(_cli_command(tiny_model, sample_data, ckpt, nnodes=2, node_rank=rank, rdzv_id="two-nodes",
                                      num_epochs=1, **meet),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "weights identical on all 2 rank(s)" in outputs[0]
    assert [p.name for p in (ckpt / "hf_format").iterdir() if p.name != ".publish.lock"] == ["samples_48"]  # by rank 0
    assert (ckpt / "full_logs_global0.log").is_file() and (ckpt / "full_logs_global1.log").is_file()


def test_a_killed_run_resumes_from_its_last_full_state(tiny_model, sample_data, tmp_path):
    """SIGKILL after the first full state: the rerun resumes from the newest one on disk. The kill
    lands some steps after the line that announced the save (more under load: CI ran it when
    another epoch had been saved meanwhile), so the test reads which one that is."""
    ckpt = tmp_path / "ckpt"
    command = _cli_command(tiny_model, sample_data, ckpt, num_epochs=4, effective_batch_size=4, save_total_limit=1)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "saved full state" in line and "epoch_0" in line:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-20:])
    epoch = max(int(p.name.removeprefix("epoch_")) for p in (ckpt / "full_state").glob("epoch_*"))
    assert epoch < 3, "the run ended before the kill"  # 36 steps of 4 samples left after epoch 0
    done = 12 * (epoch + 1)  # an epoch is 12 steps of 4 samples

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"full_state/epoch_{epoch}: epoch {epoch + 1}, step {done}, samples {4 * done}" in rerun.stdout
    result = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert result["metrics"]["steps"] == 48 and result["metrics"]["samples_seen"] == 192
    # save_total_limit=1: the state it resumed from went once the next one was complete
    assert [Path(p).name for p in result["full_state"]] == ["epoch_3"]
    assert [Path(p).name for p in result["checkpoints"]] == ["samples_192"]
    assert f"removed {ckpt}/full_state/epoch_{epoch} (save_total_limit=1)" in rerun.stdout
    assert f"epoch {epoch} step" not in rerun.stdout and f"epoch {epoch + 1} step {done + 1}/48" in rerun.stdout
    # each progress line ends in the time left at the pace of this run's own steps
    assert re.search(rf"epoch {epoch + 1} step {done + 1}/48 loss \S+ lr \S+ tokens/s \d+ samples {4 * done + 4} "
                     r"eta \d+m\d\ds$", rerun.stdout, re.M)
    assert re.search(r"epoch 3 step 48/48 .* eta 0m00s$", rerun.stdout, re.M)


def test_a_local_run_that_no_task_watches_stops_itself_with_its_state_saved(tiny_model, sample_data, tmp_path):
    """``detached``, the parent of a local run: its task watched until the run trained, then died,
    and no retry came. The run is stopped as ``on_kill`` stops it, saving its state, and how it
    ended is recorded for the next try, which resumes there."""
    from airflow_provider_training_hub.detached import EXIT, OUTPUT, WATCHED

    run_dir, ckpt = tmp_path / "run", tmp_path / "ckpt"
    run_dir.mkdir()
    (run_dir / WATCHED).touch()
    command = [sys.executable, "-m", "airflow_provider_training_hub.detached", str(run_dir), "3", "--",
               *_cli_command(tiny_model, sample_data, ckpt, num_epochs=100)]
    with (run_dir / OUTPUT).open("ab") as output:
        proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: (run_dir / WATCHED).touch() or read_metrics(ckpt), 120, "the first step")  # the task watches
    assert proc.wait(timeout=120) == 0
    log = (run_dir / OUTPUT).read_text()
    assert json.loads((run_dir / EXIT).read_text()) == {"returncode": 3}, log[-3000:]
    assert "[training-hub] no task has watched this run for 3 s: stopping it" in log
    stopped_at = re.search(r"stopped by SIGTERM after step (\d+)/600", log)
    assert stopped_at and int(stopped_at[1]) < 600, log[-3000:]
    assert (ckpt / "full_state" / f"step_{stopped_at[1]}").is_dir()


def test_without_enable_jit_checkpoint_sigterm_ends_the_run_at_once_saving_nothing(tiny_model, sample_data,
                                                                                     tmp_path):
    """training_hub's ``enable_jit_checkpoint=False``: no state at the step of the SIGTERM; the run
    ends (exit 3, stopped) with nothing left running, and a rerun starts from the last full state
    (none here)."""
    ckpt = tmp_path / "ckpt"
    command = [*_cli_command(tiny_model, sample_data, ckpt, num_epochs=2, effective_batch_size=4),
               "--no-enable-jit-checkpoint"]
    returncode, output = stop_when(command, "step 5/24", f"no-jit-test-{os.getpid()}")
    assert returncode == 3, output[-3000:]
    assert "stopped by SIGTERM after step" not in output
    assert "training-hub: stopped by SIGTERM; no full state was saved, so a rerun starts over" in output
    assert full_state_checkpoints(ckpt) == [], output[-3000:]


def test_sigterm_saves_the_state_at_the_current_step_and_a_rerun_resumes_there(tiny_model, sample_data, tmp_path):
    """SIGTERM to the training-hub process alone, as a pod's PID 1 or the local hook receives it:
    it passes the signal on, both ranks stop after the same step, save it, and the process exits 3
    with nothing left running. The rerun starts at the next step, in the middle of the epoch."""
    ckpt = tmp_path / "ckpt"
    command = _cli_command(tiny_model, sample_data, ckpt, num_epochs=2, effective_batch_size=4, nproc_per_node=2)
    returncode, output = stop_when(command, "step 5/24", f"sigterm-test-{os.getpid()}")
    assert returncode == 3, output[-3000:]
    stopped_at = max(r["step"] for r in read_metrics(ckpt))
    assert 5 <= stopped_at < 12, output[-3000:]  # within epoch 0, at most a step or two after the signal
    state = ckpt / "full_state" / f"step_{stopped_at}"
    assert json.loads((state / "training_metadata.json").read_text()) == {
        "current_epoch": 0, "epoch_step": stopped_at, "global_step": stopped_at, "samples_seen": 4 * stopped_at}
    assert f"stopped by SIGTERM after step {stopped_at}/24" in output
    assert f"training-hub: stopped by SIGTERM; a rerun with the same ckpt_output_dir resumes from {state}" in output

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"full_state/step_{stopped_at}: epoch 0, step {stopped_at}, samples {4 * stopped_at}" in rerun.stdout
    assert f"epoch 0 step {stopped_at + 1}/24" in rerun.stdout and f"step {stopped_at}/24" not in rerun.stdout
    assert sorted(r["step"] for r in read_metrics(ckpt)) == list(range(1, 25))  # each step once, none lost


def test_micro_batches_and_accumulation_size_the_step_as_training_hub_does(tiny_model, sample_data, tmp_path):
    """effective batch = micro_batch_size x gradient_accumulation_steps x ranks (1 here): 48 samples
    make 8 steps of 6, each 3 micro-batches of 2 (the token cap alone would take each step whole)."""
    sft(str(tiny_model), str(sample_data), str(tmp_path / "ckpt"), backend="pytorch", num_epochs=1,
        micro_batch_size=2, gradient_accumulation_steps=3, checkpoint_at_epoch=False,
        accelerate_full_state_at_epoch=False, **{k: v for k, v in COMMON.items() if k != "effective_batch_size"})
    records = read_metrics(tmp_path / "ckpt")
    assert [(r["batch_size"], r["num_minibatches"]) for r in records] == [(6, 3)] * 8


def test_adamw_settings_reach_the_optimizer(tiny_model, sample_data, tmp_path):
    result = sft(str(tiny_model), str(sample_data), str(tmp_path / "ckpt"), backend="pytorch", num_epochs=1,
                 save_samples=16, keep_last_checkpoint_only=True, accelerate_full_state_at_epoch=False,
                 beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.05, **COMMON)
    hparams = json.loads((tmp_path / "ckpt" / "training_params_and_metrics_global0.jsonl").read_text().splitlines()[0])
    assert hparams["optimizer"] == {"betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.05}
    # keep_last_checkpoint_only: the saves at 16, 32 and 48 samples each replaced hf_format/last_epoch
    assert result.checkpoints == [str(tmp_path / "ckpt" / "hf_format" / "last_epoch")]
    assert sorted(p.name for p in (tmp_path / "ckpt" / "hf_format").iterdir()) == [".publish.lock", "last_epoch"]


def test_pretraining_trains_on_blocks_of_documents(tiny_model, tmp_path):
    """is_pretraining: documents under document_column_name, every token learned, cut into blocks."""
    from transformers import AutoTokenizer

    texts = [f"The heron number {i} wades in the river at dawn and eats a fish." for i in range(12)]
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": t, "source": i}) + "\n" for i, t in enumerate(texts)))
    result = sft(str(tiny_model), str(data), str(tmp_path / "ckpt"), backend="pytorch", num_epochs=3,
                 is_pretraining=True, block_size=32, document_column_name="text",
                 **{**COMMON, "effective_batch_size": 4})
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokens = sum(len(tokenizer.encode(t)) + (tokenizer.encode(t)[-1] != tokenizer.eos_token_id) for t in texts)
    metrics = read_metrics(tmp_path / "ckpt")
    blocks = -(-tokens // 32)
    assert metrics[0]["total_samples"] == blocks  # the documents, concatenated and cut
    epoch = [m for m in metrics if m["epoch"] == 0]
    assert sum(m["num_loss_counted_tokens"] for m in epoch) == tokens - blocks  # every next token is a label
    assert result.metrics["loss"] < 0.8 * result.metrics["first_loss"], result.metrics


def test_pretraining_data_errors_name_the_line(tiny_model, tmp_path):
    data = tmp_path / "docs.jsonl"
    data.write_text('{"document": "fine"}\n{"text": "wrong column"}\n{"document": ""}\n')
    with pytest.raises(ValueError) as exc:
        sft(str(tiny_model), str(data), str(tmp_path / "c"), backend="pytorch", is_pretraining=True, block_size=64)
    assert "line 2: document: missing required field" in str(exc.value)
    assert "line 3: document: must not be empty" in str(exc.value)
    assert not (tmp_path / "c" / "hf_format").exists()


def test_impossible_configuration_fails_before_launch(tiny_model, sample_data, tmp_path):
    with pytest.raises(ValueError, match=r"nnodes=2 needs rdzv_endpoint"):
        sft(str(tiny_model), str(sample_data), str(tmp_path / "c"), backend="pytorch", nnodes=2)
    with pytest.raises(ValueError, match=r"No sample .* between 20 and max_seq_len=20 tokens"):
        sft(str(tiny_model), str(sample_data), str(tmp_path / "c"), backend="pytorch", max_seq_len=20)
    assert not (tmp_path / "c" / "hf_format").exists()


def test_progress_lines_come_at_a_steady_pace_not_every_step(tiny_model, sample_data, tmp_path):
    """With an interval longer than the run, the task log gets the first and the last step only;
    the metrics file still has every step."""
    ckpt = tmp_path / "ckpt"
    command = _cli_command(tiny_model, sample_data, ckpt, num_epochs=1, effective_batch_size=4)
    run = subprocess.run(command, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TRAINING_HUB_PROGRESS_SECONDS": "3600"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    progress = re.findall(r"epoch 0 step (\d+)/12 loss \S+ lr \S+ tokens/s \d+ samples \d+ eta \d+m\d\ds$",
                          run.stdout, re.M)
    assert progress == ["1", "12"], run.stdout[-3000:]
    assert [r["step"] for r in read_metrics(ckpt)] == list(range(1, 13))

    # training_hub's logging_steps: a line every N steps instead (the interval is then unused,
    # though still checked)
    every5 = subprocess.run(_cli_command(tiny_model, sample_data, tmp_path / "every5", num_epochs=1,
                                         effective_batch_size=4, logging_steps=5),
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TRAINING_HUB_PROGRESS_SECONDS": "often"})
    assert every5.returncode == 0, every5.stdout[-3000:] + every5.stderr[-3000:]
    assert re.findall(r"epoch 0 step (\d+)/12 loss", every5.stdout) == ["1", "5", "10", "12"]
    assert "TRAINING_HUB_PROGRESS_SECONDS='often' is not a number of seconds; using 10" in every5.stdout + every5.stderr


def test_a_run_with_other_data_never_resumes_the_earlier_runs_checkpoints(tiny_model, sample_data, tmp_path):
    """A weekly retraining into a fixed directory: last week's finished run must not come back as
    this week's result. The changed run is refused before any work, names what changed, and starts
    afresh only when asked; the same run still resumes (here: finds its finished state)."""
    ckpt = tmp_path / "ckpt"
    week1 = sft(str(tiny_model), str(sample_data), str(ckpt), backend="pytorch", **COMMON)
    week1_weights = (Path(week1.checkpoint) / "model.safetensors").read_bytes()
    week2_data = tmp_path / "week2.jsonl"
    week2_data.write_text("".join(sample_data.read_text().splitlines(keepends=True)[:24]))

    with pytest.raises(ValueError) as refused:
        sft(str(tiny_model), str(week2_data), str(ckpt), backend="pytorch", **COMMON)
    message = str(refused.value)
    assert f"ckpt_output_dir {str(ckpt)!r} holds the checkpoints of another run: the data's content" in message
    assert "restart_changed_run=True" in message
    with pytest.raises(ValueError, match=r"learning_rate 0\.005 then, 0\.001 now"):
        sft(str(tiny_model), str(sample_data), str(ckpt), backend="pytorch", **{**COMMON, "learning_rate": 1e-3})

    week2 = sft(str(tiny_model), str(week2_data), str(ckpt), backend="pytorch", restart_changed_run=True,
                num_epochs=2, **COMMON)
    assert week2.metrics["samples_seen"] == 48 and week2.metrics["steps"] == 6, week2.metrics
    assert (Path(week2.checkpoint) / "model.safetensors").read_bytes() != week1_weights
    [aside] = (ckpt / "superseded").iterdir()  # week 1's run is kept, out of the way
    assert (aside / "hf_format" / "samples_48" / "model.safetensors").read_bytes() == week1_weights

    # The same run resumes; its newest full state is corrupt (a disk that filled while it was
    # saved), so it resumes from the one before and trains the last epoch again.
    (ckpt / "full_state" / "epoch_1" / "state.pt").write_bytes(b"not a state")
    again = sft(str(tiny_model), str(week2_data), str(ckpt), backend="pytorch", num_epochs=2, **COMMON)
    log = (ckpt / "full_logs_global0.log").read_text()
    assert f"warning: full state {ckpt}/full_state/epoch_1 is unreadable" in log
    assert f"resumed from {ckpt}/full_state/epoch_0: epoch 1, step 3, samples 24" in log
    assert again.checkpoint == week2.checkpoint and again.metrics["steps"] == 6


def test_a_stop_of_one_node_ends_every_node_as_stopped(tiny_model, sample_data, tmp_path):
    """A preempted pod gets SIGTERM; its peer does not, and its torchrun exits 1 when its ranks
    exit 3. Both nodes' runs must end "stopped" (exit 3, which a Job does not count as a failure),
    since the state they agreed on is saved."""
    port = free_port()
    ckpt = tmp_path / "shared-ckpt"
    procs = [
        subprocess.Popen(_cli_command(tiny_model, sample_data, ckpt, nnodes=2, node_rank=rank, rdzv_id="stop",
                                      rdzv_endpoint=f"127.0.0.1:{port}", num_epochs=2, effective_batch_size=4),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in (0, 1)
    ]
    seen = []
    for line in procs[0].stdout:
        seen.append(line)
        if "step 3/24" in line:
            procs[0].send_signal(signal.SIGTERM)  # node 0 alone, as a preemption does
    procs[0].wait(timeout=120)
    peer = procs[1].communicate(timeout=120)[0]
    assert [p.returncode for p in procs] == [3, 3], "".join(seen)[-3000:] + peer[-3000:]
    state = full_state_checkpoints(ckpt)[-1]
    assert state.name.startswith("step_")
    assert f"training-hub: stopped by SIGTERM; a rerun with the same ckpt_output_dir resumes from {state}" in peer


def test_an_epoch_smaller_than_one_step_is_a_warning_that_says_what_trains_instead(tiny_model, sample_data, tmp_path):
    """48 samples under the default effective_batch_size (128): one step of 48 per epoch, said
    in a line that the task's relay logs at warning level."""
    from airflow_provider_training_hub.log_lines import level

    command = _cli_command(tiny_model, sample_data, tmp_path / "ckpt", num_epochs=1)
    at = command.index("--effective-batch-size")
    del command[at:at + 2]  # the default
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    warnings = [line for line in run.stdout.splitlines() if level(line) == logging.WARNING]
    assert warnings == [
        "[training-hub] warning: an epoch has 48 samples, fewer than one optimizer step takes (effective_batch_size "
        "= 128): an epoch cannot fill one step. For more steps, make effective_batch_size smaller than 48. Here "
        "each epoch is one step of 48 samples, 1 in all."], run.stdout[-3000:]
    assert [r["batch_size"] for r in read_metrics(tmp_path / "ckpt")] == [48]


def test_the_relay_logs_a_training_process_warning_or_error_at_its_level():
    from airflow_provider_training_hub.log_lines import level

    assert level("[training-hub] warning: callback X.on_log failed (ValueError: no); training goes on") == logging.WARNING
    assert level("2026-12-07 02:12:43,276 WARNING airflow_provider_training_hub.data.prepare: 2 of 9 samples dropped") \
        == logging.WARNING
    assert level("[th-a-b-0] 2026-12-07 02:12:43,276 ERROR torch.distributed: rank 1 died") == logging.ERROR
    assert level("2026-12-07 02:12:43,276 INFO airflow_provider_training_hub.data.prepare: prepared 12") == logging.INFO
    assert level("[training-hub] epoch 0 step 1/9 loss 6.2 (a warning: of no kind)") == logging.INFO
