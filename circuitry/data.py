"""Token batches: repeated random tokens and periodic repeats (token-id files: `circuitry.tokenfiles`).

Every generator is seeded and returns a `TokenBatch`: tokens [batch, pos] and a
mask [batch, pos] of the positions whose next token is predictable from the
context (the repeated part), for metrics such as the loss on repeats.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

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
    warnings: tuple[str, ...] = ()  # what may make the data not mean what it seems to (shown to the user)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.tokens.shape)  # type: ignore[return-value]

    def to(self, device: str | torch.device) -> "TokenBatch":
        return TokenBatch(self.tokens.to(device), self.predictable.to(device), self.fresh.to(device),
                          self.repeat_len, self.description, self.warnings)

    def select(self, rows: slice) -> "TokenBatch":
        """The same batch restricted to some rows (every per-row tensor, and per-row mappings of them)."""
        b = self.tokens.shape[0]
        return self.map_tensors(lambda t: t[rows] if t.ndim and t.shape[0] == b else t)

    def map_tensors(self, fn) -> "TokenBatch":
        """The same batch with fn applied to every tensor field (and to the tensors of mapping fields)."""
        def each(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return fn(value)
            if isinstance(value, Mapping):
                return {k: each(v) for k, v in value.items()}
            return value

        return replace(self, **{f.name: each(getattr(self, f.name)) for f in fields(self)
                                if isinstance(getattr(self, f.name), (torch.Tensor, Mapping))})


def _masks(batch: int, n: int, start: int, period: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks for BOS-free positions start..n-1 holding a sequence of period `period`."""
    pred = torch.zeros(batch, n, dtype=torch.bool)
    fresh = torch.zeros(batch, n, dtype=torch.bool)
    pred[:, start + period: n - 1] = True
    fresh[:, start: min(start + period - 1, n - 1)] = True
    return pred, fresh


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def allowed_ids(d_vocab: int, exclude: Iterable[int | None] = ()) -> torch.Tensor:
    """The token ids random data is drawn from: 0..d_vocab-1 without the excluded (special) ids, in order."""
    drop = {int(t) for t in exclude if t is not None and 0 <= int(t) < d_vocab}
    if len(drop) >= d_vocab:
        raise UsageError(f"no token ids are left to draw random data from (vocabulary of {d_vocab}, "
                         f"{len(drop)} special ids excluded)")
    keep = torch.ones(d_vocab, dtype=torch.bool)
    keep[list(drop)] = False
    return torch.arange(d_vocab)[keep]


def random_ids(shape: tuple[int, ...], d_vocab: int, exclude: Iterable[int | None],
               generator: torch.Generator) -> torch.Tensor:
    """Uniformly random token ids [shape] that are never one of the excluded ids (BOS, padding ...).

    When the excluded ids are the last ones of the vocabulary (BOS = d_vocab - 1, say) the draw is the
    same as drawing from 0..n-1 directly, so the data of such models does not depend on the exclusion."""
    ids = allowed_ids(d_vocab, exclude)
    return ids[torch.randint(0, len(ids), shape, generator=generator)]


def special_ids(model) -> set[int]:
    """Ids that random data must not contain: the model's BOS and its tokenizer's BOS, EOS and padding ids."""
    out = {model.cfg.bos_token_id}
    tok = getattr(model, "tokenizer", None)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tok, name, None) if tok is not None else None
        if isinstance(value, int):
            out.add(value)
    return {t for t in out if t is not None}


def repeated_tokens(d_vocab: int, bos: int | None, *, batch: int = 16, seq_len: int = 20,
                    n_repeats: int = 2, seed: int = 0, exclude: Iterable[int] = ()) -> TokenBatch:
    """BOS + a random sequence of `seq_len` tokens (never BOS or another excluded id) repeated `n_repeats` times."""
    if seq_len < 1 or n_repeats < 1 or batch < 1:
        raise UsageError("repeated_tokens: batch, seq_len and n_repeats must be >= 1")
    block = random_ids((batch, seq_len), d_vocab, {bos, *exclude}, _generator(seed))
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
                    seed: int = 0, generator: torch.Generator | None = None,
                    exclude: Iterable[int] = ()) -> TokenBatch:
    """BOS + a random block of `period` tokens tiled to fill `n_ctx` (the training data).

    The period is drawn uniformly from [min_period, max_period] once per batch
    unless given. A given period must fit in the sequence (at most `n_ctx` tokens
    after BOS): a longer one would never repeat, and its block would be drawn in
    full before being cut to the sequence.
    """
    length = n_ctx - (1 if bos is not None else 0)
    if batch < 1 or length < 0:
        raise UsageError(f"periodic_tokens: batch must be >= 1 and n_ctx >= {n_ctx - length}, "
                         f"got batch {batch}, n_ctx {n_ctx}")
    if period is not None and period < 1:
        raise UsageError(f"the period must be >= 1, got {period}")
    if period is not None and period > length:
        raise UsageError(f"period {period} is longer than the {length} random tokens of each sequence "
                         f"(n_ctx {n_ctx}): it would never repeat; give a period of at most {length}")
    gen = generator or _generator(seed)
    if period is None:
        period = int(torch.randint(min_period, max_period + 1, (1,), generator=gen))
    block = random_ids((batch, period), d_vocab, {bos, *exclude}, gen)
    reps = -(-length // period)
    tokens = block.repeat(1, reps)[:, :length]
    start = 0
    if bos is not None:
        tokens = torch.cat([torch.full((batch, 1), bos), tokens], dim=1)
        start = 1
    pred, fresh = _masks(batch, tokens.shape[1], start, period)
    return TokenBatch(tokens, pred, fresh, period,
                      f"periodic repeats ({batch} x {n_ctx}, period {period}, seed {seed})")


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
