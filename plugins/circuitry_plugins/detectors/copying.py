"""The copying detector (weights only): Σλ / Σ|λ| over the eigenvalues λ of a head's
full OV circuit W_E W_V W_O W_U [vocab, vocab] (Elhage et al.).

The non-zero eigenvalues of W_E W_V W_O W_U equal those of the small product
W_O W_U W_E W_V [d_head, d_head] (eig(AB) and eig(BA) share them), so only
that is formed. Range [-1, 1]: 1 for a head that raises the logit of the token
it attends to, -1 for one that suppresses it. A head whose small product has
no non-zero eigenvalue (an all-zero head, W_V or W_O zero, or a nilpotent OV
circuit) scores 0.0: it neither copies nor suppresses.
"""

from __future__ import annotations

import torch

from circuitry_plugins.detectors.weights import head_weights, unembed_weights

VOCAB_CHUNK = 8192  # tokens per step of W_U W_E: float32 copies of [d_model, 8192] at a time


def unembed_embed(model) -> torch.Tensor:
    """W_U W_E [d_model, d_model] in float64, summed over chunks of the vocabulary (half-precision
    weights are cast a chunk at a time)."""
    W_U, W_E = unembed_weights(model), model.W_E.detach()  # [d_model, d_vocab], [d_vocab, d_model]
    UE = torch.zeros(model.cfg.d_model, model.cfg.d_model, dtype=torch.float64, device=W_E.device)
    for start in range(0, model.cfg.d_vocab, VOCAB_CHUNK):
        part = slice(start, start + VOCAB_CHUNK)
        UE += (W_U[:, part].float() @ W_E[part].float()).double()
    return UE


def copying(inp) -> torch.Tensor:
    model = inp.model
    UE = unembed_embed(model)
    rep = model.cfg.n_heads // model.cfg.kv_heads
    scores = []
    for l in range(model.cfg.n_layers):  # one layer's heads at a time
        W_V = head_weights(model, "W_V", l, dtype=torch.float64).repeat_interleave(rep, 0)
        small = head_weights(model, "W_O", l, dtype=torch.float64) @ UE @ W_V  # [head, d_head, d_head]
        eig = torch.linalg.eigvals(small)  # [head, d_head] complex
        total = eig.abs().sum(-1)
        ratio = eig.real.sum(-1) / total.clamp_min(torch.finfo(total.dtype).tiny)
        scores.append(torch.where(total > 0, ratio, torch.zeros_like(ratio)))
    return torch.stack(scores).float()  # [layer, head]
