"""Token-id files as token batches: .txt (one sequence per line), .npy and .pt.

Files come from users and other programs, so everything is checked before it
is used: the type of file, its shape, its dtype and the range of its ids;
pickles are never loaded (.npy without pickles, .pt with weights_only).
"""

from __future__ import annotations

from pathlib import Path

import torch

from circuitry.data import TokenBatch, predictable_from_repeats
from circuitry.errors import UsageError


def token_file(path: str | Path, d_vocab: int | None = None) -> TokenBatch:
    """Token ids from a file: .txt (whitespace-separated ids, one sequence per line),
    .npy (integer array [batch, pos]) or .pt (a tensor, loaded with weights_only)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"no such token file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        rows = []
        for i, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append([int(x) for x in line.split()])
            except ValueError:
                raise UsageError(f"{path}:{i}: token ids must be whitespace-separated integers") from None
        if not rows or len({len(r) for r in rows}) != 1:
            raise UsageError(f"{path}: needs at least one line, all lines of equal length")
        tokens = torch.tensor(rows)
    elif suffix == ".npy":
        try:
            import numpy as np
        except ImportError:
            raise UsageError(f"{path}: reading .npy files needs numpy (pip install numpy)") from None
        try:
            tokens = torch.from_numpy(np.load(path, allow_pickle=False))
        except ValueError as exc:
            raise UsageError(f"{path}: not a plain .npy array ({exc})") from None
    elif suffix == ".pt":
        try:
            tokens = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - torch raises many types here
            raise UsageError(f"{path}: not loadable as a tensor with weights_only=True ({exc})") from None
        if not isinstance(tokens, torch.Tensor):
            raise UsageError(f"{path}: expected a tensor of token ids, got {type(tokens).__name__}")
    else:
        raise UsageError(f"{path}: unsupported token file type {suffix!r}; use .txt, .npy or .pt")
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or tokens.is_floating_point():
        raise UsageError(f"{path}: expected integer token ids of shape [batch, pos], got {tuple(tokens.shape)}")
    tokens = tokens.long()
    if d_vocab is not None and tokens.numel() and (tokens.min() < 0 or tokens.max() >= d_vocab):
        raise UsageError(f"{path}: token ids must lie in 0..{d_vocab - 1}")
    pred = predictable_from_repeats(tokens)
    fresh = ~pred
    fresh[:, -1] = False
    return TokenBatch(tokens, pred, fresh, None, f"tokens from {path.name}")
