"""Folding of normalisation weights into the weights that read the normalised stream.

The same transformation as TransformerLens's `fold_layer_norm`: for a reader
W (with bias b0) of LN(x) = s(x) * w + b, use W' = w[:, None] * W and
b0' = b0 + b @ W, then (LayerNorm only) centre W' along d_model.

Only the norms that precede a linear reader are folded: ln1, ln2 and
ln_final. QK-norm weights (`attn.q_norm`, `attn.k_norm`: Qwen3, Gemma 3,
OLMo-2) act after a normalisation of the queries and keys and before rotary,
and post-norm weights (`ln1_post`, `ln2_post`: Gemma 2/3, OLMo-2) after a
normalisation of a block's outputs; neither is a scale on the input of a
linear map, so they are kept as they are (weighted) and the logits are
unchanged.
"""

from __future__ import annotations

import torch

from circuitry.model.config import ModelConfig


def _fold(state: dict[str, torch.Tensor], w_key: str, b_key: str, ln_w: torch.Tensor,
          ln_b: torch.Tensor | None, center: bool, d_axis: int) -> None:
    """Fold into state[w_key] whose d_model axis is `d_axis`, bias state[b_key]."""
    W = state[w_key]
    shape = [1] * W.ndim
    shape[d_axis] = -1
    if ln_b is not None:
        bias_add = torch.movedim(W, d_axis, -1) @ ln_b  # [..., out]
        state[b_key] = state.get(b_key, torch.zeros_like(bias_add)) + bias_add
    W = W * ln_w.reshape(shape)
    if center:
        W = W - W.mean(d_axis, keepdim=True)
    state[w_key] = W


def fold_layer_norm(model, center_weights: bool = True) -> None:
    """Fold every norm of `model` in place; no-op for models without weighted norms."""
    cfg: ModelConfig = model.cfg
    if cfg.normalization not in ("LN", "RMS"):
        return
    is_ln = cfg.normalization == "LN"
    center = center_weights and is_ln
    with torch.no_grad():
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if cfg.tied_embeddings:
            state["unembed.W_U"] = model.W_U.detach().clone()
        for l in range(cfg.n_layers if cfg.pre_norms else 0):  # without pre-norms only ln_final is folded
            p = f"blocks.{l}."
            w, b = state.pop(p + "ln1.w"), state.pop(p + "ln1.b", None)
            for m in ("Q", "K", "V"):
                _fold(state, f"{p}attn.W_{m}", f"{p}attn.b_{m}", w, b, center, d_axis=1)
            if not cfg.attn_only:
                w, b = state.pop(p + "ln2.w"), state.pop(p + "ln2.b", None)
                for m in ("in", "gate"):
                    if f"{p}mlp.W_{m}" in state:
                        bkey = f"{p}mlp.b_{m}" if m == "in" else f"{p}mlp.b_gate_unused"
                        _fold(state, f"{p}mlp.W_{m}", bkey, w, b, center, d_axis=0)
        w, b = state.pop("ln_final.w"), state.pop("ln_final.b", None)
        _fold(state, "unembed.W_U", "unembed.b_U", w, b, center, d_axis=0)
        gate_bias = [k for k in state if k.endswith("b_gate_unused")]
        if any(state[k].abs().max() > 0 for k in gate_bias):
            raise NotImplementedError("folding a LayerNorm bias into a gated MLP is not supported")
        for k in gate_bias:
            del state[k]
        has_b = is_ln  # LN biases create reader biases
        new = model.replace_config(
            normalization="LNPre" if is_ln else "RMSPre",
            tied_embeddings=False,
            attn_bias=cfg.attn_bias or has_b,
            attn_out_bias=cfg.has_attn_out_bias,
            mlp_bias=cfg.mlp_bias or (has_b and not cfg.attn_only),
            unembed_bias=cfg.unembed_bias or has_b,
        )
        # biases that the new config has but neither the model nor the fold made
        for l in range(cfg.n_layers):
            p = f"blocks.{l}."
            if new.attn_bias:
                for m, n in (("Q", cfg.n_heads), ("K", cfg.kv_heads), ("V", cfg.kv_heads)):
                    state.setdefault(f"{p}attn.b_{m}", torch.zeros(n, cfg.d_head))
            if new.mlp_bias and cfg.d_mlp is not None:
                state.setdefault(f"{p}mlp.b_in", torch.zeros(cfg.d_mlp))
                state.setdefault(f"{p}mlp.b_out", torch.zeros(cfg.d_model))
        model.with_config(new, state)
