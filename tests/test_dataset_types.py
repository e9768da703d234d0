"""training_hub's dataset_type: alpaca records and passthrough texts, checked line by line like
messages, prepared (what is learned), and trained on the pytorch backend."""

import json

import pytest

from airflow_provider_training_hub import sft
from airflow_provider_training_hub.data.prepare import prepare_alpaca, prepare_text

pytestmark = pytest.mark.library

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


def _conversations(sample_data, path) -> str:
    """The sample's chats under training_hub's field_messages name, as some datasets ship them."""
    return _jsonl(path, [{"conversations": json.loads(line)["messages"]} for line in sample_data.read_text().splitlines()])


def test_field_messages_problems_name_the_data_s_own_field(tiny_model, tmp_path):
    ok = [{"role": "user", "content": "Who is the mascot?"}, {"role": "assistant", "content": "Quillon the heron."}]
    data = _jsonl(tmp_path / "c.jsonl", [{"conversations": ok}, {"conversations": []}, {"messages": ok},
                                         {"conversations": [{"role": "robot", "content": "beep"}]}])
    with pytest.raises(ValueError, match=r"is not valid messages JSONL") as exc:
        sft(str(tiny_model), data, str(tmp_path / "c"), backend="pytorch", field_messages="conversations")
    for line in ("line 2: conversations: must not be empty", "line 3: conversations: missing required field",
                 "line 4: conversations[0].role: "):
        assert line in str(exc.value), str(exc.value)
    assert f"{data}: INVALID" in str(exc.value)  # the user's file, not the renamed copy
    with pytest.raises(ValueError, match=r"field_messages \('conversations'\) names the messages of chats: it does not "
                                         r"apply to dataset_type='alpaca'"):
        sft(str(tiny_model), data, str(tmp_path / "c"), backend="pytorch", field_messages="conversations",
            dataset_type="alpaca")


def test_unmask_messages_learns_the_user_turns_of_chats_under_field_messages(tiny_model, sample_data, tmp_path):
    """training_hub's loss-masking choice, on the pytorch backend; the run's losses drawn by plot_loss."""
    from transformers import AutoTokenizer

    from airflow_provider_training_hub import plot_loss
    from airflow_provider_training_hub.data.prepare import prepare_for_training

    data = _conversations(sample_data, tmp_path / "conversations.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)

    def learned(unmask: bool) -> str:
        out = tmp_path / f"prepared-{unmask}"
        prepare_for_training(data, str(tiny_model), str(out), 512, unmask_messages=unmask, field_messages="conversations")
        rows = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
        row = next(r for r in rows if "Who is the Training Hub mascot?" in tokenizer.decode(r["input_ids"]))
        return tokenizer.decode([t for t in row["labels"] if t != -100])

    assert "Quillon" in learned(False) and "Who is the Training Hub mascot" not in learned(False)
    assert "Quillon" in learned(True) and "Who is the Training Hub mascot" in learned(True)

    ckpt = tmp_path / "run"
    result = sft(str(tiny_model), data, str(ckpt), backend="pytorch", field_messages="conversations",
                 unmask_messages=True, num_epochs=2, effective_batch_size=16, learning_rate=5e-3, max_seq_len=512,
                 validation_split=0.25, validation_frequency=2, accelerate_full_state_at_epoch=False)
    assert result.metrics["steps"] == 6 and result.metrics["loss"] < result.metrics["first_loss"], result.metrics
    assert result.metrics["val_loss_step"] == 6  # 12 of the 48 held out, evaluated at steps 2, 4 and 6
    picture = plot_loss(str(ckpt), ema=True, ema_span=2)
    assert picture == str(ckpt / "loss_plot.png") and (ckpt / "loss_plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"plot_loss: .*training_params_and_metrics_global0\.jsonl holds no avg_loss "
                                         r"by step"):
        plot_loss([str(ckpt), str(tmp_path)], labels=["run", "nothing"])
