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


def architecture_configs() -> dict:
    """name -> transformers config of the architectures of tests/test_hf_architectures.py: scaled rotary
    (Llama 3.x, linear, dynamic NTK), Qwen3, GPT-J, Phi-3, OLMo-2 and Gemma 1/2/3, each as small as its
    features allow (the rotary base is low, so scaled frequencies differ within a few dozen positions)."""
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        GemmaConfig,
        GPTJConfig,
        LlamaConfig,
        Olmo2Config,
        Phi3Config,
        Qwen3Config,
    )

    small = dict(vocab_size=D_VOCAB, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    rope = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=96,
                max_position_embeddings=64, **small)
    return {
        "llama3-rope": LlamaConfig(num_key_value_heads=2, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}, **rope),
        "llama-linear-rope": LlamaConfig(rope_parameters={"rope_type": "linear", "rope_theta": 500.0, "factor": 4.0},
                                         **rope),
        "llama-dynamic-rope": LlamaConfig(rope_parameters={"rope_type": "dynamic", "rope_theta": 500.0,
                                                           "factor": 3.0},
                                          **{**rope, "max_position_embeddings": 16}),
        "qwen3": Qwen3Config(num_key_value_heads=2, head_dim=16, **rope),
        "gptj": GPTJConfig(n_layer=2, n_embd=64, n_head=4, n_positions=64, rotary_dim=8, n_inner=96,
                           activation_function="gelu_new", **small),
        "phi3-longrope": Phi3Config(num_key_value_heads=2, original_max_position_embeddings=16, sliding_window=10,
                                    rope_parameters={"rope_type": "longrope", "rope_theta": 500.0,
                                                     "partial_rotary_factor": 0.75,
                                                     "short_factor": [1.0, 1.5, 2.0, 3.0, 5.0, 8.0],
                                                     "long_factor": [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]}, **rope),
        "olmo2": Olmo2Config(num_key_value_heads=2, **rope),
        "gemma": GemmaConfig(head_dim=16, num_key_value_heads=1, hidden_act="gelu_pytorch_tanh", **rope),
        "gemma2": Gemma2Config(head_dim=16, num_key_value_heads=2, query_pre_attn_scalar=24, sliding_window=6,
                               attn_logit_softcapping=3.0, final_logit_softcapping=5.0, **rope),
        "gemma3": Gemma3TextConfig(head_dim=16, num_key_value_heads=2, query_pre_attn_scalar=16, sliding_window=6,
                                   layer_types=["sliding_attention", "full_attention"],
                                   rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0,
                                                                       "rope_theta": 1000.0},
                                                    "sliding_attention": {"rope_type": "default",
                                                                          "rope_theta": 50.0}}, **rope),
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

    config = {**hf_configs(), **architecture_configs()}[name]
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").float().eval()
    randomize_(model, seed)
    if config.model_type.startswith("gemma"):  # Gemma applies its norm weights as 1 + w: the same 1 + N(0, 0.09)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.ndim == 1 and "norm" in name:
                    p.sub_(1.0)
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


def reference_scores(att: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """previous_token and induction [layer, head] from attention weights, by their definitions with loops:
    mean A[i, i-1] over i >= 1; mean over queries i whose token occurred before of the attention on the
    positions j <= i whose preceding token t[j-1] equals t[i]."""
    L, B, H, N, _ = att.shape
    prev = torch.zeros(L, H, dtype=torch.float64)
    ind = torch.zeros(L, H, dtype=torch.float64)
    rows = tokens.tolist()
    for l in range(L):
        for h in range(H):
            prev[l, h] = sum(float(att[l, b, h, i, i - 1]) for b in range(B) for i in range(1, N)) / (B * (N - 1))
            total, count = 0.0, 0
            for b in range(B):
                t = rows[b]
                for i in range(N):
                    js = [j for j in range(1, i + 1) if t[j - 1] == t[i]]
                    if js:
                        total += sum(float(att[l, b, h, i, j]) for j in js)
                        count += 1
            ind[l, h] = total / count
    return prev, ind
