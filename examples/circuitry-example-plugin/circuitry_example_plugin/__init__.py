"""An example third-party circuitry plugin.

It registers one detector, `current_token` (mean attention of each position to
itself), and one dataset, `shuffled` (a random permutation of the vocabulary
repeated twice). Installed, it shows up in `circuitry plugins` and its detector
in `circuitry scan`.
"""

from __future__ import annotations

import torch

from circuitry import hookimpl
from circuitry.data import TokenBatch
from circuitry.records import Dataset, Detector

__version__ = "0.2.0"


def current_token(inp) -> torch.Tensor:
    """Mean attention from each position to itself -> [layer, head]."""
    n = inp.model.cfg.n_layers
    pats = torch.stack([inp.cache[f"blocks.{l}.attn.hook_pattern"] for l in range(n)])
    return pats.diagonal(dim1=-2, dim2=-1).mean((1, 3))


def shuffled(model, *, batch: int, length: int, seed: int) -> TokenBatch:
    """A random permutation of `length` distinct tokens, repeated twice."""
    gen = torch.Generator().manual_seed(seed)
    n = model.cfg.d_vocab - (1 if model.cfg.bos_token_id is not None else 0)
    block = torch.stack([torch.randperm(n, generator=gen)[:length] for _ in range(batch)])
    tokens = block.repeat(1, 2)
    pred = torch.zeros_like(tokens, dtype=torch.bool)
    pred[:, length:-1] = True
    fresh = torch.zeros_like(pred)
    fresh[:, : length - 1] = True
    return TokenBatch(tokens, pred, fresh, length, f"shuffled ({batch} x {length} x 2, seed {seed})")


@hookimpl
def circuitry_detectors():
    return [Detector("current_token", "mean attention of each position to itself", current_token)]


@hookimpl
def circuitry_datasets():
    return [Dataset("shuffled", "a random permutation of distinct tokens, repeated twice", shuffled,
                    {"batch": 8, "length": 10, "seed": 0})]
