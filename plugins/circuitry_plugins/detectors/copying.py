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

from circuitry_plugins.detectors.weights import reading_weights, unembed_weights


def copying(inp) -> torch.Tensor:
    model = inp.model
    w = reading_weights(model)
    UE = (unembed_weights(model) @ model.W_E.detach()).double()  # [d_model, d_model]
    small = w["W_O"].double() @ UE @ w["W_V"].double()  # [layer, head, d_head, d_head]
    eig = torch.linalg.eigvals(small)  # [layer, head, d_head] complex
    total = eig.abs().sum(-1)
    ratio = eig.real.sum(-1) / total.clamp_min(torch.finfo(total.dtype).tiny)
    return torch.where(total > 0, ratio, torch.zeros_like(ratio)).float()
