"""Q-, K- and V-composition scores (Elhage et al.) for every pair of heads in different layers.

comp(W_A, W_B) = ||W_A W_B||_F / (||W_A||_F ||W_B||_F), with the earlier head's
W_A = W_OV = W_V W_O and, for the later head, W_B = W_QK = W_Q W_K^T
(Q-composition), W_QK^T (K-composition) or its W_OV (V-composition); row
convention, normalisation weights folded in.

Nothing of size d_model x d_model is formed. Every factor pair is reduced to
d_head x d_head: with W_V = Q_V R_V (thin QR, Q_V orthonormal columns),
||W_V W_O X|| = ||R_V W_O X||, and likewise on the right, so each pair's score
is the Frobenius norm of one d_head x d_head product. The baseline is the mean
score of random Gaussian factors of the same shapes (about 1/sqrt(d_model)).

A zero matrix composes with nothing: when W_A or W_B is zero (an all-zero
head, as tracr pads layers with or pruning leaves behind; also W_V or W_O
alone zero) the score is defined as 0.0 rather than 0/0. Each factor is
divided by its own norm before the product is formed (a zero factor stays
zero), so scores are finite for finite weights and do not depend on the
heads' scale; the tensor entries with l1 >= l2 (no such edge) are NaN.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from circuitry.records import PairScores
from circuitry_plugins.detectors.weights import reading_weights

KINDS = ("Q", "K", "V")


def _r(W: torch.Tensor) -> torch.Tensor:
    """R of the thin QR of W [..., d_model, d_head] -> [..., d_head, d_head]."""
    return torch.linalg.qr(W, mode="r")[1]


def writer_factors(W_V: torch.Tensor, W_O: torch.Tensor) -> torch.Tensor:
    """A = R_V W_O [..., d_head, d_model] with ||A X|| = ||W_V W_O X|| for every X."""
    return _r(W_V) @ W_O


def reader_factors(W_left: torch.Tensor, W_right: torch.Tensor) -> torch.Tensor:
    """C = W_left R_right^T [..., d_model, d_head] with ||X C|| = ||X W_left W_right^T||."""
    return W_left @ _r(W_right).transpose(-1, -2)


def unit(M: torch.Tensor) -> torch.Tensor:
    """M [..., a, b] divided by its Frobenius norm; a zero matrix stays zero (so its scores are 0)."""
    norm = M.flatten(-2).norm(dim=-1)[..., None, None]
    return torch.where(norm > 0, M / norm.clamp_min(torch.finfo(M.dtype).tiny), torch.zeros_like(M))


def pair_scores(A: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """comp for every writer i and reader j: A [i, d_head, d_model], C [j, d_model, d_head] -> [i, j];
    0 where either factor is a zero matrix."""
    prod = torch.einsum("ied,jdf->ijef", unit(A), unit(C))
    return prod.flatten(-2).norm(dim=-1)


def reader_factors_all(w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per kind, the reading factor of every head [layer, head, d_model, d_head]."""
    W_O_T = w["W_O"].transpose(-1, -2)  # [layer, head, d_model, d_head]
    return {
        "Q": reader_factors(w["W_Q"], w["W_K"]),   # W_QK = W_Q W_K^T
        "K": reader_factors(w["W_K"], w["W_Q"]),   # W_QK^T = W_K W_Q^T
        "V": reader_factors(w["W_V"], W_O_T),      # W_OV = W_V W_O
    }


def composition_scores(model) -> dict[str, torch.Tensor]:
    """kind -> [layer, head, layer, head] scores from (l1, h1) to (l2, h2); NaN unless l1 < l2
    (0 for a pair where either head's matrix is zero)."""
    w = {k: v.float() for k, v in reading_weights(model).items()}
    L, H = model.cfg.n_layers, model.cfg.n_heads
    A = writer_factors(w["W_V"], w["W_O"])  # [layer, head, d_head, d_model]
    readers = reader_factors_all(w)
    out = {}
    for kind in KINDS:
        scores = torch.full((L, H, L, H), float("nan"))
        C = readers[kind]
        for l1 in range(L - 1):
            later = C[l1 + 1:].flatten(0, 1)  # [(L-l1-1)*H, d_model, d_head]
            s = pair_scores(A[l1], later)  # [H, (L-l1-1)*H]
            scores[l1, :, l1 + 1:, :] = s.reshape(H, L - l1 - 1, H).cpu()
        out[kind] = scores
    return out


@lru_cache(maxsize=16)
def random_baseline(d_model: int, d_head: int, samples: int = 200, seed: int = 0) -> float:
    """Mean comp score of random rank-d_head factors W_A = A_l A_r^T, W_B = B_l B_r^T."""
    gen = torch.Generator().manual_seed(seed)
    f = [torch.randn(samples, d_model, d_head, generator=gen) for _ in range(4)]
    A = writer_factors(f[0], f[1].transpose(-1, -2))  # W_A = A_l A_r^T
    C = reader_factors(f[2], f[3])  # W_B = B_l B_r^T
    return float((unit(A) @ unit(C)).flatten(-2).norm(dim=-1).mean())


def composition(inp) -> PairScores:
    model = inp.model
    scores = composition_scores(model)
    base = random_baseline(model.cfg.d_model, model.cfg.d_head)
    return PairScores(scores, {k: base for k in KINDS})
