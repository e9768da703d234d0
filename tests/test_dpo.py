"""DPO for real: preference data checked line by line, ``dpo()`` on the ``pytorch`` backend in
torchrun processes, held to TRL's ``DPOTrainer`` step by step, stopped and resumed through the
CLI. Nothing is replaced: these run on the CPU. SmolLM2 learning a preference is a measurement,
not a test (docs/algorithms.md, "dpo"): its DAG run alone took 24 minutes of CI on two loaded cores, for a
figure that is recorded with its commands; ``dpo_retrain``'s test runs the same path on the tiny
model."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DPO_SAMPLE, stop_when
from support.trl_dpo import run_trl_dpo

from airflow_provider_training_hub import dpo
from airflow_provider_training_hub.checkpoints import read_metrics
from airflow_provider_training_hub.data.preference import prepare_preferences, validate_preferences

pytestmark = pytest.mark.library

WORDS = "heron airflow model train data answer pipeline graph token cluster".split()


def _pairs(path: Path, n: int, seed: int = 1, form: str = "explicit") -> Path:
    """``n`` pairs of varied lengths, in TRL's explicit form, its implicit-prompt form, or (``mixed``)
    alternately, which TRL cannot read (a ``datasets`` column is absent or present throughout)."""
    import random

    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            prompt = [{"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(3, 12))) + "?"}]
            chosen, rejected = ([{"role": "assistant", "content": " ".join(rng.choices(WORDS, k=rng.randint(2, 15)))}]
                                for _ in range(2))
            explicit = form == "explicit" or (form == "mixed" and i % 2)
            line = ({"prompt": prompt, "chosen": chosen, "rejected": rejected} if explicit else
                    {"chosen": prompt + chosen, "rejected": prompt + rejected, "id": i})
            f.write(json.dumps(line) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_the_first_ten_steps_agree_with_trl(tiny_model, tmp_path, loss_type, lora):
    """The same tiny model, pairs, seed and hyperparameters through TRL's DPOTrainer (dropout off):
    each of the first 10 optimizer steps' loss and reward margin agree within 1e-3 relative."""
    data = _pairs(tmp_path / "pairs.jsonl", 8)
    lr = 5e-3 if lora else 1e-3
    adapters = {"r": 8, "alpha": 16} if lora else None
    ours_dir = tmp_path / "ours"
    dpo(str(tiny_model), str(data), str(ours_dir), effective_batch_size=8, num_epochs=10, learning_rate=lr,
        loss_type=loss_type, checkpoint_at_epoch=False, accelerate_full_state_at_epoch=False,
        **({"lora_r": adapters["r"], "lora_alpha": adapters["alpha"]} if lora else {}))
    ours = read_metrics(ours_dir)
    theirs = run_trl_dpo(tiny_model, data, tmp_path / "trl", steps=10, batch=8, learning_rate=lr,
                         loss_type=loss_type, lora=adapters)
    assert len(ours) == len(theirs) == 10
    gaps = []
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True), start=1):
        for key, theirs_key in (("avg_loss", "loss"), ("rewards/margins", "rewards/margins")):
            assert math.isclose(a[key], b[theirs_key], rel_tol=1e-3, abs_tol=1e-6), (step, key, a[key], b[theirs_key])
            if b[theirs_key]:
                gaps.append(abs(a[key] - b[theirs_key]) / abs(b[theirs_key]))
    print(f"{loss_type} {'lora' if lora else 'full'}: largest relative gap to TRL over 10 steps {max(gaps):.2e}")
    assert ours[-1]["rewards/margins"] > 0.05  # the steps moved the model: the agreement is not of two idle runs


def test_bad_pairs_are_named_by_line_field_and_reason(tmp_path):
    good = {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}]}
    user, assistant = ({"role": r, "content": "x"} for r in ("user", "assistant"))
    lines = [
        json.dumps(good),
        json.dumps({**good, "rejected": good["chosen"]}),
        json.dumps({**good, "prompt": [user, assistant]}),
        json.dumps({"chosen": [user, assistant], "rejected": [{"role": "user", "content": "y"}, assistant]}),
        json.dumps({**good, "chosen": []}),
        json.dumps({**good, "chosen": [user]}),
        json.dumps({**good, "chosen": [{"role": "assistant", "content": " "}]}),
        json.dumps({**good, "prompt": []}),
        json.dumps({"prompt": good["prompt"], "chosen": good["chosen"]}),
        json.dumps({**good, "rejected": "b"}),
        json.dumps({**good, "prompt": [{"role": "pretraining", "content": "q"}]}),
        json.dumps({"chosen": [user, assistant], "rejected": [user, assistant]}),
        json.dumps({"chosen": [user, assistant], "rejected": [user]}),
        '{"prompt": [{"role": "user", "content": "q", "content": "r"}], "chosen": [], "rejected": []}',
        '{"prompt": [',
        "",
        json.dumps({"chosen": [user, assistant], "rejected": [user, {"role": "assistant", "content": "other"}]}),
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = validate_preferences(str(data), on_invalid="skip", output_path=str(tmp_path / "valid.jsonl"))
    assert [str(e) for e in report.errors] == [
        "line 2: rejected: is identical to chosen: the pair prefers neither",
        "line 3: prompt[1].role: the prompt must end on a user turn, got 'assistant'",
        "line 4: chosen: has no prompt: without a \"prompt\" field, chosen and rejected must begin with the same "
        "messages (the prompt), and they differ from their first message",
        "line 5: chosen: must not be empty",
        "line 6: chosen[0].role: a reply must start with an assistant turn, got 'user'",
        "line 7: chosen[0].content: the assistant's reply must not be empty",
        "line 8: prompt: must not be empty",
        "line 9: rejected: missing required field",
        "line 10: rejected: expected an array, got a string",
        "line 11: prompt[0].role: 'pretraining' has no place in a preference pair: its roles are system, user and "
        "assistant",
        "line 12: rejected: is identical to chosen: the pair prefers neither",
        "line 13: rejected: holds only the prompt: no reply after the messages it shares with the other",
        "line 14: prompt[0].content: duplicate key (only one value would be used)",
        "line 15: truncated JSON: the line ends inside a value",
    ]
    assert report.valid and report.stats["pairs"] == 2 and report.stats["blank_lines"] == 1
    # the valid pairs, in the explicit form, the implicit one's prompt extracted and its extra key dropped
    written = [json.loads(line) for line in (tmp_path / "valid.jsonl").read_text().splitlines()]
    assert written[1] == {"prompt": [user], "chosen": [assistant], "rejected": [{"role": "assistant", "content": "other"}]}
    rejects = [json.loads(line) for line in (tmp_path / "valid.jsonl.rejected.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]

    strict = validate_preferences(str(data))
    assert not strict.valid and strict.error_count == 14 and "INVALID" in strict.summary()
    with pytest.raises(ValueError, match=r"(?s)is not valid preference JSONL:\n.*line 2: rejected: is identical"):
        dpo(str(tmp_path), str(data), str(tmp_path / "ckpt"))  # refused before the model is looked at


@pytest.mark.parametrize("form", ["explicit", "implicit"])
def test_preparation_tokenizes_as_trl_does_and_counts_what_max_length_drops(tiny_model, tmp_path, form):
    """Prompt, chosen and rejected token ids equal TRL 1.16's own tokenization (its DPOTrainer's
    dataset preparation, its prompt extraction for the implicit form), and a pair whose prompt
    alone fills max_length is dropped and counted."""
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    data = _pairs(tmp_path / "pairs.jsonl", 6, form=form)
    prepared = prepare_preferences(str(data), str(tiny_model), str(tmp_path / "prep"), max_length=1024)
    ours = [json.loads(line) for line in Path(prepared.path).read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    trainer = DPOTrainer.__new__(DPOTrainer)  # its dataset preparation alone, without a model
    trainer._tokenizer = tokenizer
    theirs = trainer._prepare_dataset(load_dataset("json", data_files=str(data), split="train"), tokenizer,
                                      DPOConfig(output_dir=str(tmp_path / "trl"), max_length=1024, report_to=[], use_cpu=True,
                                                bf16=False),
                                      "train")
    assert [[o["prompt_ids"], o["chosen_ids"], o["rejected_ids"]] for o in ours] == \
        [[t["prompt_ids"], t["chosen_ids"], t["rejected_ids"]] for t in theirs]
    assert len(ours) == 6

    shortest_prompt = min(len(o["prompt_ids"]) for o in ours)
    cut = prepare_preferences(str(data), str(tiny_model), str(tmp_path / "cut"), max_length=shortest_prompt + 1)
    assert cut.samples == 6 and cut.kept + cut.dropped_too_long == 6 and cut.kept >= 1
    for line in Path(cut.path).read_text().splitlines():
        pair = json.loads(line)
        assert len(pair["prompt_ids"]) + max(len(pair["chosen_ids"]), len(pair["rejected_ids"])) <= shortest_prompt + 1
    report = validate_preferences(str(data), model_path=str(tiny_model), max_length=shortest_prompt + 1)
    assert report.stats["tokens"]["prompt_fills_max_length"] == cut.dropped_too_long
    assert "whose prompt alone fills it" in report.summary()


def test_configuration_errors_come_before_any_work(tiny_model, tmp_path):
    data, ckpt = str(DPO_SAMPLE), tmp_path / "ckpt"
    with pytest.raises(ValueError, match=r"Unknown backend for 'dpo': 'instructlab-training'\..*Available: pytorch"):
        dpo(str(tiny_model), data, str(ckpt), backend="instructlab-training")
    with pytest.raises(ValueError, match=r"label_smoothing \(0\.1\) applies to loss_type='sigmoid' only, not 'ipo'"):
        dpo(str(tiny_model), data, str(ckpt), loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match=r"lora_alpha shape LoRA adapters: set lora_r too"):
        dpo(str(tiny_model), data, str(ckpt), lora_alpha=8)
    with pytest.raises(ValueError, match=r"Invalid parameter 'loss_type': must be 'sigmoid', 'ipo' or 'hinge'"):
        dpo(str(tiny_model), data, str(ckpt), loss_type="kto")
    with pytest.raises(ValueError, match=r"Unknown parameter 'max_prompt_length'\."):
        dpo(str(tiny_model), data, str(ckpt), max_prompt_length=128)
    with pytest.raises(ValueError, match=r"max_tokens_per_gpu \(1000\) must be at least 2 x max_length"):
        dpo(str(tiny_model), data, str(ckpt), max_tokens_per_gpu=1000)
    assert not ckpt.exists()


@pytest.mark.slow
def test_a_stopped_two_rank_run_resumes_to_the_losses_of_an_unbroken_one(tiny_model, tmp_path):
    """SIGTERM mid-epoch: both ranks save the step, and the rerun resumes there. The reference
    log-probabilities come from the starting model again, not from the resumed weights: every
    step's loss and margin are those of a run that was never stopped."""
    data = _pairs(tmp_path / "pairs.jsonl", 24, form="mixed")
    params = ["--effective-batch-size", "4", "--num-epochs", "2", "--learning-rate", "1e-3", "--nproc-per-node", "2",
              "--logging-steps", "1", "--checkpoint-at-epoch", "false"]

    def command(ckpt: Path) -> list[str]:
        return [str(Path(sys.executable).parent / "training-hub"), "dpo", "--model-path", str(tiny_model),
                "--data-path", str(data), "--ckpt-output-dir", str(ckpt), *params]

    unbroken = subprocess.run(command(tmp_path / "unbroken"), capture_output=True, text=True, timeout=600)
    assert unbroken.returncode == 0, unbroken.stdout[-3000:] + unbroken.stderr[-3000:]
    assert "reference log-probabilities of 24 pairs computed (the starting model)" in unbroken.stdout

    ckpt = tmp_path / "stopped"
    returncode, output = stop_when(command(ckpt), "step 3/12", f"dpo-sigterm-{os.getpid()}")
    assert returncode == 3, output[-3000:]
    stopped_at = max(r["step"] for r in read_metrics(ckpt))
    assert 3 <= stopped_at < 6, output[-3000:]
    rerun = subprocess.run(command(ckpt), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"full_state/step_{stopped_at}: epoch 0, step {stopped_at}" in rerun.stdout
    assert f"epoch 0 step {stopped_at + 1}/12 loss" in rerun.stdout and " margin " in rerun.stdout

    resumed, straight = read_metrics(ckpt), read_metrics(tmp_path / "unbroken")
    assert [r["step"] for r in resumed] == list(range(1, 13))
    for a, b in zip(resumed, straight, strict=True):
        for key in ("avg_loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
            assert math.isclose(a[key], b[key], rel_tol=1e-4, abs_tol=1e-6), (a["step"], key, a[key], b[key])


def test_the_cli_validates_preference_pairs_and_names_the_bad_line(tmp_path):
    cli = str(Path(sys.executable).parent / "training-hub")
    good = subprocess.run([cli, "validate", "--format", "preference", str(DPO_SAMPLE)], capture_output=True, text=True)
    assert good.returncode == 0 and "24 valid pairs, 0 invalid lines" in good.stdout, good.stdout + good.stderr
    bad = tmp_path / "pairs.jsonl"
    bad.write_text(DPO_SAMPLE.read_text().replace('"role": "assistant"', '"role": "user"', 1), encoding="utf-8")
    refused = subprocess.run([cli, "validate", "--format", "preference", str(bad)], capture_output=True, text=True)
    assert refused.returncode != 0
    assert "line 1: chosen[0].role: a reply must start with an assistant turn, got 'user'" in refused.stdout
    wrong = subprocess.run([cli, "validate", "--format", "dpo", str(bad)], capture_output=True, text=True)
    assert wrong.returncode == 2 and "invalid choice: 'dpo'" in wrong.stderr
