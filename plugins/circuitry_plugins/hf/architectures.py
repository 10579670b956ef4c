"""Hugging Face conversions of the newer decoder architectures: Qwen3, GPT-J, Phi-3, OLMo-2, Gemma 1/2/3.

Registered with `register_conversion` when the `hf` plugin is imported. Each
reads the config object and the named parameters of the loaded transformers
model (through `Weights`, so every parameter must be used) and produces a
`ModelConfig` and a TransformerLens-style state dict, like `conversions`:

- Qwen3: the Llama layout plus per-head QK-norm (`qk_norm: head`).
- GPT-J: one LayerNorm per block feeding attention and MLP in parallel (ln1 and
  ln2 both get its weights), rotary on the first `rotary_dim` dims in GPT-J's
  interleaved layout (pairs (2i, 2i+1)); the rotary dims of W_Q and W_K are
  permuted into the rotate-half layout (pair (i, i + rotary_dim/2)), which
  leaves every score unchanged and permutes `hook_q` / `hook_k`. Biased MLP and
  unembedding.
- Phi-3: the Llama layout with fused `qkv_proj` ([q | k | v] rows) and
  `gate_up_proj` ([gate | up] rows); LongRoPE scaling (see `rope_scaling`).
- OLMo-2: no pre-norms; post-norms on the attention and MLP outputs; QK-norm over
  the whole q / k projection of all heads (`qk_norm: projection`).
- Gemma 1/2/3: RMSNorm weights stored as w and applied as (1 + w) are converted
  to 1 + w (in float32), embeddings scaled by sqrt(d_model), GeGLU; Gemma 2/3 add
  post-norms, query pre-scaling (attn_scale = sqrt(query_pre_attn_scalar)),
  soft-capping of scores and logits and local (sliding-window) layers; Gemma 3
  per-head QK-norm and its own rotary base for the local layers.

Mixture-of-experts types are refused in `conversions.convert`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from circuitry.errors import ModelLoadError
from circuitry.model import ModelConfig
from circuitry.model.config import finite_number, show
from circuitry_plugins.hf.conversions import (
    Converted,
    Weights,
    _heads_in,
    _heads_out,
    _int,
    _put,
    _unembed,
    activation,
    bos_id,
    cfg_get,
    register_conversion,
    rope,
    rope_parameters,
    rope_scaling,
)


def _layer_windows(config: Any, arch: str, n_layers: int) -> tuple[int | None, tuple[str, ...] | None]:
    """(attn_window, attn_types) from sliding_window and layer_types: every layer local (one window for all,
    attn_types None), some (attn_types names them), or none; a window that covers the whole context is none."""
    window = cfg_get(config, "sliding_window")
    layer_types = cfg_get(config, "layer_types")
    if window is not None and not _int(window):
        raise ModelLoadError(f"{arch}: sliding_window must be a positive integer or null, got {show(window)}")
    if layer_types is None:
        layer_types = ["sliding_attention" if window is not None else "full_attention"] * n_layers
    if not (isinstance(layer_types, (list, tuple)) and len(layer_types) == n_layers
            and set(layer_types) <= {"sliding_attention", "full_attention"}):
        raise ModelLoadError(f"{arch}: layer_types must name sliding_attention or full_attention for each of the "
                             f"{n_layers} layers, got {show(layer_types)}")
    max_pos = cfg_get(config, "max_position_embeddings")
    if window is None or "sliding_attention" not in layer_types or (_int(max_pos) and window >= max_pos):
        return None, None
    if set(layer_types) == {"sliding_attention"}:
        return int(window), None
    return int(window), tuple("local" if t == "sliding_attention" else "global" for t in layer_types)


def _gemma_norm(w: torch.Tensor) -> torch.Tensor:
    """A Gemma RMSNorm weight w (applied as 1 + w) as the canonical weight 1 + w, added in float32 as
    transformers does at every forward pass (exact for float32 models)."""
    return w.float() + 1.0


def _check_causal(config: Any, arch: str) -> None:
    if cfg_get(config, "use_bidirectional_attention"):
        raise ModelLoadError(f"{arch}: use_bidirectional_attention is not supported (the canonical model is a "
                             f"causal decoder)")


def _number(config: Any, key: str, arch: str) -> float | None:
    v = cfg_get(config, key)
    if v is not None and not (finite_number(v) and v > 0):
        raise ModelLoadError(f"{arch}: {key} must be a finite number > 0 or null, got {show(v)}")
    return None if v is None else float(v)


def _convert_decoder(config: Any, params: Mapping[str, torch.Tensor], arch: str, *, norms: str = "pre",
                     qk_norm: str | None = None, gemma: bool = False, fused: bool = False,
                     rope_layers: bool = False) -> Converted:
    """A Llama-layout decoder (model.layers.{l}.self_attn / mlp, model.norm, lm_head) with the features named:
    norms "pre" (input_layernorm, post_attention_layernorm before the MLP: Llama, Qwen3, Phi-3, Gemma 1),
    "pre+post" (Gemma 2/3: post_attention_layernorm after attention, pre/post_feedforward_layernorm around
    the MLP) or "post" (OLMo-2: post_attention_layernorm and post_feedforward_layernorm only);
    qk_norm ("head", "projection"); gemma (norm weights 1 + w, embeddings scaled by sqrt(d_model)); fused
    (Phi-3's qkv_proj and gate_up_proj); rope_layers (Gemma 3: rotary settings per layer type)."""
    w = Weights(params, arch)
    _check_causal(config, arch)
    d, H = cfg_get(config, "hidden_size"), cfg_get(config, "num_attention_heads")
    L = cfg_get(config, "num_hidden_layers")
    KV = cfg_get(config, "num_key_value_heads") or H
    dh = cfg_get(config, "head_dim") or d // H
    norm = _gemma_norm if gemma else (lambda t: t)
    rotary_dim, base = rope(config, dh, arch, layer_type="full_attention" if rope_layers else None)
    scaling = rope_scaling(config, rotary_dim, arch, layer_type="full_attention" if rope_layers else None)
    base_local = None
    if rope_layers:
        local = rope_parameters(config, arch, "sliding_attention")
        if local["rope_type"] != "default":
            raise ModelLoadError(f"{arch}: rotary scaling {local['rope_type']!r} of the sliding-window layers is not "
                                 f"supported (only of the full-attention layers)")
        base_local = float(rope(config, dh, arch, layer_type="sliding_attention")[1])
    state: dict[str, torch.Tensor] = {"embed.W_E": w.take("model.embed_tokens.weight")}
    for l in range(L):
        p, o, a = f"model.layers.{l}.", f"blocks.{l}.", f"model.layers.{l}.self_attn."
        if norms == "pre":
            state[o + "ln1.w"] = norm(w.take(p + "input_layernorm.weight"))
            state[o + "ln2.w"] = norm(w.take(p + "post_attention_layernorm.weight"))
        elif norms == "pre+post":
            state[o + "ln1.w"] = norm(w.take(p + "input_layernorm.weight"))
            state[o + "ln1_post.w"] = norm(w.take(p + "post_attention_layernorm.weight"))
            state[o + "ln2.w"] = norm(w.take(p + "pre_feedforward_layernorm.weight"))
            state[o + "ln2_post.w"] = norm(w.take(p + "post_feedforward_layernorm.weight"))
        else:
            state[o + "ln1_post.w"] = norm(w.take(p + "post_attention_layernorm.weight"))
            state[o + "ln2_post.w"] = norm(w.take(p + "post_feedforward_layernorm.weight"))
        if fused:
            qkv = w.take(a + "qkv_proj.weight")  # [(H + 2 KV) d_head, d_model]
            proj = dict(zip("qkv", torch.split(qkv, [H * dh, KV * dh, KV * dh])))
        else:
            proj = {m: w.take(a + f"{m}_proj.weight") for m in "qkv"}
        for m, n in (("q", H), ("k", KV), ("v", KV)):
            state[o + f"attn.W_{m.upper()}"] = _heads_in(proj[m], n, dh)
            bias = w.maybe(a + f"{m}_proj.bias")
            _put(state, o + f"attn.b_{m.upper()}", None if bias is None else bias.reshape(n, dh))
        if w.has(a + "qkv_proj.bias"):
            raise ModelLoadError(f"{arch} checkpoint: a bias on qkv_proj is not supported")
        state[o + "attn.W_O"] = _heads_out(w.take(a + "o_proj.weight"), H, dh)
        _put(state, o + "attn.b_O", w.maybe(a + "o_proj.bias"))
        if qk_norm is not None:
            state[o + "attn.q_norm.w"] = norm(w.take(a + "q_norm.weight"))
            state[o + "attn.k_norm.w"] = norm(w.take(a + "k_norm.weight"))
        m = p + "mlp."
        if any(w.has(m + f"{k}.bias") for k in ("gate_proj", "up_proj", "gate_up_proj", "down_proj")):
            raise ModelLoadError(f"{arch} checkpoint: MLP biases are not supported")
        if fused:
            gate, up = w.take(m + "gate_up_proj.weight").chunk(2, dim=0)  # [d_mlp, d_model] each
        else:
            gate, up = w.take(m + "gate_proj.weight"), w.take(m + "up_proj.weight")
        state[o + "mlp.W_gate"], state[o + "mlp.W_in"] = gate.T.contiguous(), up.T.contiguous()
        state[o + "mlp.W_out"] = w.take(m + "down_proj.weight").T.contiguous()
    state["ln_final.w"] = norm(w.take("model.norm.weight"))
    is_tied = _unembed(w, state, config, ("lm_head.weight",), gemma)
    w.check_all_used()
    d_vocab = state["embed.W_E"].shape[0]
    window, attn_types = _layer_windows(config, arch, L)
    pre_scalar = _number(config, "query_pre_attn_scalar", arch)
    act_key = "hidden_activation" if cfg_get(config, "hidden_activation") is not None else "hidden_act"
    cfg = ModelConfig(
        n_layers=L, d_model=d, n_heads=H, d_head=dh, d_vocab=d_vocab,
        n_ctx=cfg_get(config, "max_position_embeddings"), d_mlp=state["blocks.0.mlp.W_in"].shape[1] if L else d,
        act_fn=activation(config, act_key, arch), gated_mlp=True, normalization="RMS",
        norm_eps=float(cfg_get(config, "rms_norm_eps", 1e-6)), positional="rotary",
        rotary_dim=rotary_dim, rotary_base=base, rope_scaling=scaling, n_kv_heads=KV if KV != H else None,
        attn_bias="blocks.0.attn.b_Q" in state, attn_out_bias="blocks.0.attn.b_O" in state,
        tied_embeddings=is_tied, attn_window=window, attn_types=attn_types,
        rotary_base_local=base_local if attn_types is not None and "local" in attn_types else None,
        qk_norm=qk_norm, pre_norms=norms != "post", post_norms=norms != "pre",
        embed_scale=math.sqrt(d) if gemma else None,
        attn_scale=None if pre_scalar is None else math.sqrt(pre_scalar),
        attn_scores_soft_cap=_number(config, "attn_logit_softcapping", arch),
        output_logits_soft_cap=_number(config, "final_logit_softcapping", arch),
        bos_token_id=bos_id(config, d_vocab), name=str(cfg_get(config, "_name_or_path", "") or arch),
    )
    return cfg, state


@register_conversion("qwen3")
def convert_qwen3(config: Any, params: Mapping[str, torch.Tensor]) -> Converted:
    """Qwen3: the Llama layout with RMSNorm on each head's query and key before rotary (qk_norm: head)."""
    return _convert_decoder(config, params, "qwen3", qk_norm="head")


@register_conversion("phi3")
def convert_phi3(config: Any, params: Mapping[str, torch.Tensor]) -> Converted:
    """Phi-3: fused qkv_proj ([q | k | v] rows) and gate_up_proj ([gate | up] rows), LongRoPE scaling."""
    return _convert_decoder(config, params, "phi3", fused=True)


@register_conversion("olmo2")
def convert_olmo2(config: Any, params: Mapping[str, torch.Tensor]) -> Converted:
    """OLMo-2: norms after attention and MLP only (no pre-norms), QK-norm over the whole projection."""
    return _convert_decoder(config, params, "olmo2", norms="post", qk_norm="projection")


@register_conversion("gemma")
def convert_gemma(config: Any, params: Mapping[str, torch.Tensor]) -> Converted:
    """Gemma: norm weights 1 + w, embeddings x sqrt(d_model), GeGLU, tied unembedding."""
    return _convert_decoder(config, params, "gemma", gemma=True)


@register_conversion("gemma2")
def convert_gemma2(config: Any, params: Mapping[str, torch.Tensor]) -> Converted:
    """Gemma 2: Gemma plus post-norms, query pre-scaling, soft-capped scores and logits, local layers."""
    return _convert_decoder(config, params, "gemma2", norms="pre+post", gemma=True)


@register_conversion("gemma3_text")
def convert_gemma3_text(config: Any, params: Mapping[str, torch.Tensor]) -> Converted:
    """Gemma 3 (text): Gemma 2 plus per-head QK-norm and a rotary base of its own for the local layers."""
    return _convert_decoder(config, params, "gemma3_text", norms="pre+post", qk_norm="head", gemma=True,
                            rope_layers=True)


# --------------------------------------------------------------------------- GPT-J
def _interleaved_to_half(W: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """Permute the last (d_head) axis of W so GPT-J's rotary pairs (2i, 2i+1) become (i, i + rotary_dim/2)."""
    d_head = W.shape[-1]
    perm = list(range(0, rotary_dim, 2)) + list(range(1, rotary_dim, 2)) + list(range(rotary_dim, d_head))
    return W[..., perm].contiguous()


@register_conversion("gptj")
def convert_gptj(config: Any, params: Mapping[str, torch.Tensor]) -> Converted:
    """GPT-J: one LayerNorm (ln_1) feeding attention and MLP in parallel, interleaved rotary on the first
    rotary_dim dims (permuted into the rotate-half layout), no attention biases, biased MLP and lm_head."""
    w = Weights(params, "gptj")
    d, H, L = cfg_get(config, "n_embd"), cfg_get(config, "n_head"), cfg_get(config, "n_layer")
    dh = d // H
    rotary_dim = cfg_get(config, "rotary_dim") or dh
    if not (_int(rotary_dim) and rotary_dim <= dh and rotary_dim % 2 == 0):
        raise ModelLoadError(f"gptj: rotary_dim must be even and at most the head size {dh}, got {show(rotary_dim)}")
    state: dict[str, torch.Tensor] = {"embed.W_E": w.take("transformer.wte.weight")}
    for l in range(L):
        p, o = f"transformer.h.{l}.", f"blocks.{l}."
        ln_w, ln_b = w.take(p + "ln_1.weight"), w.take(p + "ln_1.bias")
        state[o + "ln1.w"], state[o + "ln1.b"] = ln_w, ln_b
        state[o + "ln2.w"], state[o + "ln2.b"] = ln_w.clone(), ln_b.clone()
        for m in "qkv":
            W = _heads_in(w.take(p + f"attn.{m}_proj.weight"), H, dh)  # [head, d_model, d_head]
            state[o + f"attn.W_{m.upper()}"] = _interleaved_to_half(W, rotary_dim) if m != "v" else W
        state[o + "attn.W_O"] = _heads_out(w.take(p + "attn.out_proj.weight"), H, dh)
        state[o + "mlp.W_in"] = w.take(p + "mlp.fc_in.weight").T.contiguous()
        state[o + "mlp.b_in"] = w.take(p + "mlp.fc_in.bias")
        state[o + "mlp.W_out"] = w.take(p + "mlp.fc_out.weight").T.contiguous()
        state[o + "mlp.b_out"] = w.take(p + "mlp.fc_out.bias")
    state["ln_final.w"], state["ln_final.b"] = w.take("transformer.ln_f.weight"), w.take("transformer.ln_f.bias")
    is_tied = _unembed(w, state, config, ("lm_head.weight",), False)
    _put(state, "unembed.b_U", w.maybe("lm_head.bias"))
    w.check_all_used()
    d_vocab = state["embed.W_E"].shape[0]
    cfg = ModelConfig(
        n_layers=L, d_model=d, n_heads=H, d_head=dh, d_vocab=d_vocab, n_ctx=cfg_get(config, "n_positions"),
        d_mlp=state["blocks.0.mlp.W_in"].shape[1] if L else 4 * d,
        act_fn=activation(config, "activation_function", "gptj"), normalization="LN",
        norm_eps=float(cfg_get(config, "layer_norm_epsilon", 1e-5)), positional="rotary",
        rotary_dim=rotary_dim, rotary_base=10000.0, parallel_attn_mlp=True, attn_bias=False, mlp_bias=True,
        unembed_bias="unembed.b_U" in state, tied_embeddings=is_tied, bos_token_id=bos_id(config, d_vocab),
        name=str(cfg_get(config, "_name_or_path", "") or "gptj"),
    )
    return cfg, state
