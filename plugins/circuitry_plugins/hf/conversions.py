"""Hugging Face weights -> canonical `ModelConfig` + TransformerLens-style state dict.

One conversion per architecture (the `model_type` of a Hugging Face
config.json): GPT-2, GPT-NeoX (Pythia), Llama, Mistral and Qwen2. A
conversion reads the config object and the named parameters of the loaded
Hugging Face model; it imports nothing from transformers, so it can be tested
and reused on its own. Every parameter must be used: a leftover weight means
the architecture has a feature the conversion does not know, and loading
fails instead of silently dropping it.

Layouts (row-vector convention, `x @ W`): per head W_Q [head, d_model, d_head],
W_K / W_V [kv_head, d_model, d_head], W_O [head, d_head, d_model]; MLP W_in /
W_gate [d_model, d_mlp], W_out [d_mlp, d_model]; W_U [d_model, d_vocab].
Norm weights are copied as they are (not folded).

Other plugins add architectures with `register_conversion("my_type", fn)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from circuitry.errors import ModelLoadError
from circuitry.model import ModelConfig
from circuitry.model.config import ROPE_KINDS, RopeScaling, finite_number, show

Converted = tuple[ModelConfig, dict[str, torch.Tensor]]
Conversion = Callable[[Any, Mapping[str, torch.Tensor]], Converted]

CONVERSIONS: dict[str, Conversion] = {}

# Hugging Face activation names -> ModelConfig.act_fn (the tanh forms are one formula)
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_new",
    "gelu_pytorch_tanh": "gelu_new",
    "gelu_fast": "gelu_new",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


# config.json fields checked before transformers reads them (any architecture that uses the name)
HF_SIZES = ("n_layer", "n_embd", "n_head", "n_positions", "n_ctx", "vocab_size", "num_hidden_layers", "hidden_size",
            "num_attention_heads", "max_position_embeddings", "intermediate_size")
HF_OPTIONAL_SIZES = ("n_inner", "num_key_value_heads", "head_dim", "sliding_window")
HF_POSITIVE_NUMBERS = ("layer_norm_epsilon", "layer_norm_eps", "rms_norm_eps", "rope_theta", "rotary_emb_base")
HF_FRACTIONS = ("rotary_pct", "partial_rotary_factor")
HF_FLAGS = ("tie_word_embeddings", "use_parallel_residual", "scale_attn_weights", "scale_attn_by_inverse_layer_idx",
            "attention_bias", "mlp_bias", "use_sliding_window")
LLAMA_LIKE = ("llama", "mistral", "qwen2")
# model types whose blocks route tokens to experts: refused with that reason
MIXTURE_OF_EXPERTS = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "phimoe", "granitemoe", "deepseek_v2",
                      "deepseek_v3", "dbrx", "jamba", "jetmoe", "gpt_oss", "llama4", "llama4_text", "minimax",
                      "qwen3_next", "flex_olmo")
# the newer architectures (architectures.py): their shape is planned like the Llama family's
DECODERS = ("qwen3", "phi3", "olmo2", "gemma", "gemma2", "gemma3_text", "gptj")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2**63


def raw_config_problem(raw: Mapping[str, Any]) -> str | None:
    """The first field of a config.json whose value has the wrong type or range, or None."""
    for key in HF_SIZES:
        if key in raw and not _int(raw[key]):
            return f"{key} must be a positive integer, got {show(raw[key])}"
    for key in HF_OPTIONAL_SIZES:
        if raw.get(key) is not None and not _int(raw[key]):
            return f"{key} must be a positive integer or null, got {show(raw[key])}"
    for key in HF_POSITIVE_NUMBERS:
        if key in raw and not (finite_number(raw[key]) and raw[key] > 0):
            return f"{key} must be a finite number > 0, got {show(raw[key])}"
    for key in HF_FRACTIONS:
        if raw.get(key) is not None and not (finite_number(raw[key]) and 0 < raw[key] <= 1):
            return f"{key} must be a number in (0, 1], got {show(raw[key])}"
    for key in HF_FLAGS:
        if raw.get(key) is not None and not isinstance(raw[key], bool):
            return f"{key} must be true or false, got {show(raw[key])}"
    return None


def planned_config(model_type: str, config: Any) -> ModelConfig | None:
    """The shape of the model a built-in conversion will produce, from the Hugging Face config
    alone (before any weight is read): checks sizes and divisibility, and gives the memory
    estimate. None for architectures added by plugins."""
    if model_type not in ("gpt2", "gpt_neox", *LLAMA_LIKE, *DECODERS):
        return None
    llama_like = model_type in LLAMA_LIKE or (model_type in DECODERS and model_type != "gptj")
    d, H = cfg_get(config, "hidden_size"), cfg_get(config, "num_attention_heads")
    for name, v in (("hidden_size", d), ("num_attention_heads", H)):
        if not _int(v):
            raise ModelLoadError(f"{name} must be a positive integer, got {show(v)}")
    dh = cfg_get(config, "head_dim") if llama_like else None
    if dh is None:
        if d % H:
            raise ModelLoadError(f"hidden size {d} is not a multiple of the number of heads {H}")
        dh = d // H
    rotary = model_type != "gpt2"
    # the newer decoders' rotary settings (per layer type, GPT-J's rotary_dim) are read by their conversions
    rotary_dim, base = rope(config, dh, model_type, 0.25 if model_type == "gpt_neox" else 1.0) \
        if rotary and model_type not in DECODERS else (None, 10000.0)
    scaling = rope_scaling(config, rotary_dim, model_type) if rotary_dim else None
    d_mlp = cfg_get(config, "n_inner") or 4 * d if model_type in ("gpt2", "gptj") \
        else cfg_get(config, "intermediate_size")
    kv = cfg_get(config, "num_key_value_heads") if llama_like else None
    return ModelConfig(
        n_layers=cfg_get(config, "num_hidden_layers"), d_model=d, n_heads=H, d_head=dh,
        d_vocab=cfg_get(config, "vocab_size"), n_ctx=cfg_get(config, "max_position_embeddings"), d_mlp=d_mlp,
        gated_mlp=llama_like, normalization="RMS" if llama_like else "LN",
        positional="rotary" if rotary else "learned", rotary_dim=rotary_dim, rotary_base=base,
        rope_scaling=scaling, n_kv_heads=kv or None,
        tied_embeddings=bool(cfg_get(config, "tie_word_embeddings", model_type == "gpt2")),
    )


def register_conversion(model_type: str, fn: Conversion | None = None):
    """Register a conversion for a Hugging Face `model_type` (usable as a decorator)."""

    def add(f: Conversion) -> Conversion:
        if model_type in CONVERSIONS and CONVERSIONS[model_type] is not f:
            raise ModelLoadError(f"a Hugging Face conversion for model_type {model_type!r} is already registered")
        CONVERSIONS[model_type] = f
        return f

    return add(fn) if fn is not None else add


def supported() -> list[str]:
    return sorted(CONVERSIONS)


def convert(model_type: str, config: Any, params: Mapping[str, torch.Tensor]) -> Converted:
    if model_type in MIXTURE_OF_EXPERTS and model_type not in CONVERSIONS:
        raise ModelLoadError(f"unsupported Hugging Face architecture {model_type!r}: a mixture-of-experts model "
                             f"(each token is routed to a few of several MLPs); the canonical model has one dense "
                             f"MLP per block, so it cannot represent it exactly")
    if model_type not in CONVERSIONS:
        raise ModelLoadError(f"unsupported Hugging Face architecture {model_type!r}; supported: "
                             f"{', '.join(supported())} (a plugin can add one, see docs/models.md)")
    return CONVERSIONS[model_type](config, params)


# --------------------------------------------------------------------------- helpers
def cfg_get(config: Any, name: str, default: Any = None) -> Any:
    """An attribute of a config object (or a key of a dict), with a default."""
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


class Weights:
    """The named parameters of a Hugging Face model (a loaded model's, or a checkpoint read lazily);
    `take` marks a tensor used and gives it in `dtype`: the dtype the model is built in, float32
    unless the mapping says otherwise (its `dtype` attribute)."""

    def __init__(self, params: Mapping[str, torch.Tensor], arch: str) -> None:
        self.params = params
        self.dtype: torch.dtype = getattr(params, "dtype", None) or torch.float32
        self.arch = arch
        self.used: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.params

    def take(self, key: str) -> torch.Tensor:
        if key not in self.params:
            raise ModelLoadError(f"{self.arch} checkpoint: missing weight {key!r}")
        self.used.add(key)
        return self.params[key].detach().to(self.dtype)

    def maybe(self, key: str) -> torch.Tensor | None:
        return self.take(key) if key in self.params else None

    def check_all_used(self) -> None:
        left = sorted(set(self.params) - self.used)
        if left:
            raise ModelLoadError(f"{self.arch} checkpoint has weights the conversion does not know: "
                                 f"{', '.join(left[:4])}{' ...' if len(left) > 4 else ''} "
                                 f"(an unsupported variant of the architecture)")


def activation(config: Any, key: str, arch: str) -> str:
    name = cfg_get(config, key)
    if name not in HF_ACTIVATIONS:
        raise ModelLoadError(f"{arch}: activation {name!r} is not supported; supported: "
                             f"{', '.join(sorted(HF_ACTIVATIONS))}")
    return HF_ACTIVATIONS[name]


def rope_parameters(config: Any, arch: str, layer_type: str | None = None) -> dict[str, Any]:
    """The rotary settings of a config of transformers 4.x (rope_scaling) or 5.x (rope_parameters, nested by
    layer type for Gemma 3: `layer_type` picks one) as one flat mapping (kind under "rope_type")."""
    params = cfg_get(config, "rope_parameters") or {}
    scaling = cfg_get(config, "rope_scaling") or {}
    if layer_type is not None and isinstance(params, Mapping) and isinstance(params.get(layer_type), Mapping):
        params = params[layer_type]
    if not isinstance(params, Mapping) or not isinstance(scaling, Mapping):
        raise ModelLoadError(f"{arch}: unreadable rotary settings (rope_parameters={params!r})")
    merged = {**scaling, **params}
    merged["rope_type"] = params.get("rope_type") or params.get("type") or scaling.get("rope_type") \
        or scaling.get("type") or "default"
    return merged


def rope_scaling(config: Any, rotary_dim: int, arch: str, layer_type: str | None = None) -> RopeScaling | None:
    """The scaling of the rotary positions (None: unscaled), with the parameters transformers would use:
    `linear`, `dynamic` (dynamic NTK against max_position_embeddings), `llama3` and `longrope` (Phi-3; the
    attention factor transformers derives from max_position_embeddings / original_max_position_embeddings
    when the config has none). Other kinds (yarn, ...) are refused."""
    params = rope_parameters(config, arch, layer_type)
    kind = params["rope_type"]
    if kind == "default":
        return None
    if kind not in ROPE_KINDS:
        raise ModelLoadError(f"{arch}: rotary scaling {kind!r} is not supported (supported: default, "
                             f"{', '.join(ROPE_KINDS)})")
    max_pos = cfg_get(config, "max_position_embeddings")
    original = cfg_get(config, "original_max_position_embeddings") or params.get("original_max_position_embeddings") \
        or max_pos

    def number(key: str, default: Any = None) -> float:
        v = params.get(key, default)
        if not (finite_number(v) and v > 0):
            raise ModelLoadError(f"{arch}: rotary scaling {kind!r} needs {key} > 0, got {show(v)}")
        return float(v)

    if not _int(original):
        raise ModelLoadError(f"{arch}: rotary scaling {kind!r} needs original_max_position_embeddings, "
                             f"got {show(original)}")
    if kind == "linear":
        scaling = RopeScaling("linear", factor=number("factor"))
    elif kind == "dynamic":  # transformers scales against max_position_embeddings, not the original context
        scaling = RopeScaling("dynamic", factor=number("factor"), original_context=max_pos)
    elif kind == "llama3":
        scaling = RopeScaling("llama3", factor=number("factor"), original_context=original,
                              low_freq_factor=number("low_freq_factor"), high_freq_factor=number("high_freq_factor"))
    else:  # longrope
        factor = params.get("factor") or max_pos / original
        attention = params.get("attention_factor")
        if attention is None:
            attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
        factors: list[tuple[float, ...]] = []
        for key in ("long_factor", "short_factor"):
            v = params.get(key)
            if not (isinstance(v, (list, tuple)) and all(finite_number(x) and x > 0 for x in v)):
                raise ModelLoadError(f"{arch}: longrope needs {key} (a list of numbers > 0), got {show(v)}")
            factors.append(tuple(float(x) for x in v))
        scaling = RopeScaling("longrope", factor=float(factor), original_context=original,
                              attention_factor=float(attention), long_factor=factors[0], short_factor=factors[1])
    problem = scaling.problem(rotary_dim)
    if problem:
        raise ModelLoadError(f"{arch}: {problem}")
    return scaling


def rope(config: Any, d_head: int, arch: str, default_fraction: float = 1.0,
         layer_type: str | None = None) -> tuple[int, float]:
    """(rotary_dim, rotary_base) from a config of transformers 4.x (rope_theta, rotary_pct,
    rope_scaling) or 5.x (rope_parameters); the scaling comes from `rope_scaling`."""
    params = rope_parameters(config, arch, layer_type)
    kind = params["rope_type"]
    if kind != "default" and kind not in ROPE_KINDS:
        raise ModelLoadError(f"{arch}: rotary scaling {kind!r} is not supported (supported: default, "
                             f"{', '.join(ROPE_KINDS)})")
    base = params.get("rope_theta")
    for legacy in ("rope_theta", "rotary_emb_base"):
        if base is None:
            base = cfg_get(config, legacy)
    fraction = params.get("partial_rotary_factor")
    for legacy in ("partial_rotary_factor", "rotary_pct"):
        if fraction is None:
            fraction = cfg_get(config, legacy)
    if fraction is None:
        fraction = default_fraction
    if not (finite_number(fraction) and 0 < fraction <= 1):
        raise ModelLoadError(f"{arch}: the rotary fraction must be a number in (0, 1], got {show(fraction)}")
    if base is not None and not (finite_number(base) and base > 0):
        raise ModelLoadError(f"{arch}: the rotary base must be a finite number > 0, got {show(base)}")
    rotary_dim = int(d_head * fraction)
    if rotary_dim <= 0 or rotary_dim % 2:
        raise ModelLoadError(f"{arch}: rotary dimension {rotary_dim} (d_head {d_head} x {fraction}) must be "
                             f"even and positive")
    return rotary_dim, float(10000.0 if base is None else base)


def tied(config: Any, W_E: torch.Tensor, lm_head: torch.Tensor, default: bool) -> bool:
    """True when the unembedding is the embedding (config says so and the tensors agree)."""
    return bool(cfg_get(config, "tie_word_embeddings", default)) and lm_head.shape == W_E.shape \
        and torch.equal(lm_head, W_E)


def bos_id(config: Any, d_vocab: int) -> int | None:
    bos = cfg_get(config, "bos_token_id")
    return bos if isinstance(bos, int) and 0 <= bos < d_vocab else None


def _heads_in(w: torch.Tensor, n: int, d_head: int) -> torch.Tensor:
    """A [n*d_head, d_model] nn.Linear weight -> [n, d_model, d_head]."""
    return w.reshape(n, d_head, w.shape[-1]).transpose(1, 2).contiguous()


def _heads_out(w: torch.Tensor, n: int, d_head: int) -> torch.Tensor:
    """A [d_model, n*d_head] nn.Linear weight -> W_O [n, d_head, d_model]."""
    return w.T.reshape(n, d_head, w.shape[0]).contiguous()


def _put(state: dict[str, torch.Tensor], key: str, value: torch.Tensor | None) -> None:
    """Store an optional tensor (a bias the checkpoint may not have); the model config
    then asks for it in every layer or none, and loading reports any mismatch."""
    if value is not None:
        state[key] = value


def _unembed(w: Weights, state: dict[str, torch.Tensor], config: Any, lm_keys: tuple[str, ...],
             default_tied: bool) -> bool:
    """W_U from the first of lm_keys present (the name of the head differs across versions)."""
    W_E = state["embed.W_E"]
    present = [k for k in lm_keys if w.has(k)]
    if not present and cfg_get(config, "tie_word_embeddings", default_tied):
        return True  # a tied head is not saved
    if not present:
        raise ModelLoadError(f"{w.arch} checkpoint: missing weight {lm_keys[0]!r} (a base model without its "
                             f"language-model head?)")
    lm = w.take(present[0])
    is_tied = tied(config, W_E, lm, default_tied)
    if not is_tied:
        state["unembed.W_U"] = lm.T.contiguous()
    return is_tied


# --------------------------------------------------------------------------- GPT-2
@register_conversion("gpt2")
def convert_gpt2(config: Any, params: Mapping[str, torch.Tensor]) -> Converted:
    """GPT-2: Conv1D weights ([in, out], so no transpose), c_attn = [q | k | v] along the
    output axis, LayerNorm, learned positions, usually tied W_U."""
    w = Weights(params, "gpt2")
    d, H, L = cfg_get(config, "n_embd"), cfg_get(config, "n_head"), cfg_get(config, "n_layer")
    dh = d // H
    d_mlp = cfg_get(config, "n_inner") or 4 * d
    scale_weights = cfg_get(config, "scale_attn_weights", True)
    inverse_layer = bool(cfg_get(config, "scale_attn_by_inverse_layer_idx", False))
    state: dict[str, torch.Tensor] = {
        "embed.W_E": w.take("transformer.wte.weight"),
        "pos_embed.W_pos": w.take("transformer.wpe.weight"),
    }
    for l in range(L):
        p, o = f"transformer.h.{l}.", f"blocks.{l}."
        state[o + "ln1.w"], state[o + "ln1.b"] = w.take(p + "ln_1.weight"), w.take(p + "ln_1.bias")
        state[o + "ln2.w"], state[o + "ln2.b"] = w.take(p + "ln_2.weight"), w.take(p + "ln_2.bias")
        W = w.take(p + "attn.c_attn.weight")  # [d_model, 3 * d_model]
        b = w.take(p + "attn.c_attn.bias")  # [3 * d_model]
        # the per-layer factor 1/(l+1) of scale_attn_by_inverse_layer_idx is folded into W_Q, b_Q
        q_factor = 1.0 / (l + 1) if inverse_layer else 1.0
        for i, m in enumerate("QKV"):
            Wm = W[:, i * d:(i + 1) * d].reshape(d, H, dh).permute(1, 0, 2)  # [head, d_model, d_head]
            bm = b[i * d:(i + 1) * d].reshape(H, dh)
            if m == "Q":
                Wm, bm = Wm * q_factor, bm * q_factor
            state[o + f"attn.W_{m}"], state[o + f"attn.b_{m}"] = Wm.contiguous(), bm.contiguous()
        state[o + "attn.W_O"] = w.take(p + "attn.c_proj.weight").reshape(H, dh, d).contiguous()
        state[o + "attn.b_O"] = w.take(p + "attn.c_proj.bias")
        state[o + "mlp.W_in"], state[o + "mlp.b_in"] = w.take(p + "mlp.c_fc.weight"), w.take(p + "mlp.c_fc.bias")
        state[o + "mlp.W_out"], state[o + "mlp.b_out"] = (w.take(p + "mlp.c_proj.weight"),
                                                          w.take(p + "mlp.c_proj.bias"))
    state["ln_final.w"], state["ln_final.b"] = w.take("transformer.ln_f.weight"), w.take("transformer.ln_f.bias")
    is_tied = _unembed(w, state, config, ("lm_head.weight",), True)
    w.check_all_used()
    d_vocab = state["embed.W_E"].shape[0]
    cfg = ModelConfig(
        n_layers=L, d_model=d, n_heads=H, d_head=dh, d_vocab=d_vocab,
        n_ctx=cfg_get(config, "n_positions"), d_mlp=d_mlp, act_fn=activation(config, "activation_function", "gpt2"),
        normalization="LN", norm_eps=float(cfg_get(config, "layer_norm_epsilon", 1e-5)), positional="learned",
        attn_bias=True, attn_out_bias=True, mlp_bias=True, tied_embeddings=is_tied,
        attn_scale=None if scale_weights else 1.0, bos_token_id=bos_id(config, d_vocab),
        name=str(cfg_get(config, "_name_or_path", "") or "gpt2"),
    )
    return cfg, state


# --------------------------------------------------------------------------- GPT-NeoX
@register_conversion("gpt_neox")
def convert_gpt_neox(config: Any, params: Mapping[str, torch.Tensor]) -> Converted:
    """GPT-NeoX / Pythia: query_key_value is interleaved per head ([head, (q, k, v), d_head]
    along the output axis), partial rotary on the first rotary_pct of each head (rotate-half),
    parallel attention + MLP unless use_parallel_residual is False, untied W_U (embed_out)."""
    w = Weights(params, "gpt_neox")
    d, H = cfg_get(config, "hidden_size"), cfg_get(config, "num_attention_heads")
    L = cfg_get(config, "num_hidden_layers")
    dh = d // H
    rotary_dim, base = rope(config, dh, "gpt_neox", default_fraction=0.25)
    state: dict[str, torch.Tensor] = {"embed.W_E": w.take("gpt_neox.embed_in.weight")}
    for l in range(L):
        p, o = f"gpt_neox.layers.{l}.", f"blocks.{l}."
        state[o + "ln1.w"], state[o + "ln1.b"] = (w.take(p + "input_layernorm.weight"),
                                                  w.take(p + "input_layernorm.bias"))
        state[o + "ln2.w"], state[o + "ln2.b"] = (w.take(p + "post_attention_layernorm.weight"),
                                                  w.take(p + "post_attention_layernorm.bias"))
        W = w.take(p + "attention.query_key_value.weight").reshape(H, 3, dh, d)  # [head, qkv, d_head, d_model]
        b = w.maybe(p + "attention.query_key_value.bias")
        for i, m in enumerate("QKV"):
            state[o + f"attn.W_{m}"] = W[:, i].transpose(1, 2).contiguous()  # [head, d_model, d_head]
            if b is not None:
                state[o + f"attn.b_{m}"] = b.reshape(H, 3, dh)[:, i].contiguous()
        state[o + "attn.W_O"] = _heads_out(w.take(p + "attention.dense.weight"), H, dh)
        _put(state, o + "attn.b_O", w.maybe(p + "attention.dense.bias"))
        state[o + "mlp.W_in"] = w.take(p + "mlp.dense_h_to_4h.weight").T.contiguous()
        state[o + "mlp.W_out"] = w.take(p + "mlp.dense_4h_to_h.weight").T.contiguous()
        _put(state, o + "mlp.b_in", w.maybe(p + "mlp.dense_h_to_4h.bias"))
        _put(state, o + "mlp.b_out", w.maybe(p + "mlp.dense_4h_to_h.bias"))
    state["ln_final.w"] = w.take("gpt_neox.final_layer_norm.weight")
    state["ln_final.b"] = w.take("gpt_neox.final_layer_norm.bias")
    is_tied = _unembed(w, state, config, ("embed_out.weight", "lm_head.weight"), False)
    w.check_all_used()
    d_vocab = state["embed.W_E"].shape[0]
    cfg = ModelConfig(
        n_layers=L, d_model=d, n_heads=H, d_head=dh, d_vocab=d_vocab,
        n_ctx=cfg_get(config, "max_position_embeddings"), d_mlp=state["blocks.0.mlp.W_in"].shape[1] if L else 4 * d,
        act_fn=activation(config, "hidden_act", "gpt_neox"), normalization="LN",
        norm_eps=float(cfg_get(config, "layer_norm_eps", 1e-5)), positional="rotary",
        rotary_dim=rotary_dim, rotary_base=base, rope_scaling=rope_scaling(config, rotary_dim, "gpt_neox"),
        parallel_attn_mlp=bool(cfg_get(config, "use_parallel_residual", True)),
        attn_bias="blocks.0.attn.b_Q" in state, attn_out_bias="blocks.0.attn.b_O" in state,
        mlp_bias="blocks.0.mlp.b_in" in state, tied_embeddings=is_tied, bos_token_id=bos_id(config, d_vocab),
        name=str(cfg_get(config, "_name_or_path", "") or "gpt_neox"),
    )
    return cfg, state


# --------------------------------------------------------------------------- Llama family
def _sliding_window(config: Any, arch: str, n_layers: int) -> int | None:
    """The attention window shared by every layer, or None (full causal attention)."""
    window = cfg_get(config, "sliding_window")
    layer_types = cfg_get(config, "layer_types")
    if window is not None and not _int(window):
        raise ModelLoadError(f"{arch}: sliding_window must be a positive integer or null, got {show(window)}")
    if layer_types is not None and not (isinstance(layer_types, (list, tuple))
                                        and all(isinstance(t, str) for t in layer_types)):
        raise ModelLoadError(f"{arch}: layer_types must be a list of names, got {show(layer_types)}")
    if arch == "qwen2":
        if layer_types is None:  # transformers 4.x: the window depends on use_sliding_window
            layer_types = ["sliding_attention" if cfg_get(config, "use_sliding_window", False)
                           else "full_attention"] * n_layers
        kinds = set(layer_types)
        if kinds == {"full_attention"}:
            return None
        if kinds != {"sliding_attention"}:
            raise ModelLoadError(f"{arch}: sliding-window attention in some layers only is not supported")
    elif layer_types is not None and set(layer_types) != {"sliding_attention" if window else "full_attention"}:
        raise ModelLoadError(f"{arch}: per-layer attention types {sorted(set(layer_types))} are not supported")
    if window is None:
        return None
    max_pos = cfg_get(config, "max_position_embeddings")
    return None if max_pos is not None and window >= max_pos else int(window)


def _convert_llama_like(config: Any, params: Mapping[str, torch.Tensor], arch: str) -> Converted:
    """Llama / Mistral / Qwen2: RMSNorm, rotary (rotate-half: the q/k weights are stored in
    that layout), SwiGLU MLP (W_gate = gate_proj^T, W_in = up_proj^T, W_out = down_proj^T),
    grouped-query attention; biases wherever the checkpoint has them."""
    w = Weights(params, arch)
    d, H = cfg_get(config, "hidden_size"), cfg_get(config, "num_attention_heads")
    L = cfg_get(config, "num_hidden_layers")
    KV = cfg_get(config, "num_key_value_heads") or H
    q0 = params.get("model.layers.0.self_attn.q_proj.weight")
    dh = q0.shape[0] // H if q0 is not None else (cfg_get(config, "head_dim") or d // H)
    rotary_dim, base = rope(config, dh, arch)
    state: dict[str, torch.Tensor] = {"embed.W_E": w.take("model.embed_tokens.weight")}
    for l in range(L):
        p, o = f"model.layers.{l}.", f"blocks.{l}."
        state[o + "ln1.w"] = w.take(p + "input_layernorm.weight")
        state[o + "ln2.w"] = w.take(p + "post_attention_layernorm.weight")
        a = p + "self_attn."
        for m, n in (("q", H), ("k", KV), ("v", KV)):
            state[o + f"attn.W_{m.upper()}"] = _heads_in(w.take(a + f"{m}_proj.weight"), n, dh)
            bias = w.maybe(a + f"{m}_proj.bias")
            _put(state, o + f"attn.b_{m.upper()}", None if bias is None else bias.reshape(n, dh))
        state[o + "attn.W_O"] = _heads_out(w.take(a + "o_proj.weight"), H, dh)
        _put(state, o + "attn.b_O", w.maybe(a + "o_proj.bias"))
        m = p + "mlp."
        if w.has(m + "gate_proj.bias"):
            raise ModelLoadError(f"{arch} checkpoint: a bias on gate_proj (mlp_bias) is not supported")
        state[o + "mlp.W_gate"] = w.take(m + "gate_proj.weight").T.contiguous()
        state[o + "mlp.W_in"] = w.take(m + "up_proj.weight").T.contiguous()
        state[o + "mlp.W_out"] = w.take(m + "down_proj.weight").T.contiguous()
    state["ln_final.w"] = w.take("model.norm.weight")
    is_tied = _unembed(w, state, config, ("lm_head.weight",), False)
    w.check_all_used()
    d_vocab = state["embed.W_E"].shape[0]
    cfg = ModelConfig(
        n_layers=L, d_model=d, n_heads=H, d_head=dh, d_vocab=d_vocab,
        n_ctx=cfg_get(config, "max_position_embeddings"), d_mlp=cfg_get(config, "intermediate_size"),
        act_fn=activation(config, "hidden_act", arch), gated_mlp=True, normalization="RMS",
        norm_eps=float(cfg_get(config, "rms_norm_eps", 1e-6)), positional="rotary",
        rotary_dim=rotary_dim, rotary_base=base, rope_scaling=rope_scaling(config, rotary_dim, arch),
        n_kv_heads=KV if KV != H else None,
        attn_bias="blocks.0.attn.b_Q" in state, attn_out_bias="blocks.0.attn.b_O" in state,
        tied_embeddings=is_tied,
        attn_window=_sliding_window(config, arch, L), bos_token_id=bos_id(config, d_vocab),
        name=str(cfg_get(config, "_name_or_path", "") or arch),
    )
    return cfg, state


@register_conversion("llama")
def convert_llama(config: Any, params: Mapping[str, torch.Tensor]) -> Converted:
    return _convert_llama_like(config, params, "llama")


@register_conversion("mistral")
def convert_mistral(config: Any, params: Mapping[str, torch.Tensor]) -> Converted:
    """Mistral: the Llama conversion plus a sliding attention window (attn_window)."""
    return _convert_llama_like(config, params, "mistral")


@register_conversion("qwen2")
def convert_qwen2(config: Any, params: Mapping[str, torch.Tensor]) -> Converted:
    """Qwen2: the Llama conversion; q/k/v carry biases, o_proj does not."""
    return _convert_llama_like(config, params, "qwen2")
