"""`PatchingResult`: the record of one activation-patching sweep."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class PatchingResult:
    """What one sweep measured.

    values: the metric on every patched run (float64), shaped by `dims`:
    [layer, pos] (layer kinds, per position), [layer] (layer kinds, every
    position at once), [layer, head] (head kinds), [layer, head, pos] (head
    kinds, per position). normalised: the same shape, the normalised effect
    (`circuitry.patching.normalise`: 1 = the patch carries the whole
    clean-corrupted difference, for noising and denoising alike), NaN when
    the clean and corrupted values are too close to normalise. clean /
    corrupted: the metric on the unpatched clean and corrupted runs.
    labels: one tuple of labels per axis (`L0`..., `H0`..., positions by
    name where every prompt has that name at that index, else the index).
    direction: "noising" (corrupted activations into the clean run) or
    "denoising" (clean activations into the corrupted run). n_passes: forward
    passes run, the clean and corrupted runs included; n_unchanged: patches
    that change nothing (their activation is the same on both runs, e.g.
    positions before the first token where the prompts differ), not run.
    """

    what: str
    values: torch.Tensor
    normalised: torch.Tensor
    clean: float
    corrupted: float
    dims: tuple[str, ...]
    labels: tuple[tuple[str, ...], ...]
    direction: str
    n_passes: int
    n_patches: int
    n_unchanged: int = 0

    def axis(self, dim: str) -> tuple[str, ...]:
        """The labels of one axis ("layer", "head", "pos"); () when the result has no such axis."""
        return self.labels[self.dims.index(dim)] if dim in self.dims else ()

    @property
    def layers(self) -> tuple[str, ...]:
        return self.axis("layer")

    @property
    def heads(self) -> tuple[str, ...]:
        return self.axis("head")

    @property
    def positions(self) -> tuple[str, ...]:
        return self.axis("pos")
