"""``estimate()`` and the memory check behind it: the parameter count from ``config.json`` against
transformers' own models, training_hub 0.11.2's arithmetic, the backends' layouts, and the
refusals. How close the estimate comes to a measured peak is a benchmark
(``benchmarks/memory_estimate.py``), not a test."""

from __future__ import annotations

import json
import math

import pytest

from airflow_provider_training_hub import estimate
from airflow_provider_training_hub.algorithms import AlgorithmRegistry
from airflow_provider_training_hub.algorithms.memory import GIB, CannotEstimate, ModelShape, memory_estimate
from airflow_provider_training_hub.connection import ConnectionSettings

SMALL = {"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 3,
         "num_attention_heads": 8, "num_key_value_heads": 2}
# granite-3.3-8b-instruct's config.json, the shapes only: training_hub's default model
GRANITE_8B = {"model_type": "granite", "vocab_size": 49159, "hidden_size": 4096, "intermediate_size": 12800,
              "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 8,
              "tie_word_embeddings": True}


def model_dir(tmp_path, config: dict) -> str:
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return str(tmp_path)


@pytest.mark.parametrize(("model_type", "extra"), [
    ("llama", {}),
    ("llama", {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True}),
    ("mistral", {}),
    ("qwen2", {}),
    ("qwen3", {"head_dim": 16}),
    ("granite", {}),
    ("gemma", {"head_dim": 16}),
])
def test_the_count_from_config_json_is_transformers_count(model_type, extra, tmp_path):
    """config.json as transformers saves it (only what differs from the class's defaults), counted
    without a model, equals the parameters of the model transformers builds from it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, **SMALL, **extra)
    config.save_pretrained(tmp_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert ModelShape.read(str(tmp_path)).num_params == model.num_parameters()


def test_the_count_of_a_model_on_disk_and_of_its_lora_adapters(tiny_model):
    """The tiny model, loaded for real; and peft's trained parameters for the adapters the estimate counts."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    shape = ModelShape.read(str(tiny_model))
    assert shape.num_params == model.num_parameters()
    adapted = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    trained = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    assert shape.lora_params(4, ["q_proj", "v_proj", "down_proj"]) == trained


def test_estimate_is_training_hubs_arithmetic(tmp_path, capsys):
    """training_hub 0.11.2's memory_estimator.py, worked by hand for its default model: SFT keeps
    float32 weights, gradients and two AdamW states sharded over the GPUs, one float32 hidden state
    per layer and token, and 8/3 of the float32 logits; bounds x1.0, x1.1, x1.3."""
    path = model_dir(tmp_path, GRANITE_8B)
    params = ModelShape.read(path).num_params
    assert params == 8_170_864_640  # granite-3.3-8b-instruct's published size, 8.17B
    tokens = 32 * 4096 / 8
    subtotal = params * 4 * 4 / 8 + tokens * 4 * 40 * 4096 + tokens * 4 * 49159 * 8 / 3
    low, mid, high = estimate("sft", 8, model_path=path, batch_size=32, max_seq_len=4096, verbose=1)
    assert (low, mid, high) == (int(subtotal), int(1.1 * subtotal), int(1.3 * subtotal))
    assert capsys.readouterr().out.startswith("The proposed training setup should work on 8 GPU(s) of 80.00 GiB")
    # max_tokens_per_gpu caps the tokens a GPU holds
    assert estimate("sft", 8, model_path=path, batch_size=32, max_seq_len=4096, max_tokens_per_gpu=1024,
                    verbose=0)[0] < low


def test_lora_and_qlora_are_training_hubs_arithmetic(tmp_path):
    """LoRA: a float16 base, float32 adapters with float16 gradients and AdamW states, float16
    activations and 2x the float16 logits, of which only the larger of logits and gradients
    counts; bounds x0.95, x1.1, x1.2. QLoRA: a 4-bit base, upper bound x1.3."""
    path = model_dir(tmp_path, GRANITE_8B)
    shape = ModelShape.read(path)
    adapters = shape.lora_params(32, None)
    per_layer = sum(n_in + n_out for n_in, n_out in shape.projections().values())
    assert adapters == 40 * 32 * per_layer
    tokens = 8 * 2048
    logits = tokens * 2 * 49159 * 2
    rest = adapters * 4 + adapters * 2 * 2 + tokens * 2 * 40 * 4096 + max(logits, adapters * 2)
    lora = rest + shape.num_params * 2
    assert estimate("lora", 1, model_path=path, batch_size=8, max_seq_len=2048, verbose=0) == (
        int(0.95 * lora), int(1.1 * lora), int(1.2 * lora))
    qlora = rest + shape.num_params * 0.5
    assert estimate("qlora", 1, model_path=path, batch_size=8, max_seq_len=2048, verbose=0) == (
        int(0.95 * qlora), int(1.1 * qlora), int(1.3 * qlora))


def test_what_estimate_cannot_do_is_refused_by_name(tmp_path):
    path = model_dir(tmp_path, GRANITE_8B)
    with pytest.raises(ValueError, match="training_method 'osft': expected one of sft, lora, qlora"):
        estimate("osft", model_path=path, batch_size=8, max_seq_len=2048, verbose=0)
    with pytest.raises(ValueError, match="batch_size and max_seq_len must be provided"):
        estimate("lora", model_path=path, max_tokens_per_gpu=4096, verbose=0)
    with pytest.raises(CannotEstimate, match=r"config.json is not readable here"):
        estimate("sft", model_path=str(tmp_path / "nowhere"), max_tokens_per_gpu=4096, verbose=0)
    moe = model_dir(tmp_path, {**GRANITE_8B, "num_local_experts": 8})
    with pytest.raises(CannotEstimate, match=r"a mixture-of-experts model \(num_local_experts=8\) is not counted"):
        estimate("sft", model_path=moe, max_tokens_per_gpu=4096, verbose=0)
    with pytest.raises(CannotEstimate, match=r"target_modules \['c_attn'\] are none of this model's projections"):
        ModelShape.from_config(GRANITE_8B).lora_params(8, ["c_attn"])


def parsed(algorithm: str, **values):
    base = {"model_path": "", "data_path": "d.jsonl", "ckpt_output_dir": "/c"}
    return AlgorithmRegistry.get_algorithm(algorithm).params_schema.parse({**base, **values})


def test_each_backend_is_estimated_as_it_holds_the_model(tmp_path):
    """instructlab-training shards over every GPU of the Job (FSDP); the pytorch backend keeps a
    whole copy per GPU (DDP, with its gradient buckets), so more GPUs do not shrink its weights."""
    path = model_dir(tmp_path, GRANITE_8B)
    sft = AlgorithmRegistry.get_algorithm("sft")
    ilab, torch_ddp = (AlgorithmRegistry.get_backend("sft", b) for b in ("instructlab-training", "pytorch"))
    one, sixteen = (parsed("sft", model_path=path, nnodes=n, nproc_per_node=8, max_tokens_per_gpu=4096)
                    for n in (1, 2))
    assert sft.memory_estimate(sixteen, ilab).weights == pytest.approx(sft.memory_estimate(one, ilab).weights / 2)
    ddp = sft.memory_estimate(sixteen, torch_ddp)
    assert ddp.weights == pytest.approx(ddp.num_params * (4 + 2))  # float32 + autocast's bfloat16 copy
    assert ddp.gradients == pytest.approx(ddp.num_params * 4 * 2)
    no_shard = parsed("sft", model_path=path, nproc_per_node=8, fsdp_options={"sharding_strategy": "NO_SHARD"})
    assert sft.memory_estimate(no_shard, ilab).weights == pytest.approx(ddp.num_params * 4)
    offload = parsed("sft", model_path=path, nproc_per_node=8, fsdp_options={"cpu_offload_params": True})
    with pytest.raises(CannotEstimate, match="'instructlab-training' backend does not say"):
        sft.memory_estimate(offload, ilab)
    with pytest.raises(CannotEstimate, match="nproc_per_node='auto' is no number of GPUs"):
        sft.memory_estimate(parsed("sft", model_path=path, nproc_per_node="auto"), ilab)


def test_a_lora_run_counts_its_own_adapters_and_quantization(tmp_path):
    path = model_dir(tmp_path, GRANITE_8B)
    lora = AlgorithmRegistry.get_algorithm("lora_sft")
    backend = AlgorithmRegistry.get_backend("lora_sft", "pytorch")
    shape = ModelShape.read(path)
    two = lora.memory_estimate(parsed("lora_sft", model_path=path, lora_r=8, target_modules=["q_proj", "v_proj"]),
                               backend)
    assert (two.method, two.trained_params) == ("lora", shape.lora_params(8, ["q_proj", "v_proj"]))
    four_bit = lora.memory_estimate(parsed("lora_sft", model_path=path, load_in_4bit=True), backend)
    eight_bit = lora.memory_estimate(parsed("lora_sft", model_path=path, load_in_8bit=True), backend)
    assert four_bit.method == eight_bit.method == "qlora"
    assert eight_bit.weights - four_bit.weights == pytest.approx(shape.num_params * 0.5)


def test_the_layout_lives_where_the_trainer_reads_it():
    """The loss chunks the trainer uses are the ones the estimate caps the logits at."""
    from airflow_provider_training_hub.algorithms.backends import packed
    from airflow_provider_training_hub.algorithms.backends.pytorch_layout import pytorch_layout

    assert pytorch_layout().logits_chunk_bytes == packed.LOGITS_BYTES
    shape = ModelShape.from_config(GRANITE_8B)
    capped = memory_estimate(shape, tokens_per_gpu=100_000, layout=pytorch_layout())
    assert capped.outputs == pytest.approx(packed.LOGITS_BYTES * 8 / 3)


@pytest.mark.parametrize(("value", "size"), [("80Gi", 80 * GIB), ("139Gi", 139 * GIB), (85899345920, 80 * GIB),
                                             ("80G", 80 * 10**9)])
def test_the_connection_takes_gpu_memory_as_a_quantity(value, size):
    assert ConnectionSettings.from_extra({"gpu_memory": value}).gpu_memory_bytes == size


@pytest.mark.parametrize("value", ["80GB", "0", "-1Gi", "lots"])
def test_a_gpu_memory_that_is_no_quantity_is_refused_when_the_connection_is_read(value):
    with pytest.raises(ValueError, match=r"gpu_memory.*must be a positive memory quantity such as '80Gi'"):
        ConnectionSettings.from_extra({"gpu_memory": value})


def test_bounds_are_ordered_and_scale_with_tokens():
    shape = ModelShape.from_config(GRANITE_8B)
    small, large = (memory_estimate(shape, num_gpus=8, tokens_per_gpu=t) for t in (1024, 8192))
    assert small.bounds[0] <= small.bounds[1] <= small.bounds[2]
    assert large.activations == pytest.approx(8 * small.activations)
    assert math.isclose(small.subtotal, small.weights + small.gradients + small.optimizer + small.activations
                        + small.outputs)


SMOLLM2_SHAPE = {"vocab_size": 547, "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
                 "num_key_value_heads": 3, "head_dim": 64, "tie_word_embeddings": True}
NARROW_SHAPE = {"vocab_size": 547, "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4,
                "num_key_value_heads": 2, "head_dim": 64, "tie_word_embeddings": True}


@pytest.mark.parametrize("shape", [SMOLLM2_SHAPE, NARROW_SHAPE], ids=["smollm2-layer", "narrow-layer"])
@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16-autocast"])
def test_the_activations_counted_are_what_autograd_saves_in_the_packed_forward(bf16, shape):
    """The pytorch backend's own forward (packed rows, attention per conversation), in float32 as
    on a CPU and under bfloat16 autocast as on a GPU (run here on the CPU): the bytes autograd
    saves for one decoder layer, its weights excluded but autocast's copies of them included,
    against the layout's count. Measured as the difference between a 1-layer and a 3-layer
    model, so that the embedding, the head and the loss cancel out. Measured: within 1% in
    float32, 2-5% under in bfloat16 autocast."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from airflow_provider_training_hub.algorithms.backends.packed import (
        PackedLabelLoss,
        pack,
        register_packed_attention,
    )
    from airflow_provider_training_hub.algorithms.backends.pytorch_layout import pytorch_layout

    torch.manual_seed(0)
    row = pack([(ids, ids) for ids in torch.randint(0, 547, (4, 128)).tolist()], torch.device("cpu"))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else None
    saved = {}
    for layers in (1, 3):
        config = LlamaConfig(**shape, num_hidden_layers=layers, attn_implementation=register_packed_attention())
        model = LlamaForCausalLM(config)
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        storages: dict[int, int] = {}

        def keep(tensor):
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
            PackedLabelLoss(model, autocast)(row, 1.0)
        saved[layers] = sum(size for ptr, size in storages.items() if ptr not in weights)
    per_layer = (saved[3] - saved[1]) / 2
    counted = ModelShape.from_config({**shape, "num_hidden_layers": 1})
    layout = pytorch_layout(bf16)
    estimated = (len(row.input_ids[0]) * counted.activation_bytes(layout.autocast_bytes)
                 + counted.layer_params * layout.autocast_bytes)
    assert estimated == pytest.approx(per_layer, rel=0.06), (estimated, per_layer)
