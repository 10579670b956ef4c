"""Per-head weights with normalisation weights folded in, for weights-only detectors.

A head reads ln1(x) = s(x) * w + b; the effective reading weights are
w[:, None] * W (centred along d_model for LayerNorm, whose output has mean
zero). Scale factors s(x) cannot be folded; scores that are ratios of norms do
not depend on them.
"""

from __future__ import annotations

import torch


def _norm_weight(model, module) -> torch.Tensor | None:
    return getattr(module, "w", None) if module is not None else None


def _fold(W: torch.Tensor, w: torch.Tensor | None, center: bool, d_axis: int) -> torch.Tensor:
    if w is not None:
        shape = [1] * W.ndim
        shape[d_axis] = -1
        W = W * w.reshape(shape)
    if center:
        W = W - W.mean(d_axis, keepdim=True)
    return W


def reading_weights(model) -> dict[str, torch.Tensor]:
    """W_Q, W_K, W_V [layer, head, d_model, d_head] as the heads effectively read the stream,
    and W_O [layer, head, d_head, d_model]."""
    center = model.cfg.normalization in ("LN", "LNPre")
    ws = [_norm_weight(model, getattr(b, "ln1", None)) for b in model.blocks]
    out = {}
    for name, W in (("W_Q", model.W_Q), ("W_K", model.W_K), ("W_V", model.W_V)):
        out[name] = torch.stack([_fold(W[l], ws[l], center, d_axis=1) for l in range(model.cfg.n_layers)])
    out["W_O"] = model.W_O
    return {k: v.detach() for k, v in out.items()}


def unembed_weights(model) -> torch.Tensor:
    """W_U [d_model, d_vocab] with ln_final's weight folded in."""
    center = model.cfg.normalization in ("LN", "LNPre")
    return _fold(model.W_U, _norm_weight(model, model.ln_final), center, d_axis=0).detach()
