"""run_identity.claim on its own: what counts as the same run across a release."""

import json

import pytest

from airflow_provider_training_hub.algorithms.sft import SFTParams
from airflow_provider_training_hub.run_identity import IDENTITY_FILE, claim


def test_a_parameter_added_since_the_record_keeps_a_retry_the_same_run(tmp_path):
    """A run recorded by a release without `bf16` and `logging_steps` resumes under one that has
    them at their defaults; set to anything else, they make it another run."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "d.jsonl").write_text('{"messages": []}\n')
    values = {"model_path": str(tmp_path / "model"), "data_path": str(tmp_path / "d.jsonl"),
              "ckpt_output_dir": str(tmp_path / "out")}
    claim("sft", SFTParams.parse(values))
    record = tmp_path / "out" / IDENTITY_FILE
    older = json.loads(record.read_text())
    del older["parameters"]["bf16"], older["parameters"]["sample_packing"]  # as the release before wrote it
    record.write_text(json.dumps(older))
    (tmp_path / "out" / "full_state" / "epoch_0").mkdir(parents=True)  # something to resume

    claim("sft", SFTParams.parse(values))  # the same run: no error, nothing moved aside
    assert not (tmp_path / "out" / "superseded").exists()
    with pytest.raises(ValueError, match=r"another run: bf16 unset then, False now\. ") as exc:
        claim("sft", SFTParams.parse({**values, "bf16": False}))
    assert "sample_packing" not in str(exc.value)  # added too, but at its default: not a difference
