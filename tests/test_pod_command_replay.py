"""The pods' command, replayed for real: multi-node training from the Job the builder generates.

For each completion index, the container's command and environment are run here as the kubelet
would run them (the downward-API node rank resolved to the index), except for two substitutions
a machine without a cluster needs: the rendezvous host is 127.0.0.1 instead of pod 0's DNS name,
and the termination-message file is a temporary file instead of /dev/termination-log. The CPU
`pytorch` backend trains the tiny model across the 2 "nodes".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from loopback import free_port

from airflow_provider_training_hub.connection import ConnectionSettings
from airflow_provider_training_hub.kubernetes import TrainingJob, build_job
from airflow_provider_training_hub.kubernetes.job import COMPLETION_INDEX_ANNOTATION, TERMINATION_LOG

pytestmark = pytest.mark.slow


def _pod_process(container: dict, index: int, endpoint: str, termination_file: Path) -> subprocess.Popen:
    env = {}
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:  # the only downward-API variable: the node rank from the completion index
            assert var["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"
            env[var["name"]] = str(index)
    env["PET_RDZV_ENDPOINT"] = endpoint
    executable = str(Path(sys.executable).with_name(container["command"][0]))
    args = [str(termination_file) if a == TERMINATION_LOG else a for a in container["args"]]
    return subprocess.Popen([executable, *args], env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_two_pods_rendezvous_train_and_report_through_the_termination_message(tiny_model, sample_data, tmp_path):
    ckpt = tmp_path / "pvc" / "checkpoints"
    job = TrainingJob(
        name="th-replay-train-0123abcd", algorithm="sft", backend="pytorch", nnodes=2, nproc_per_node=1,
        params={"model_path": str(tiny_model), "data_path": str(sample_data), "ckpt_output_dir": str(ckpt),
                "num_epochs": 1, "effective_batch_size": 8, "max_seq_len": 512, "learning_rate": 5e-3,
                "nnodes": 2},  # travels as PET_NNODES, not in the config (node_rank & co. are refused)
    )
    manifest = build_job(job, ConnectionSettings(image="training-hub:test", gpu_resource="none"))
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    endpoint = f"127.0.0.1:{free_port()}"
    messages = [tmp_path / f"termination-{i}" for i in range(2)]
    procs = [_pod_process(container, i, endpoint, messages[i]) for i in range(manifest["spec"]["completions"])]
    outputs = [p.communicate(timeout=600)[0] for p in procs]

    assert [p.returncode for p in procs] == [0, 0], [o[-3000:] for o in outputs]
    assert "2 rank(s) on cpu" in outputs[0] and "weights identical on all 2 rank(s)" in outputs[0]
    result = json.loads(messages[0].read_text())
    assert result["checkpoint"] == str(ckpt / "hf_format" / "samples_48")
    assert Path(result["checkpoint"], "config.json").is_file()
    assert result["metrics"]["steps"] == 6
