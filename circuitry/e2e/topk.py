"""Top entries of a low-rank product A @ B without forming it: row chunks sized by the chunk budget.

A vocab x vocab circuit (the QK or OV circuit of a head) is A [n, r] @ B [r, m]
with r = d_head. `row_topk` forms one chunk of rows at a time, keeps each
row's top k (`torch.topk`) and, when asked, each column's maximum and the row
it is in, and frees the chunk. The k largest entries of the whole product are
among the rows' top k, so `RowTop.top` ranks those alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitry.budget import chunk_budget, format_bytes, require

F32 = 4  # bytes of a float32
TEMPS = 3  # float32 copies of a chunk alive at once: the product, topk's work, the column maximum's


@dataclass(frozen=True)
class RowTop:
    """Per row of A @ B [n, m]: values, indices [n, k] of its k largest entries (largest first); with
    columns: col_max, col_row [m], each column's largest entry and the row holding it."""

    values: torch.Tensor
    indices: torch.Tensor
    col_max: torch.Tensor | None = None
    col_row: torch.Tensor | None = None

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


def row_topk(A: torch.Tensor, B: torch.Tensor, k: int, what: str, columns: bool = False) -> RowTop:
    """The top k entries of each row of A [n, r] @ B [r, m] (see the module docstring); `what` names the
    product in a memory refusal."""
    n, m = A.shape[0], B.shape[1]
    k = min(k, m)
    step = chunk_rows(m, what)
    values = torch.empty(n, k, dtype=torch.float32, device=A.device)
    indices = torch.empty(n, k, dtype=torch.long, device=A.device)
    col_max = torch.full((m,), -torch.inf, dtype=torch.float32, device=A.device) if columns else None
    col_row = torch.zeros(m, dtype=torch.long, device=A.device) if columns else None
    for r0 in range(0, n, step):
        rows = slice(r0, min(n, r0 + step))
        chunk = A[rows].float() @ B.float()  # [chunk, m]
        values[rows], indices[rows] = torch.topk(chunk, k, dim=1)
        if col_max is not None and col_row is not None:
            best, where = chunk.max(0)
            better = best > col_max  # strictly: an earlier row keeps a tie, as argmax over all rows does
            col_max = torch.where(better, best, col_max)
            col_row = torch.where(better, where + r0, col_row)
        del chunk
    return RowTop(values, indices, col_max, col_row)


def describe(n: int, m: int) -> str:
    """'[50257 x 50257] (9.4 GiB as float32)': the size of a product that is never formed."""
    return f"[{n} x {m}] ({format_bytes(F32 * n * m)} as float32)"
