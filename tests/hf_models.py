"""Tiny randomly initialised Hugging Face models and a word-level tokenizer, for the hf:/tl: tests.

Each architecture is built from a config here (2 layers, d_model 64, 4 heads,
vocabulary 100), given large enough random weights that attention patterns
are sharp (so a wrong rotary or head layout shows in the logits), and saved
with save_pretrained. Importing this module needs transformers.
"""

from __future__ import annotations

from pathlib import Path

import torch

D_VOCAB = 100
WORDS = ["<bos>", "<unk>"] + [f"w{i}" for i in range(D_VOCAB - 2)]  # token id of "w{i}" is i + 2


def hf_configs() -> dict:
    """name -> transformers config of one tiny architecture variant."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, MistralConfig, Qwen2Config

    small = dict(vocab_size=D_VOCAB, bos_token_id=0, eos_token_id=0)
    rope = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=96,
                max_position_embeddings=64, **small)
    return {
        "gpt2": GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, activation_function="gelu_new", **small),
        "gpt2-untied-layer-scaled": GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, n_inner=80,
                                               activation_function="relu", scale_attn_by_inverse_layer_idx=True,
                                               tie_word_embeddings=False, **small),
        "neox-parallel": GPTNeoXConfig(rotary_pct=0.25, use_parallel_residual=True, **rope),
        "neox-sequential": GPTNeoXConfig(rotary_pct=0.5, use_parallel_residual=False, hidden_act="gelu_new",
                                         **rope),
        "llama-gqa": LlamaConfig(num_key_value_heads=2, **rope),
        "mistral-window": MistralConfig(num_key_value_heads=1, sliding_window=6, **rope),
        "qwen2-tied": Qwen2Config(num_key_value_heads=2, tie_word_embeddings=True, **rope),
    }


def randomize_(model, seed: int) -> None:
    """Matrices ~ N(0, 4 / fan_in) (sharp attention), embeddings ~ N(0, 0.25), norm weights
    1 + N(0, 0.09), biases N(0, 0.09)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1:
                is_norm = "norm" in name or ".ln_" in name or "ln_f" in name
                p.copy_(1.0 + 0.3 * noise if is_norm and name.endswith("weight") else 0.3 * noise)
            else:
                is_embedding = "wte" in name or "embed" in name
                p.copy_(0.5 * noise if is_embedding else noise * 2.0 / p.shape[-1] ** 0.5)


def build(name: str, directory: Path, seed: int = 0, tokenizer: bool = False):
    """Build, randomise and save one architecture variant; returns the HF model (eval, fp32, eager)."""
    from transformers import AutoModelForCausalLM

    config = hf_configs()[name]
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").float().eval()
    randomize_(model, seed)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.save_pretrained(directory)
    if tokenizer:
        save_tokenizer(directory)
    return model


def save_tokenizer(directory: Path) -> None:
    """A whitespace word-level tokenizer over WORDS with BOS <bos> (id 0)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", unk_token="<unk>").save_pretrained(directory)


def word_ids(text: str) -> list[int]:
    """The ids the saved tokenizer must give, computed from WORDS directly."""
    return [WORDS.index(w) for w in text.split()]
