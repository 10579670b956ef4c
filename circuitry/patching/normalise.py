"""The normalised effect of a patch: the share of the clean-corrupted metric difference it carries.

Denoising (clean activations patched into the corrupted run):
    (M_patched - M_corrupted) / (M_clean - M_corrupted)
Noising (corrupted activations patched into the clean run):
    (M_clean - M_patched) / (M_clean - M_corrupted)
In both, 1 means the patch carries the whole difference (it alone turns the
run into the other one, as far as the metric sees) and 0 that it carries none.

Refused (every value NaN, and a warning with both numbers) when the two runs
hardly differ: |M_clean - M_corrupted| <= RELATIVE_TOLERANCE * max(|M_clean|,
|M_corrupted|) (both zero included). Below that, the patched values' float
rounding (about 1e-6 of the metric's scale) would be magnified more than a
thousandfold, and the ratio would mean nothing.
"""

from __future__ import annotations

import math

import torch

from circuitry.diagnostics import warn

RELATIVE_TOLERANCE = 1e-3
DIRECTIONS = ("noising", "denoising")


def too_close(clean: float, corrupted: float) -> bool:
    """Whether the clean and corrupted metric values are too close to normalise by their difference."""
    diff = clean - corrupted
    if not (math.isfinite(clean) and math.isfinite(corrupted)):
        return True
    return abs(diff) <= RELATIVE_TOLERANCE * max(abs(clean), abs(corrupted))


def normalise(values: torch.Tensor, clean: float, corrupted: float, direction: str) -> torch.Tensor:
    """Normalised effects of patched metric values (any shape), or NaNs and a warning when refused."""
    if too_close(clean, corrupted):
        warn(f"activation patching: the metric is {clean:.6g} on the clean run and {corrupted:.6g} on the "
             f"corrupted run; their difference ({clean - corrupted:.3g}) is within {RELATIVE_TOLERANCE:g} of the "
             f"metric's scale, so the normalised effects are not computed (NaN): the task's corruption does not "
             f"change the metric")
        return torch.full_like(values, float("nan"))
    if direction == "denoising":
        return (values - corrupted) / (clean - corrupted)
    return (clean - values) / (clean - corrupted)
