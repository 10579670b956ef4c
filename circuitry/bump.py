"""The phase-change "bump" of a training loss curve: where the loss, after slowing down, falls steeply again.

Olsson et al. (2022) see the induction phase change as a bump in the training
loss: the curve flattens after its initial descent, then drops steeply for a
short while, then flattens again. `loss_bump(losses, steps)` locates it:

1. Smooth: a centred moving average of the per-step loss over a window of
   w = 2h + 1 steps, h = max(2, n // 40) (about n / 20 steps: 75 of 1500).
2. Descent rate: r(t) = (L(t - h) - L(t + h)) / (step(t + h) - step(t - h))
   on the smoothed loss L, in nats per step (positive while the loss falls).
3. Plateau rate: p(t) = max(0, min of r over every step up to t), the slowest
   descent so far (never below 0: a loss that rises for a while is not a
   slower plateau).
4. The bump is the step of the largest excess rate e(t) = r(t) - p(t): the
   steepest descent measured against the slowest descent before it. A curve
   whose descent only ever slows (a power law) has e = 0 up to noise.
5. Its extent: from the last step before it to the first step after it where
   e falls to half its peak (`start`: where the loss departs from its plateau;
   `end`). Excess drop: the fall of L from start to end beyond what the
   plateau rate would give over the same steps.

It is a bump when the descent at least triples (r >= MIN_ACCELERATION * p at
the peak) and the excess drop is at least MIN_DROP_FRACTION of the smoothed
loss's whole fall over the run; otherwise `loss_bump` is None and
`find_loss_bump` says why. Curves shorter than MIN_STEPS steps, or with a
non-finite loss, have no bump either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from circuitry.jsonable import finite_or_none

MIN_STEPS = 50
MIN_ACCELERATION = 3.0  # the peak descent rate over the plateau rate
MIN_DROP_FRACTION = 0.2  # the bump's excess drop over the smoothed loss's whole fall


@dataclass(frozen=True)
class Bump:
    """The bump of a loss curve (steps are training steps; rates in nats per step; losses smoothed)."""

    step: int  # steepest descent against the plateau before it
    start: int  # where the excess descent first reaches half its peak: the loss leaves its plateau
    end: int  # where it falls back to half its peak
    peak_rate: float
    plateau_rate: float
    loss_before: float  # the smoothed loss at `start`
    loss_after: float  # at `end`
    excess_drop: float  # loss_before - loss_after beyond plateau_rate * (end - start)
    total_drop: float  # the smoothed loss's fall over the whole run
    window: int  # the smoothing window, steps

    def to_json(self) -> dict:
        """Every field (all finite for a bump that was found)."""
        return {k: finite_or_none(v) if isinstance(v, float) else v for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class SmoothedCurve:
    """The smoothed loss and its descent rate, both at `steps` (the centres of the rate's window)."""

    steps: tuple[int, ...]
    loss: tuple[float, ...]  # smoothed loss at `steps`
    rate: tuple[float, ...]  # descent rate at `steps`
    plateau: tuple[float, ...]  # plateau rate at `steps`
    window: int


def smooth(losses: Sequence[float], steps: Sequence[int] | None = None) -> SmoothedCurve:
    """Steps 1-3 of the module docstring (ValueError for fewer than MIN_STEPS losses or mismatched steps)."""
    n = len(losses)
    steps = list(range(1, n + 1)) if steps is None else [int(s) for s in steps]
    if len(steps) != n:
        raise ValueError(f"{n} losses for {len(steps)} steps")
    if n < MIN_STEPS:
        raise ValueError(f"a loss curve of {n} steps is too short to find a bump in (at least {MIN_STEPS})")
    h = max(2, n // 40)
    w = 2 * h + 1
    x = torch.tensor([float(v) for v in losses], dtype=torch.float64)  # [n]
    csum = torch.cat([torch.zeros(1, dtype=torch.float64), x.cumsum(0)])  # [n + 1]
    sm = (csum[w:] - csum[:-w]) / w  # [n - 2h]: sm[i] is centred on step index i + h
    st = torch.tensor(steps, dtype=torch.float64)
    centres = torch.arange(2 * h, n - 2 * h)  # step indices where the rate is defined
    rate = (sm[centres - 2 * h] - sm[centres]) / (st[centres + h] - st[centres - h])  # [m]
    plateau = torch.cummin(rate, 0).values.clamp(min=0.0)
    return SmoothedCurve(tuple(steps[i] for i in centres.tolist()), tuple(sm[centres - h].tolist()),
                         tuple(rate.tolist()), tuple(plateau.tolist()), w)


def find_loss_bump(losses: Sequence[float | None], steps: Sequence[int] | None = None) -> tuple[Bump | None, str]:
    """The bump of the module docstring, or (None, why there is none)."""
    for i, v in enumerate(losses):
        if v is None or not math.isfinite(v):
            where = steps[i] if steps is not None and i < len(steps) else i + 1
            return None, f"the loss is not finite at step {where} (a diverged run)"
    values = [float(v) for v in losses if v is not None]  # every one of them (checked above)
    try:
        c = smooth(values, steps)
    except ValueError as exc:
        return None, str(exc)
    total = (sum(values[: c.window]) - sum(values[-c.window:])) / c.window
    if total <= 0:
        return None, "the loss does not fall over the run"
    excess = [r - p for r, p in zip(c.rate, c.plateau)]
    j = max(range(len(excess)), key=lambda k: excess[k])
    if excess[j] <= 0:
        return None, "the descent never speeds up (it only slows down)"
    half = excess[j] / 2
    a = j
    while a > 0 and excess[a - 1] > half:
        a -= 1
    b = j
    while b < len(excess) - 1 and excess[b + 1] > half:
        b += 1
    a, b = max(0, a - 1), min(len(excess) - 1, b + 1)  # the half-peak crossings themselves
    peak, plat = c.rate[j], c.plateau[j]
    drop = c.loss[a] - c.loss[b] - plat * (c.steps[b] - c.steps[a])
    bump = Bump(c.steps[j], c.steps[a], c.steps[b], peak, plat, c.loss[a], c.loss[b], drop, total, c.window)
    if peak < MIN_ACCELERATION * plat:
        return None, (f"the steepest speed-up (step {bump.step}) is only {peak / plat:.1f}x the plateau's descent "
                      f"(a bump needs {MIN_ACCELERATION:g}x)")
    if drop < MIN_DROP_FRACTION * total:
        return None, (f"the steepest speed-up (step {bump.step}) drops the loss by {drop:.3f} nats beyond the "
                      f"plateau, {drop / total:.0%} of its whole fall (a bump needs {MIN_DROP_FRACTION:.0%})")
    return bump, ""


def loss_bump(losses: Sequence[float | None], steps: Sequence[int] | None = None) -> Bump | None:
    """The bump of the loss curve (`losses[i]` at training step `steps[i]`, default 1, 2, ...), or None."""
    return find_loss_bump(losses, steps)[0]
