"""Per-head weights with normalisation weights folded in, for weights-only detectors.

A head reads ln1(x) = s(x) * w + b; the effective reading weights are
w[:, None] * W (centred along d_model for LayerNorm, whose output has mean
zero). Scale factors s(x) cannot be folded; scores that are ratios of norms do
not depend on them.

`head_weights` gives one layer's weights of some heads in a chosen dtype
(float32 for scores), cast and folded per call, so that a detector can walk a
large low-precision model chunk by chunk without a float32 copy of all of it.
`reading_weights` gives every layer at once (small models).
"""

from __future__ import annotations

import torch

READ_NAMES = ("W_Q", "W_K", "W_V")  # read the stream: [heads, d_model, d_head]; W_O writes it


def _norm_weight(module) -> torch.Tensor | None:
    w = getattr(module, "w", None) if module is not None else None
    return None if w is None else w.detach()


def _centres(module) -> bool:
    """Whether a norm module centres its input (LayerNorm): its output has mean zero along d_model."""
    return getattr(module, "kind", None) in ("LN", "LNPre")


def _fold(W: torch.Tensor, w: torch.Tensor | None, center: bool, d_axis: int) -> torch.Tensor:
    if w is not None:
        shape = [1] * W.ndim
        shape[d_axis] = -1
        W = W * w.to(W.dtype).reshape(shape)
    if center:
        W = W - W.mean(d_axis, keepdim=True)
    return W


def kv_group(model) -> int:
    """Query heads per key/value head (1 without grouped-query attention)."""
    return model.cfg.n_heads // model.cfg.kv_heads


def head_weights(model, name: str, layer: int, index: torch.Tensor | slice | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One layer's `name` (W_Q, W_K, W_V or W_O) of the heads `index` (all by default), in `dtype`.

    W_Q [head, d_model, d_head]; W_K, W_V [kv_head, d_model, d_head] (key/value heads, not expanded
    to the query heads; `index` counts key/value heads) as the heads read the stream, ln1's weight
    folded in (and centred for LayerNorm); W_O [head, d_head, d_model] as stored. Only the selected
    heads are cast, after they are selected.
    """
    attn = model.blocks[layer].attn
    W = getattr(attn, name).detach()
    if index is not None:
        W = W[index]
    W = W.to(dtype)
    if name == "W_O":
        return W
    ln1 = getattr(model.blocks[layer], "ln1", None)
    return _fold(W, _norm_weight(ln1), _centres(ln1), d_axis=1)


def reading_weights(model) -> dict[str, torch.Tensor]:
    """W_Q, W_K, W_V [layer, head, d_model, d_head] as the heads effectively read the stream (key/value
    heads expanded to the query heads), and W_O [layer, head, d_head, d_model], in the model's dtype.
    Every layer at once: for small models (detectors of large ones use `head_weights` per chunk)."""
    L, rep = model.cfg.n_layers, kv_group(model)
    out = {}
    for name in (*READ_NAMES, "W_O"):
        per_layer = [head_weights(model, name, l, dtype=model.dtype) for l in range(L)]
        if name in ("W_K", "W_V") and rep > 1:
            per_layer = [W.repeat_interleave(rep, 0) for W in per_layer]
        out[name] = torch.stack(per_layer)
    return out


def unembed_weights(model, index: slice | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """W_U [d_model, d_vocab] with ln_final's weight folded in (the vocabulary columns `index` only, in
    `dtype`, when given: cast after they are selected)."""
    W = model.W_U.detach()
    if index is not None:
        W = W[:, index]
    return _fold(W.to(dtype or W.dtype), _norm_weight(model.ln_final), _centres(model.ln_final), d_axis=0)
