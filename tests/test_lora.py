"""lora_sft: the schema, the real peft training on the pytorch backend, the instructlab mapping.

The pytorch tests train for real (torchrun, gloo, the tiny model). The instructlab-training tests
replace only the GPU step (the `fake_gpu` fixture), as tests/test_instructlab_backend.py does.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_provider_training_hub import AlgorithmRegistry, create_algorithm, lora_sft
from airflow_provider_training_hub.algorithms import LoRAParams, SFTParams
from airflow_provider_training_hub.algorithms.backends.instructlab import InstructLabLoRABackend
from airflow_provider_training_hub.algorithms.torchrun import resolve_torchrun
from airflow_provider_training_hub.checkpoints import read_metrics

pytestmark = pytest.mark.library

# runs of a few steps: no warmup (lora_sft's default, 10, would be most of them)
COMMON = {"learning_rate": 5e-3, "max_seq_len": 512, "effective_batch_size": 8, "random_seed": 3, "warmup_steps": 0}
REQUIRED = {"model_path": "/m", "data_path": "/d.jsonl", "ckpt_output_dir": "/ckpt"}


def test_registered_with_training_hub_defaults():
    assert "lora_sft" in AlgorithmRegistry.list_algorithms()
    assert AlgorithmRegistry.default_backend("lora_sft") == "pytorch"
    assert set(AlgorithmRegistry.list_backends("lora_sft")) == {"pytorch", "instructlab-training"}
    p = LoRAParams.parse(REQUIRED)
    # training_hub 0.11.2's lora_sft defaults
    assert (p.lora_r, p.lora_alpha, p.lora_dropout, p.target_modules) == (16, 32, 0.0, None)
    assert (p.load_in_4bit, p.save_steps, p.learning_rate) == (False, 500, 2e-4)
    assert (p.num_epochs, p.warmup_steps, p.weight_decay, p.random_seed, p.save_total_limit) == (3, 10, 0.01, 3407, 3)
    # its name for the seed, and None for "not given", as its functions pass it
    assert LoRAParams.parse({**REQUIRED, "seed": 7, "lora_r": None}).model_dump(include={"random_seed", "lora_r"}) \
        == {"random_seed": 7, "lora_r": 16}
    with pytest.raises(ValueError, match="'seed' and 'random_seed' are one parameter"):
        LoRAParams.parse({**REQUIRED, "random_seed": 7, "seed": 8})


def test_unsloth_runs_the_pytorch_backend_and_says_so(caplog):
    """training_hub's default lora_sft backend; a ported script names it."""
    algorithm = create_algorithm("lora_sft", "unsloth")
    assert algorithm.backend.name == "pytorch"
    assert "running the 'pytorch' backend instead" in caplog.text and "learns every token" in caplog.text
    assert "unsloth" not in AlgorithmRegistry.list_backends("lora_sft")  # an alias, not a backend


def test_the_schema_reuses_every_sft_field():
    sft_fields, lora_fields = SFTParams.model_fields, LoRAParams.model_fields
    assert list(lora_fields)[: len(sft_fields)] == list(sft_fields)
    own_defaults = {"num_epochs", "learning_rate", "warmup_steps", "weight_decay", "random_seed", "save_total_limit"}
    for name, field in sft_fields.items():
        if name in own_defaults:
            assert lora_fields[name].metadata == field.metadata, name  # same bounds
        else:
            assert lora_fields[name] is field or repr(lora_fields[name]) == repr(field), name
    optional = create_algorithm("lora_sft", "pytorch").get_optional_params()
    assert {"lora_r", "lora_alpha", "lora_dropout", "target_modules", "load_in_4bit", "save_steps",
            "merge_adapter", "weight_decay", "nnodes"} <= set(optional)


@pytest.mark.parametrize(("override", "message"), [
    ({"lora_r": 0}, r"'lora_r': must be at least 1 \(got 0\)"),
    ({"lora_dropout": 1.0}, r"'lora_dropout': must be less than 1 \(got 1.0\)"),
    ({"target_modules": "q_proj"}, r"'target_modules': must be a list \(got 'q_proj'\)"),
    ({"lora_rank": 8}, r"Unknown parameter 'lora_rank'\. Did you mean 'lora_r'\?"),
])
def test_bad_values_are_named(override, message):
    with pytest.raises(ValueError, match=message):
        LoRAParams.parse({**REQUIRED, **override})


def test_quantization_choices_are_checked_before_any_work(tiny_model, sample_data, tmp_path, fake_gpu):
    """4-bit (QLoRA) and 8-bit need CUDA and bitsandbytes (this machine has neither; QLoRA on CUDA
    is benchmarks/gpu/'s); one at a time; and instructlab-training's LoRA quantizes to NF4 only
    (GPU REPLACED: its CUDA check, as fake_gpu)."""
    paths = (str(tiny_model), str(sample_data), str(tmp_path / "c"))
    for name in ("load_in_4bit", "load_in_8bit"):
        with pytest.raises(ValueError, match=rf"{name} needs a CUDA GPU and this machine has none"):
            lora_sft(*paths, **{name: True})
    with pytest.raises(ValueError, match=r"load_in_4bit and load_in_8bit are both set"):
        lora_sft(*paths, load_in_4bit=True, load_in_8bit=True)
    with pytest.raises(ValueError, match=r"instructlab-training quantizes a LoRA run's base model to 4-bit NF4 only"):
        lora_sft(*paths, backend="instructlab-training", load_in_8bit=True)
    assert not (tmp_path / "c").exists()


def _logits(model_dir, prompt_ids):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=prompt_ids).logits


@pytest.mark.slow
def test_pytorch_trains_an_adapter_that_loads_and_merges(tiny_model, sample_data, tmp_path):
    import torch
    from transformers import AutoTokenizer

    result = lora_sft(str(tiny_model), str(sample_data), str(tmp_path / "ckpt"), num_epochs=3, save_steps=5, checkpoint_at_epoch=False,
                      merge_adapter=True, lora_r=8, **COMMON)
    # The random tiny model learns slowly through rank-8 adapters: 6.25 -> 5.97 here (SmolLM2 learning a
    # fact is the sft_demo command of docs/getting-started.md); a frozen or unchanged adapter stays at 6.25.
    assert result.adapter and result.metrics["loss"] < 0.97 * result.metrics["first_loss"], result.metrics
    names = [Path(c).name for c in result.checkpoints]
    # every 5 steps, and the end; samples_40 went when the 4th came (save_total_limit: training_hub's 3)
    assert names == ["samples_80", "samples_120", "samples_144"]
    newest = Path(result.checkpoint)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in newest.iterdir()}
    assert json.loads((newest / "adapter_config.json").read_text())["r"] == 8
    # the merged model only in the final checkpoint
    assert result.merged_checkpoint == str(newest / "merged")
    assert [c for c in result.checkpoints if Path(c, "merged").exists()] == [result.checkpoint]
    from safetensors import safe_open

    with safe_open(newest / "adapter_model.safetensors", "pt") as adapter:
        tensors = list(adapter.keys())
    assert tensors and all(".lora_A." in n or ".lora_B." in n for n in tensors), tensors[:5]  # no base weight

    ids = AutoTokenizer.from_pretrained(result.checkpoint)("Who is the Training Hub mascot?", return_tensors="pt").input_ids
    adapted, merged, base = (_logits(d, ids) for d in (result.checkpoint, result.merged_checkpoint, tiny_model))
    assert torch.allclose(adapted, merged, atol=1e-4)  # transformers applies the adapter it finds
    assert not torch.allclose(adapted, base, atol=1e-3)  # and the adapter changed the model

    for model_dir in (result.checkpoint, result.merged_checkpoint):
        out = subprocess.run([str(Path(sys.executable).parent / "training-hub"), "generate", model_dir,
                              "Who is the Training Hub mascot?", "--json"], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 and len(json.loads(out.stdout.strip().splitlines()[-1])) == 1, out.stderr[-2000:]


@pytest.mark.slow
def test_target_modules_choose_what_is_adapted(tiny_model, sample_data, tmp_path):
    result = lora_sft(str(tiny_model), str(sample_data), str(tmp_path / "ckpt"), num_epochs=1,
                      target_modules=["q_proj", "v_proj"], **COMMON)
    config = json.loads(Path(result.checkpoint, "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert config["base_model_name_or_path"] == str(Path(tiny_model).resolve())


@pytest.mark.slow
def test_a_killed_run_resumes_the_adapter_from_its_full_state(tiny_model, sample_data, tmp_path):
    ckpt = tmp_path / "ckpt"
    # The run holds after its first epoch's full state (a callback), so the kill lands there even
    # when this test reads the log late (CI's loaded cores: the second epoch had ended before it).
    command = [str(Path(sys.executable).parent / "training-hub"), "lora_sft", "--model-path", str(tiny_model),
               "--data-path", str(sample_data), "--ckpt-output-dir", str(ckpt), "--num-epochs", "2",
               "--effective-batch-size", "4", "--learning-rate", "5e-3", "--max-seq-len", "512", "--save-steps", "0",
               "--callbacks", '["support.callback_probe:HoldAfterFirstEpoch"]']
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                                     os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=env)
    for line in proc.stdout:
        if "saved full state" in line and "epoch_0" in line:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    state = Path(ckpt, "full_state", "epoch_0", "state.pt")
    import torch

    saved = torch.load(state, weights_only=False)["model"]
    assert saved and all("lora_" in name for name in saved)  # the adapters only, not the frozen model

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "full_state/epoch_0: epoch 1, step 12, samples 48" in rerun.stdout
    assert "epoch 1 step 13/24" in rerun.stdout and "epoch 0 step" not in rerun.stdout
    assert [r["step"] for r in read_metrics(ckpt)][-1] == 24


# --- instructlab-training (GPU replaced) --------------------------------------------------------


def test_instructlab_mapping_onto_lora_options():
    from instructlab.training import LoraOptions

    params = LoRAParams.parse({**REQUIRED, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
                               "target_modules": ["q_proj", "v_proj"], "load_in_4bit": True, "save_steps": 10,
                               "effective_batch_size": 64})
    _, train_args = InstructLabLoRABackend().build_args(params, resolve_torchrun(params, "gpu", env={}))
    assert train_args.lora == LoraOptions(rank=8, alpha=16, dropout=0.05, target_modules=["q_proj", "v_proj"],
                                          quantize_data_type="nf4")
    assert train_args.save_samples == 640  # 10 steps of 64 samples
    defaults = LoRAParams.parse(REQUIRED)
    _, train_args = InstructLabLoRABackend().build_args(defaults, resolve_torchrun(defaults, "gpu", env={}))
    assert (train_args.lora.rank, train_args.lora.alpha, train_args.lora.dropout) == (16, 32, 0.0)
    assert train_args.lora.target_modules is None and train_args.lora.quantize_data_type is None


def test_instructlab_lora_reaches_main_ds(fake_gpu, tiny_model, sample_data, tmp_path):
    import torch

    """Upstream's own LoRA model setup runs on the tiny model, as far as the GPU (the ``fake_gpu``
    stand-in runs main_ds.py up to its Accelerator), and its own LoRA save writes the checkpoint.
    Both fail on instructlab-training 0.16.2 without the rank processes' site (``instructlab_site``):
    ``prepare_peft_model`` imports from trl what trl 1.x no longer has, and ``save_fsdp_lora_model``
    reads an ``args.lora_config`` that main_ds.py never sets."""
    ckpt = tmp_path / "c"
    result = lora_sft(str(tiny_model), str(sample_data), str(ckpt), backend="instructlab-training",
                      lora_r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    argv = json.loads((ckpt / "torchrun_argv.json").read_text())
    for expected in ("--lora_r=4", "--lora_alpha=8", "--lora_dropout=0.0", "--learning_rate=0.0002"):
        assert expected in argv
    modules_at = argv.index("--lora_target_modules") + 1
    assert argv[modules_at : modules_at + 2] == ["q_proj", "v_proj"]
    setup = json.loads((ckpt / "main_ds_setup.json").read_text())
    assert setup["lora"] == {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    assert setup["model_class"] == "PeftModelForCausalLM"  # what upstream's get_peft_model made of the Llama
    # Only the adapters train: per layer, r x (in + out) for q_proj and v_proj of the tiny Llama.
    assert 0 < setup["trainable_parameters"] < setup["parameters"] / 10
    assert setup["samples"] == sum(1 for _ in sample_data.open())
    assert "--accelerate_full_state_at_epoch" not in argv and not result.full_state  # the default, turned off
    # The checkpoint is upstream's own LoRA save (of the FSDP-wrapped model): the merged model, which loads.
    assert not result.adapter and Path(result.checkpoint, "model.safetensors").is_file()
    _logits(result.checkpoint, torch.tensor([[1, 2, 3]]))


@pytest.mark.parametrize(("override", "message"), [
    ({"merge_adapter": False}, r"merge_adapter=False: instructlab-training saves LoRA checkpoints merged"),
    ({"accelerate_full_state_at_epoch": True}, r"instructlab-training cannot save the full state of a LoRA run"),
])
def test_instructlab_refuses_what_upstream_cannot_do(fake_gpu, tiny_model, sample_data, tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        lora_sft(str(tiny_model), str(sample_data), str(tmp_path / "c"), backend="instructlab-training", **override)
    assert not (tmp_path / "c" / "data").exists()
