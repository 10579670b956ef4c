"""Greedy pruning by batched sweeps (ACDC-style, on the head graph).

`prune_greedy(items, evaluate, target)` removes items (nodes or edges) from a
circuit while the circuit still recovers at least `target` of the task
metric. Each round:

1. one batched sweep: the current circuit with each remaining item removed
   alone -> the fraction recovered without it;
2. the items whose lone removal keeps the fraction >= target are sorted by
   their effect (fraction lost), smallest first (an undefined effect, NaN, last);
3. one batched sweep over the prefixes of that order (the 2, 3, ... smallest
   removed together); the longest prefix that keeps the fraction >= target
   is removed (the single smallest needs no extra run: step 1 measured it).
   With more than EXHAUSTIVE eligible items the sweep covers prefix lengths
   n, n/2, n/4, ... 2, and a second sweep up to REFINE lengths evenly spaced
   between the longest that passed and the next that failed, so a round
   costs O(n) removals rather than O(n^2).

Rounds repeat until no lone removal keeps the fraction >= target, so the
threshold is on the effect of the removals together, not on each alone:
at most (1 - target) of the task effect is given up in all. `evaluate`
receives lists of removal sets and returns one recovered fraction per set,
from one sweep.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

from circuitry.jsonable import finite_or_none


@dataclass(frozen=True)
class PruneRound:
    """One round: how many candidates were swept, what was removed, what the circuit then recovers."""

    stage: str  # "nodes" or "edges"
    candidates: int
    removed: tuple[str, ...]
    recovered: float
    interventions: int  # interventions evaluated in this round (both sweeps)
    seconds: float = 0.0

    def to_json(self) -> dict:
        """recovered is null when it is undefined (NaN)."""
        return {"stage": self.stage, "candidates": self.candidates, "removed": list(self.removed),
                "recovered": finite_or_none(self.recovered), "interventions": self.interventions,
                "seconds": round(self.seconds, 4)}


@dataclass(frozen=True)
class PruneOutcome:
    """kept / removed items in their original order; effects[item]: fraction of the task effect lost
    when the item alone is removed from the final circuit; recovered: the final circuit's fraction."""

    kept: tuple
    removed: tuple
    effects: dict = field(default_factory=dict)
    recovered: float = 1.0
    rounds: tuple[PruneRound, ...] = ()


Evaluate = Callable[[list[tuple]], list[float]]
EXHAUSTIVE = 24  # up to this many eligible items every prefix length is tried
REFINE = 16  # prefix lengths tried between the longest passing and the shortest failing one


def _grid(n: int) -> list[int]:
    """Prefix lengths n, n/2, n/4, ... down to 2 (rounded up), ascending."""
    sizes, k = set(), n
    while k >= 2:
        sizes.add(k)
        k = (k + 1) // 2 if k > 2 else 1
    return sorted(sizes)


def _smallest_first(effect: float) -> tuple[bool, float]:
    """Sort key of an effect: smallest first, NaN last."""
    return (True, 0.0) if math.isnan(effect) else (False, effect)


def _between(lo: int, hi: int) -> list[int]:
    """Up to REFINE lengths evenly spaced strictly between lo and hi."""
    inside = list(range(lo + 1, hi))
    if len(inside) <= REFINE:
        return inside
    return sorted({inside[round(i * (len(inside) - 1) / (REFINE - 1))] for i in range(REFINE)})


def _sweep_prefixes(evaluate: Evaluate, removed: list, eligible: list, lengths: list[int],
                    values: dict[int, float]) -> None:
    """One sweep: the circuit without `removed` and the first k eligible items, for each k of `lengths`;
    the fractions go into values[k]."""
    if lengths:
        for k, v in zip(lengths, evaluate([tuple(removed) + tuple(eligible[:k]) for k in lengths])):
            values[k] = v


def prune_greedy(items: Sequence[Hashable], evaluate: Evaluate, target: float, *, start: float = 1.0,
                 stage: str = "nodes", name: Callable[[Hashable], str] = str,
                 progress: Callable[[str], None] | None = None) -> PruneOutcome:
    """Remove items while the circuit recovers >= target (see the module docstring).

    start: the fraction the circuit recovers with every item present.
    """
    kept = list(items)
    removed: list = []
    current = start
    rounds: list[PruneRound] = []
    effects: dict = {}
    while kept:
        t = time.perf_counter()
        if progress:
            progress(f"{stage}: round {len(rounds) + 1}, {len(kept)} candidates, recovered {current:.3f}")
        singles = evaluate([tuple(removed) + (c,) for c in kept])
        effects = {c: current - r for c, r in zip(kept, singles)}
        alone = dict(zip(kept, singles))
        eligible = sorted((c for c in kept if alone[c] >= target), key=lambda c: _smallest_first(effects[c]))
        n_evals = len(kept)
        if not eligible:
            rounds.append(PruneRound(stage, len(kept), (), current, n_evals, time.perf_counter() - t))
            break
        values = {1: alone[eligible[0]]}
        n = len(eligible)
        _sweep_prefixes(evaluate, removed, eligible, list(range(2, n + 1)) if n <= EXHAUSTIVE else _grid(n), values)
        if n > EXHAUSTIVE:
            lo = max(k for k, v in values.items() if v >= target)
            failing = [k for k, v in values.items() if k > lo and v < target]
            if failing:
                _sweep_prefixes(evaluate, removed, eligible, _between(lo, min(failing)), values)
        n_evals += len(values) - 1
        k = max(k for k, v in values.items() if v >= target)
        gone = eligible[:k]
        removed += gone
        kept = [c for c in kept if c not in gone]
        current = values[k]
        rounds.append(PruneRound(stage, len(kept) + len(gone), tuple(name(c) for c in gone), current, n_evals,
                                 time.perf_counter() - t))
    order = {c: i for i, c in enumerate(items)}
    return PruneOutcome(tuple(kept), tuple(sorted(removed, key=lambda c: order[c])),
                        {c: effects.get(c, float("nan")) for c in kept}, current, tuple(rounds))
