"""OpenLineage events of real DAG runs (local execution), through apache-airflow-providers-openlineage
and its file transport, read back field by field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.usefixtures("airflow_db")
PREFIX = "trainingHub_"


def _run_with_lineage(tmp_path: Path, dag_id: str, conf: dict) -> tuple[dict, list[dict]]:
    """The DAG run in its own interpreter (the provider caches its configuration per process),
    with events going to a file; the run's states and XComs, and the events."""
    events = tmp_path / "openlineage.jsonl"
    env = {**os.environ, "AIRFLOW__OPENLINEAGE__NAMESPACE": "training-hub-tests",
           "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps({"type": "file", "log_file_path": str(events),
                                                          "append": True})}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "airflow_runs.py"), dag_id, json.dumps(conf)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.rsplit("RESULT ", 1)[1].split("\n", 1)[0])
    return result, [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []


def _event(events: list[dict], job: str, kind: str) -> dict:
    (found,) = [e for e in events if e["job"]["name"] == job and e["eventType"] == kind]
    return found


@pytest.mark.slow
def test_a_dag_run_names_its_data_and_the_checkpoint_it_made(tiny_model, sample_data, tmp_path):
    validated_path = tmp_path / "validated.jsonl"
    result, events = _run_with_lineage(tmp_path, "th_lineage", {
        "data_path": str(sample_data), "output_path": str(validated_path), "model_path": str(tiny_model)})
    assert result["states"] == {"validate": "success", "train": "success"}
    checkpoint = result["xcoms"]["train.checkpoint"]

    validate = _event(events, "th_lineage.validate", "COMPLETE")
    assert validate["job"]["namespace"] == "training-hub-tests"
    (data,) = validate["inputs"]
    assert (data["namespace"], data["name"]) == ("file", str(sample_data))
    stats = data["facets"][PREFIX + "messagesData"]
    assert (stats["samples"], stats["invalidLines"]) == (48, 0)
    assert stats["messages"] == sum(stats["messagesByRole"].values())
    assert stats["messagesByRole"]["user"] == stats["messagesByRole"]["assistant"] >= 48
    assert stats["tokens"]["max"] > 0  # a tokenizer was given
    assert stats["_schemaURL"].startswith("urn:airflow-provider-training-hub:")
    assert [(o["namespace"], o["name"]) for o in validate["outputs"]] == [("file", str(validated_path))]

    train = _event(events, "th_lineage.train", "COMPLETE")
    assert [(i["namespace"], i["name"]) for i in train["inputs"]] == [("file", str(validated_path)),
                                                                      ("file", str(tiny_model))]
    (model,) = train["outputs"]
    assert (model["namespace"], model["name"]) == ("file", checkpoint)
    assert model["facets"][PREFIX + "model"]["baseModel"] == str(tiny_model)
    assert model["facets"][PREFIX + "model"]["adapter"] is False
    run = train["run"]["facets"][PREFIX + "run"]
    assert (run["algorithm"], run["backend"]) == ("sft", "pytorch")
    assert run["parameters"]["effective_batch_size"] == 16 and run["parameters"]["data_path"] == str(validated_path)
    assert "mlflowRunUrl" not in run  # no tracking asked for (OpenLineage leaves out what is None)
    # Airflow's own facets are still there: ours are added, not instead.
    assert "airflow" in train["run"]["facets"]


@pytest.mark.slow
def test_a_failed_validation_still_names_the_data_it_read(tiny_model, tmp_path):
    bad = REPO / "tests" / "data" / "bad" / "bad_role.jsonl"
    result, events = _run_with_lineage(tmp_path, "th_lineage", {
        "data_path": str(bad), "output_path": str(tmp_path / "v.jsonl"), "model_path": str(tiny_model)})
    assert result["states"]["validate"] == "failed"
    failed = _event(events, "th_lineage.validate", "FAIL")
    assert [(i["namespace"], i["name"]) for i in failed["inputs"]] == [("file", str(bad))]
    assert failed["outputs"] == []


def test_without_the_provider_configured_the_operators_import_no_openlineage():
    code = ("import sys, airflow_provider_training_hub.operators; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'openlineage'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
