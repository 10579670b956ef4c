"""Top entries of a low-rank product A @ B without forming it: row chunks sized by the chunk budget.

A vocab x vocab circuit (the QK or OV circuit of a head) is A [n, r] @ B [r, m]
with r = d_head. `row_topk` forms one chunk of rows at a time, keeps each
row's top k (`torch.topk`) and frees the chunk. The k largest entries of the
whole product are among the rows' top k, so `RowTop.top` ranks those alone.
A column's largest entries are the rows' of the transposed product B^T A^T
(a reduction along the contiguous dimension is several times faster than one
across rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitry.budget import chunk_budget, format_bytes, require

F32 = 4  # bytes of a float32
TEMPS = 2  # float32 copies of a chunk alive at once: the product and topk's work


@dataclass(frozen=True)
class RowTop:
    """Per row of A @ B [n, m]: values, indices [n, k] of its k largest entries (largest first)."""

    values: torch.Tensor
    indices: torch.Tensor

    def top(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(values, rows, cols) [<= k] of the k largest entries of the whole product, largest first."""
        flat = self.values.reshape(-1)
        vals, pos = torch.topk(flat, min(k, flat.numel()))
        width = self.values.shape[1]
        rows = torch.div(pos, width, rounding_mode="floor")
        return vals, rows, self.indices.reshape(-1)[pos]


def chunk_rows(m: int, what: str) -> int:
    """Rows of an [n, m] float32 product per chunk; a UsageError naming the numbers when even one row
    does not fit the chunk budget."""
    per_row = TEMPS * F32 * m
    budget = chunk_budget()
    require(per_row, f"one row of {what} ({m} entries, float32)", budget=budget)
    return max(1, budget // per_row)


def row_topk(A: torch.Tensor, B: torch.Tensor, k: int, what: str) -> RowTop:
    """The top k entries of each row of A [n, r] @ B [r, m] (see the module docstring); `what` names the
    product in a memory refusal."""
    n, m = A.shape[0], B.shape[1]
    k = min(k, m)
    step = chunk_rows(m, what)
    values = torch.empty(n, k, dtype=torch.float32, device=A.device)
    indices = torch.empty(n, k, dtype=torch.long, device=A.device)
    for r0 in range(0, n, step):
        rows = slice(r0, min(n, r0 + step))
        chunk = A[rows].float() @ B.float()  # [chunk, m]
        values[rows], indices[rows] = torch.topk(chunk, k, dim=1)
        del chunk
    return RowTop(values, indices)


def describe(n: int, m: int) -> str:
    """'[50257 x 50257] (9.4 GiB as float32)': the size of a product that is never formed."""
    return f"[{n} x {m}] ({format_bytes(F32 * n * m)} as float32)"
