"""Token batches: repeated random tokens, periodic repeats, token-id files.

Every generator is seeded and returns a `TokenBatch`: tokens [batch, pos] and a
mask [batch, pos] of the positions whose next token is predictable from the
context (the repeated part), for metrics such as the loss on repeats.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from circuitry.errors import UsageError


@dataclass(frozen=True)
class TokenBatch:
    """A batch of token ids with masks over next-token predictions.

    tokens [batch, pos]. predictable [batch, pos]: True at position i when
    token i+1 can be copied from context (the current token i occurred before,
    followed by token i+1): the "repeated part" whose loss measures in-context
    copying. fresh [batch, pos]: True at i when token i+1 is a first occurrence
    (random, so its loss should be near ln(vocabulary)). repeat_len is the
    period when there is one.
    """

    tokens: torch.Tensor
    predictable: torch.Tensor
    fresh: torch.Tensor
    repeat_len: int | None = None
    description: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.tokens.shape)  # type: ignore[return-value]

    def to(self, device: str | torch.device) -> "TokenBatch":
        return TokenBatch(self.tokens.to(device), self.predictable.to(device), self.fresh.to(device),
                          self.repeat_len, self.description)


def _masks(batch: int, n: int, start: int, period: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks for BOS-free positions start..n-1 holding a sequence of period `period`."""
    pred = torch.zeros(batch, n, dtype=torch.bool)
    fresh = torch.zeros(batch, n, dtype=torch.bool)
    pred[:, start + period: n - 1] = True
    fresh[:, start: min(start + period - 1, n - 1)] = True
    return pred, fresh


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _vocab_range(d_vocab: int, bos: int | None) -> int:
    """Random tokens are drawn from 0..n-1, with the BOS id excluded when it is last."""
    return d_vocab - 1 if bos is not None and bos == d_vocab - 1 else d_vocab


def repeated_tokens(d_vocab: int, bos: int | None, *, batch: int = 16, seq_len: int = 20,
                    n_repeats: int = 2, seed: int = 0) -> TokenBatch:
    """BOS + a random sequence of `seq_len` tokens repeated `n_repeats` times."""
    if seq_len < 1 or n_repeats < 1 or batch < 1:
        raise UsageError("repeated_tokens: batch, seq_len and n_repeats must be >= 1")
    n = _vocab_range(d_vocab, bos)
    block = torch.randint(0, n, (batch, seq_len), generator=_generator(seed))
    tokens = block.repeat(1, n_repeats)
    start = 0
    if bos is not None:
        tokens = torch.cat([torch.full((batch, 1), bos), tokens], dim=1)
        start = 1
    pred, fresh = _masks(batch, tokens.shape[1], start, seq_len)
    return TokenBatch(tokens, pred, fresh, seq_len,
                      f"repeated random tokens ({batch} x {seq_len} x {n_repeats}, seed {seed})")


def periodic_tokens(d_vocab: int, bos: int | None, *, batch: int = 64, n_ctx: int = 64,
                    period: int | None = None, min_period: int = 8, max_period: int = 24,
                    seed: int = 0, generator: torch.Generator | None = None) -> TokenBatch:
    """BOS + a random block of `period` tokens tiled to fill `n_ctx` (the training data).

    The period is drawn uniformly from [min_period, max_period] once per batch
    unless given.
    """
    gen = generator or _generator(seed)
    if period is None:
        period = int(torch.randint(min_period, max_period + 1, (1,), generator=gen))
    length = n_ctx - (1 if bos is not None else 0)
    block = torch.randint(0, _vocab_range(d_vocab, bos), (batch, period), generator=gen)
    reps = -(-length // period)
    tokens = block.repeat(1, reps)[:, :length]
    start = 0
    if bos is not None:
        tokens = torch.cat([torch.full((batch, 1), bos), tokens], dim=1)
        start = 1
    pred, fresh = _masks(batch, tokens.shape[1], start, period)
    return TokenBatch(tokens, pred, fresh, period,
                      f"periodic repeats ({batch} x {n_ctx}, period {period}, seed {seed})")


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


def predictable_from_repeats(tokens: torch.Tensor) -> torch.Tensor:
    """[batch, pos] True at i when token i occurred earlier in the row, followed by token i+1."""
    b, n = tokens.shape
    pred = torch.zeros(b, n, dtype=torch.bool)
    for r in range(b):
        seen: set[tuple[int, int]] = set()
        row = tokens[r].tolist()
        for i in range(n - 1):
            pair = (row[i], row[i + 1])
            pred[r, i] = pair in seen
            seen.add(pair)
    return pred
