"""Where an intervention acts along the sequence: `at`, None (every position) or a bool mask [batch, pos].

A mask's rows may differ (named positions differ from prompt to prompt); row i
of the mask belongs to row i of the run the intervention changes. Outside the
mask the run is untouched. Records keep the mask as given and compare by a
key made of its shape and True indices, so equal masks make equal records.
"""

from __future__ import annotations

import torch

from circuitry.errors import UsageError

AtKey = tuple[tuple[int, ...], tuple[int, ...]]  # (shape, flat indices of the True entries)


def check_at(at: object) -> torch.Tensor | None:
    """`at` itself when it is None or a bool tensor [batch, pos]; a UsageError otherwise."""
    if at is None:
        return None
    if not isinstance(at, torch.Tensor) or at.dtype != torch.bool or at.ndim != 2:
        got = (f"a {at.dtype} tensor of shape {tuple(at.shape)}" if isinstance(at, torch.Tensor)
               else type(at).__name__)
        raise UsageError(f"at must be None (every position) or a bool mask [batch, pos] (e.g. "
                         f"ContrastiveBatch.mask(['S2'])), got {got}")
    return at


def at_key(at: torch.Tensor | None) -> AtKey | None:
    """A hashable key of a mask: equal for masks with the same shape and the same True entries."""
    if at is None:
        return None
    flat = at.detach().reshape(-1).nonzero().reshape(-1).tolist()
    return tuple(at.shape), tuple(flat)


def at_label(at: torch.Tensor | None) -> str:
    """' at pos 3' / ' at pos 2, 5' when every row has the same positions, else ' at 7 positions'; '' for None."""
    if at is None:
        return ""
    cols = at.any(0)
    same = bool((at == cols[None]).all())
    idx = cols.nonzero().reshape(-1).tolist()
    if same and len(idx) <= 4:
        return " at pos " + ", ".join(map(str, idx)) if idx else " at no position"
    return f" at {int(at.sum())} positions" if not same else f" at {len(idx)} positions per row"


def fit_mask(at: torch.Tensor | None, batch: int, pos: int, device: torch.device, name: str) -> torch.Tensor | None:
    """The mask on `device`, checked against the run it changes [batch, pos]; None stays None."""
    if at is None:
        return None
    if tuple(at.shape) != (batch, pos):
        raise UsageError(f"{name}: at has shape {tuple(at.shape)}; it must be a mask [batch, pos] of the run it "
                         f"changes, [{batch}, {pos}]")
    return at.to(device)
