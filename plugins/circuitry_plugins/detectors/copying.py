"""The copying detector (weights only): Σλ / Σ|λ| over the eigenvalues λ of a head's
full OV circuit W_E W_V W_O W_U [vocab, vocab] (Elhage et al.).

The non-zero eigenvalues of W_E W_V W_O W_U equal those of the small product
W_O W_U W_E W_V [d_head, d_head] (eig(AB) and eig(BA) share them), so only
that is formed. Range [-1, 1]: 1 for a head that raises the logit of the token
it attends to, -1 for one that suppresses it. A head whose small product has
no non-zero eigenvalue (an all-zero head, W_V or W_O zero, or a nilpotent OV
circuit) scores 0.0: it neither copies nor suppresses.

Computed in float64 one layer at a time (key/value heads shared by their
query heads, not copied), with W_U W_E summed over chunks of the vocabulary
(`circuitry.budget.chunk_budget`): a low-precision model is never cast whole.
"""

from __future__ import annotations

import torch

from circuitry.budget import chunk_budget
from circuitry_plugins.detectors.weights import head_weights, kv_group, unembed_weights

F64 = 8  # bytes of a float64


def unembed_embed(model) -> torch.Tensor:
    """W_U W_E [d_model, d_model] in float64 (ln_final's weight folded into W_U), summed over chunks of
    the vocabulary so that no float64 copy of W_U or W_E is made whole."""
    d, V = model.cfg.d_model, model.cfg.d_vocab
    step = max(1, chunk_budget() // (2 * F64 * d))
    UE = torch.zeros(d, d, dtype=torch.float64, device=model.device)
    for v0 in range(0, V, step):
        part = slice(v0, min(V, v0 + step))
        UE += unembed_weights(model, part, torch.float64) @ model.W_E.detach()[part].double()
    return UE


def copying(inp) -> torch.Tensor:
    model = inp.model
    cfg = model.cfg
    rep = kv_group(model)
    UE = unembed_embed(model)  # [d_model, d_model]
    eig = []
    for layer in range(cfg.n_layers):  # one layer's weights in float64 at a time
        W_O = head_weights(model, "W_O", layer, dtype=torch.float64)  # [head, d_head, d_model]
        W_V = head_weights(model, "W_V", layer, dtype=torch.float64)  # [kv_head, d_model, d_head]
        OUE = (W_O @ UE).reshape(cfg.kv_heads, rep, cfg.d_head, cfg.d_model)  # heads grouped by key/value head
        small = (OUE @ W_V[:, None]).reshape(cfg.n_heads, cfg.d_head, cfg.d_head)  # W_O W_U W_E W_V
        eig.append(torch.linalg.eigvals(small))  # [head, d_head] complex
    ev = torch.stack(eig)  # [layer, head, d_head]
    total = ev.abs().sum(-1)
    ratio = ev.real.sum(-1) / total.clamp_min(torch.finfo(total.dtype).tiny)
    return torch.where(total > 0, ratio, torch.zeros_like(ratio)).float()
