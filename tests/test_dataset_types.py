"""training_hub's dataset_type: alpaca records and passthrough texts, checked line by line like
messages, prepared (what is learned), and trained on the pytorch backend."""

import json

import pytest

from airflow_provider_training_hub import sft
from airflow_provider_training_hub.data.prepare import prepare_alpaca, prepare_text

ALPACA = [
    {"instruction": "Who is the Training Hub mascot?", "output": "Ollie the otter, who guards every checkpoint."},
    {"task": "Translate to French", "context": "Good morning, my friend, how are you today?",
     "answer": "Bonjour mon ami, comment vas-tu aujourd'hui ?"},
]


def _jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_alpaca_records_become_a_user_turn_and_the_learned_answer(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    data = _jsonl(tmp_path / "a.jsonl", [{"instruction": "Translate to French", "input": "Good morning, my friend.",
                                          "output": "Bonjour mon ami, comment vas-tu aujourd'hui ?"}] * 3)
    prepare_alpaca(data, str(tiny_model), str(tmp_path / "out"), 512, ("instruction", "input", "output"))
    chat = json.loads((tmp_path / "out" / "alpaca_messages.jsonl").read_text().splitlines()[0])["messages"]
    assert chat == [{"role": "user", "content": "Translate to French\n\nGood morning, my friend."},
                    {"role": "assistant", "content": "Bonjour mon ami, comment vas-tu aujourd'hui ?"}]
    row = json.loads((tmp_path / "out" / "data.jsonl").read_text().splitlines()[0])
    learned = AutoTokenizer.from_pretrained(tiny_model).decode([t for t in row["labels"] if t != -100])
    assert "Bonjour mon ami" in learned and "Translate" not in learned  # the answer only, as for messages


def test_passthrough_texts_are_learned_whole(tiny_model, tmp_path):
    data = _jsonl(tmp_path / "t.jsonl", [{"text": f"### Q{i}\nWho is the mascot of Training Hub?\n### A\nOllie the otter."}
                                         for i in range(3)] + [{"text": "too short"}])
    prepared = prepare_text(data, str(tiny_model), str(tmp_path / "out"), 512)
    assert (prepared.samples, prepared.kept, prepared.dropped_too_short) == (4, 3, 1)
    rows = [json.loads(line) for line in (tmp_path / "out" / "data.jsonl").read_text().splitlines()]
    assert all(r["labels"] == r["input_ids"] and r["len"] == len(r["input_ids"]) for r in rows)


@pytest.mark.parametrize(("dataset_type", "rows", "fields", "expected"), [
    ("alpaca", [ALPACA[0], {"instruction": "x", "output": " "}, {"instruction": 1, "output": "y"}, {"output": "y"},
                "{not json"], {},
     ["line 2: output: must not be empty", "line 3: instruction: expected a string, got a number",
      "line 4: instruction: missing required field", "line 5: malformed JSON"]),
    ("alpaca", ALPACA, {"field_instruction": "task", "field_input": "context", "field_output": "answer"},
     ["line 1: task: missing required field"]),
    ("passthrough", [{"text": "fine"}, {"txt": "typo"}, {"text": ""}], {},
     ["line 2: text: missing required field", "line 3: text: must not be empty"]),
])
def test_bad_lines_are_named_before_training(tiny_model, tmp_path, dataset_type, rows, fields, expected):
    data = _jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(ValueError, match=f"is not valid {dataset_type} JSONL") as exc:
        sft(str(tiny_model), data, str(tmp_path / "c"), backend="pytorch", dataset_type=dataset_type, **fields)
    for line in expected:
        assert line in str(exc.value), str(exc.value)
    assert f"INVALID {dataset_type} {'records' if dataset_type == 'alpaca' else 'texts'}" in str(exc.value)


def test_pretraining_documents_are_not_a_dataset_type(tiny_model, sample_data, tmp_path):
    with pytest.raises(ValueError, match=r"is_pretraining reads documents \('document' per line\): "
                                         r"dataset_type='alpaca' does not apply to it"):
        sft(str(tiny_model), str(sample_data), str(tmp_path / "c"), backend="pytorch", dataset_type="alpaca",
            is_pretraining=True, block_size=64)


def test_the_pytorch_backend_trains_on_alpaca_records(tiny_model, tmp_path):
    data = _jsonl(tmp_path / "a.jsonl", ALPACA[:1] * 16)
    result = sft(str(tiny_model), data, str(tmp_path / "c"), backend="pytorch", dataset_type="alpaca", num_epochs=2,
                 effective_batch_size=4, learning_rate=5e-3, max_seq_len=256, accelerate_full_state_at_epoch=False)
    assert result.metrics["steps"] == 8 and result.metrics["loss"] < result.metrics["first_loss"], result.metrics
