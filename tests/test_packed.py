"""The pytorch backend's packed forward (``backends/packed.py``) against the model's own forward.

The reference is what the backend used to do, one conversation at a time, here through the plain
transformers model (its default attention, no packing): the summed cross-entropy of each token's
next label within its own conversation. The packed row must give the same loss and the same
gradients, for every kind of label mask the data can make, and a conversation in a row must not
see the one before it. CPU only (float32); the CUDA kernel is checked against the same reference
on the GPU (``benchmarks/gpu/``) and against the per-conversation kernel whenever a run starts.
"""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from airflow_provider_training_hub.algorithms.backends.packed import (
    PackedLabelLoss,
    device_plan,
    label_loss,
    pack,
    register_packed_attention,
)
from airflow_provider_training_hub.algorithms.backends.pytorch_trainer import load_samples
from airflow_provider_training_hub.data.prepare import PROCESSED_FILE, prepare_documents, prepare_for_training

GOOD = Path(__file__).parent / "data" / "good"
CPU = torch.device("cpu")


def _models(model_dir: Path, lora: bool):
    """The same weights twice: with transformers' own attention, and with the packed one."""
    models = []
    for attention in ("sdpa", register_packed_attention()):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attention)
        if lora:
            from peft import LoraConfig, get_peft_model

            torch.manual_seed(0)  # init_lora_weights=False: random B too, so every adapter has a gradient
            model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                     init_lora_weights=False)).base_model.model
        models.append(model)
    return models


def _reference_loss(model, samples) -> torch.Tensor:
    total = torch.zeros(())
    for sample in samples:
        logits = model(input_ids=torch.tensor([sample.input_ids])).logits[0, :-1]
        total = total + torch.nn.functional.cross_entropy(logits, torch.tensor(sample.labels[1:]), reduction="sum",
                                                          ignore_index=-100)
    return total


def _grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def _samples(kind: str, tiny_model: Path, sample_data: Path, tmp_path: Path):
    if kind == "pretraining":
        docs = tmp_path / "docs.jsonl"
        docs.write_text("".join(json.dumps({"document": " ".join(json.loads(line)["messages"][-1]["content"]
                                                                 for _ in range(3))}) + "\n"
                                for line in sample_data.read_text().splitlines()[:12]))
        prepare_documents(str(docs), str(tiny_model), str(tmp_path / "prepared"), "document", num_proc=1)
        return load_samples(tmp_path / "prepared" / PROCESSED_FILE, block_size=40)
    data = sample_data
    if kind == "unmask_reasoning":  # the reasoning/unmask file's samples among ordinary chats
        data = tmp_path / "mixed.jsonl"
        chats = "".join(sample_data.open().readlines()[:8])
        data.write_text((GOOD / "system_reasoning_unmask.jsonl").read_text() + chats)
    prepare_for_training(str(data), str(tiny_model), str(tmp_path / "prepared"), 512, num_proc=1)
    return load_samples(tmp_path / "prepared" / PROCESSED_FILE)


@pytest.mark.parametrize(("kind", "lora"), [
    ("chats", False),
    ("unmask_reasoning", False),  # unmask: true (every token learned), reasoning_content, a system turn
    ("pretraining", False),  # blocks learned whole, the first token too
    ("chats", True),
])
def test_packed_loss_and_gradients_equal_the_per_conversation_forward(kind, lora, tiny_model, sample_data, tmp_path):
    device_plan(CPU)
    samples = _samples(kind, tiny_model, sample_data, tmp_path)[:16]
    assert len(samples) >= 4 and len({len(s.input_ids) for s in samples}) > 1
    reference, packed = _models(tiny_model, lora)

    expected = _reference_loss(reference, samples)
    expected.backward()
    row = pack([(s.input_ids, s.labels) for s in samples], CPU)
    got = PackedLabelLoss(packed)(row, 1.0)
    got.backward()

    assert row.input_ids.shape == (1, sum(len(s.input_ids) for s in samples))  # one row, no padding
    assert len(row.label_positions) == sum(s.loss_tokens for s in samples)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    want, have = _grads(reference), _grads(packed)
    assert want.keys() == have.keys() and (not lora or all("lora_" in name for name in have))
    for name in want:
        torch.testing.assert_close(have[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_conversation_cannot_see_the_one_before_it(tiny_model):
    """Change conversation B, which comes first in the row: A's logits, after it, do not move, and
    equal A's logits when A runs alone."""
    device_plan(CPU)
    (model,) = _models(tiny_model, lora=False)[1:]
    a = list(range(10, 40))
    b, b_changed = list(range(50, 75)), list(range(100, 140))

    def logits_of_a(before: list[int]) -> torch.Tensor:
        row = pack([(before, before), (a, a)], CPU)
        hidden = model.base_model(input_ids=row.input_ids, position_ids=row.position_ids,
                                  **row.attention_kwargs()).last_hidden_state[0]
        return model.get_output_embeddings()(hidden[len(before):])

    with torch.no_grad():
        alone = model(input_ids=torch.tensor([a])).logits[0]
        after_b, after_b_changed = logits_of_a(b), logits_of_a(b_changed)
    assert not torch.equal(alone, torch.zeros_like(alone))
    torch.testing.assert_close(after_b, after_b_changed, rtol=0, atol=1e-5)
    torch.testing.assert_close(after_b, alone, rtol=0, atol=1e-5)


def test_a_call_that_is_not_a_packed_row_is_transformers_own_attention(tiny_model):
    """``generate`` on a model loaded with the packed attention (no row boundaries, a KV cache):
    the same tokens as with transformers' SDPA."""
    device_plan(CPU)
    reference, packed = _models(tiny_model, lora=False)
    prompt = torch.tensor([[1, 40, 41, 42, 43]])
    settings = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(packed.generate(prompt, **settings), reference.generate(prompt, **settings))


def test_the_loss_in_chunks_equals_the_loss_at_once(monkeypatch):
    """Logits over the chunk budget are computed a chunk at a time, with the same loss and gradients."""
    from airflow_provider_training_hub.algorithms.backends import packed

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 64, bias=False)
    hidden = torch.randn(100, 16, requires_grad=True)
    targets = torch.randint(0, 64, (100,))
    whole = label_loss(hidden, head, targets)
    (want,) = torch.autograd.grad(whole, hidden)
    monkeypatch.setattr(packed, "LOGITS_BYTES", 4 * 64 * 30)  # 30 rows per chunk: 4 chunks
    chunked = label_loss(hidden, head, targets)
    (have,) = torch.autograd.grad(chunked, hidden)
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(have, want)


def test_the_cpu_plan_is_float32_per_conversation_in_rows_of_1024_tokens():
    plan = device_plan(CPU)
    assert (plan.kernel, plan.autocast_dtype, plan.fused_adamw, plan.autocast(CPU), plan.row_tokens) == (
        "sdpa per conversation", None, False, None, 1024)
    assert plan.describe() == "sdpa per conversation, float32, foreach AdamW, rows of at most 1024 tokens"
