"""The positional part of a head's QK circuit: W_pos W_QK W_pos^T [n_ctx, n_ctx], summarised.

Scores are what the head would compute from the position embeddings alone
(the tokens left out, normalisation scales ignored): divided by the model's
attention scale, soft-capped when the model caps scores, restricted to the
causal (and windowed) keys, and turned into attention weights by a softmax
over each query's keys. Summaries: the weight each query position gives to
the position before it (offset -1) and its mean over positions 1..n_ctx-1,
and the offset (key position - query position, <= 0) of each query's
largest weight. Query rows are computed a chunk at a time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from circuitry.e2e.topk import chunk_rows


@dataclass(frozen=True)
class Positional:
    """previous_weight[i]: softmax weight of query position i on i-1 (None at position 0, which has no
    previous position); mean_previous_weight: its mean over positions 1..n_ctx-1 (None when n_ctx is 1);
    argmax_offset[i]: the key offset (<= 0) query position i weighs most."""

    previous_weight: tuple[float | None, ...]
    mean_previous_weight: float | None
    argmax_offset: tuple[int, ...]

    def offset_counts(self) -> list[tuple[int, int]]:
        """(offset, number of query positions whose largest weight is at it), most frequent first."""
        return Counter(self.argmax_offset).most_common()

    def to_json(self) -> dict:
        return {"mean_previous_token_weight": self.mean_previous_weight,
                "previous_token_weight": list(self.previous_weight),
                "argmax_offset": list(self.argmax_offset),
                "argmax_offset_counts": [{"offset": o, "positions": n} for o, n in self.offset_counts()]}


def positional(P_q: torch.Tensor, P_k: torch.Tensor, scale: float, window: int | None = None,
               soft_cap: float | None = None, what: str = "the positional QK circuit") -> Positional:
    """Summaries of softmax(P_q P_k^T / scale) over causal keys; P_q, P_k [n_ctx, d_head] float32."""
    n = P_q.shape[0]
    step = chunk_rows(n, what)
    key = torch.arange(n, device=P_q.device)
    prev = torch.full((n,), torch.nan, dtype=torch.float32)
    argmax = torch.zeros(n, dtype=torch.long)
    for r0 in range(0, n, step):
        q = torch.arange(r0, min(n, r0 + step), device=P_q.device)
        scores = (P_q[q] @ P_k.T) / scale  # [chunk, n_ctx]
        if soft_cap is not None:
            scores = torch.tanh(scores / soft_cap) * soft_cap
        allowed = key[None, :] <= q[:, None]
        if window is not None:
            allowed &= q[:, None] - key[None, :] < window
        weights = torch.softmax(scores.masked_fill(~allowed, -torch.inf), dim=-1)
        has_prev = q > 0
        prev[q[has_prev].cpu()] = weights[has_prev, q[has_prev] - 1].cpu()
        argmax[q.cpu()] = (weights.argmax(-1) - q).cpu()
    rest = prev[1:]
    mean = float(rest.mean()) if rest.numel() else None
    return Positional(tuple(None if torch.isnan(v) else float(v) for v in prev), mean, tuple(argmax.tolist()))
