"""Attention-pattern detectors: previous-token, duplicate-token, induction (prefix matching).

Each reads `blocks.{l}.attn.hook_pattern` [batch, head, q, k] from one cached
run and scores every head in [0, 1].

- previous_token: mean over queries i >= 1 of A[i, i-1].
- duplicate_token: attention mass on earlier occurrences of the query's token,
  A[i, j] summed over j < i with t_j = t_i, averaged over queries whose token
  occurred before.
- induction (prefix matching, Olsson et al.): attention mass on the tokens that
  followed earlier occurrences of the query's token, A[i, j] summed over
  1 <= j <= i with t_{j-1} = t_i, averaged over queries whose token occurred
  before. On BOS + r + r this is the attention from the second copy of a token
  to the token after its first copy.

Scores are finite for every head of a model with finite weights: an
all-zero head (W_Q = W_K = 0) attends uniformly to the positions it can see
and scores what uniform attention gives (previous_token: the mean over
queries i >= 1 of 1 / (i + 1) under full causal attention). Queries are
averaged only where the score is defined: the duplicate and
induction scores need at least one query whose token occurred before (a
usage error otherwise), never a 0/0.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from circuitry.errors import UsageError


def patterns(inp) -> Iterator[torch.Tensor]:
    """Each layer's pattern in float32 (or wider), one at a time: [batch, head, q, k]."""
    if inp.cache is None:
        raise UsageError("this detector needs a cached run (attention patterns)")
    for l in range(inp.model.cfg.n_layers):
        pattern = inp.cache[f"blocks.{l}.attn.hook_pattern"]
        yield pattern.to(torch.promote_types(pattern.dtype, torch.float32))


def duplicate_mask(tokens: torch.Tensor) -> torch.Tensor:
    """[batch, q, k]: True where k < q and t_k = t_q."""
    n = tokens.shape[1]
    same = tokens[:, :, None] == tokens[:, None, :]
    return same & torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril(-1)


def induction_mask(tokens: torch.Tensor) -> torch.Tensor:
    """[batch, q, k]: True where 1 <= k <= q and t_{k-1} = t_q (the duplicate mask shifted right)."""
    dup = duplicate_mask(tokens)
    mask = torch.zeros_like(dup)
    mask[:, :, 1:] = dup[:, :, :-1]
    return mask


def masked_score(layers: Iterable[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Mean over queries with a non-empty mask of the attention mass inside the mask -> [layer, head]."""
    has = mask.sum(-1) > 0  # [batch, q]
    if not bool(has.any()):
        raise UsageError("the data has no repeated tokens, so this detector has nothing to score; "
                         "use repeated data (e.g. --data repeated)")
    out = []
    for pat in layers:  # [batch, head, q, k]
        mass = torch.einsum("bhqk,bqk->hbq", pat, mask.to(pat.dtype))  # [head, batch, q]
        out.append((mass * has).sum((-1, -2)) / has.sum())
    return torch.stack(out)


def previous_token(inp) -> torch.Tensor:
    if inp.batch.tokens.shape[-1] < 2:
        raise UsageError("previous_token needs sequences of at least 2 tokens")
    return torch.stack([pat.diagonal(offset=-1, dim1=-2, dim2=-1).mean((0, 2)) for pat in patterns(inp)])


def duplicate_token(inp) -> torch.Tensor:
    return masked_score(patterns(inp), duplicate_mask(inp.batch.tokens.to(inp.model.device)))


def induction(inp) -> torch.Tensor:
    return masked_score(patterns(inp), induction_mask(inp.batch.tokens.to(inp.model.device)))
