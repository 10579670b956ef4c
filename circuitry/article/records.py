"""The records of the reproduction: a measured number over seeds, one claim's result, the whole reproduction.

Strict JSON throughout (`to_json`): a number that is undefined (a seed whose run has no phase change, a
variant this version cannot train) is null, never NaN.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from circuitry.jsonable import finite_or_none

VERDICTS = ("reproduced", "partly", "not reproduced", "not testable")


@dataclass(frozen=True)
class Number:
    """One measured quantity, one value per seed (None where it is undefined for that seed)."""

    name: str
    per_seed: tuple[float | None, ...]
    unit: str = ""

    @property
    def defined(self) -> list[float]:
        return [v for v in self.per_seed if v is not None and math.isfinite(v)]

    @property
    def mean(self) -> float | None:
        vals = self.defined
        return statistics.fmean(vals) if vals else None

    @property
    def spread(self) -> float | None:
        """The sample standard deviation over the seeds that define the number (0 for one seed)."""
        vals = self.defined
        if not vals:
            return None
        return statistics.stdev(vals) if len(vals) > 1 else 0.0

    def text(self, digits: int = 3) -> str:
        """'mean ± spread' (or 'n/a'), with the unit."""
        if self.mean is None:
            return "n/a"
        unit = f" {self.unit}" if self.unit else ""
        if len(self.per_seed) == 1:
            return f"{self.mean:.{digits}f}{unit}"
        return f"{self.mean:.{digits}f} ± {self.spread:.{digits}f}{unit}"

    def to_json(self) -> dict:
        return {"name": self.name, "unit": self.unit, "per_seed": [finite_or_none(v) for v in self.per_seed],
                "mean": finite_or_none(self.mean), "spread": finite_or_none(self.spread)}


@dataclass(frozen=True)
class ClaimResult:
    """One claim of the article: its words, how it is tested, the numbers per seed, the verdict and why."""

    key: str
    section: str
    claim: str
    how: str
    seeds: tuple[int, ...]
    numbers: tuple[Number, ...]
    verdict: str
    why: str
    pictures: tuple[str, ...] = ()  # files under the output directory
    details: dict = field(default_factory=dict)  # per-seed extras (head names, steps), JSON-ready

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    def number(self, name: str) -> Number:
        for n in self.numbers:
            if n.name == name:
                return n
        raise KeyError(f"{self.key} has no number {name!r}; it has {', '.join(n.name for n in self.numbers)}")

    def to_json(self) -> dict:
        return {"key": self.key, "section": self.section, "claim": self.claim, "how": self.how,
                "seeds": list(self.seeds), "numbers": [n.to_json() for n in self.numbers],
                "verdict": self.verdict, "why": self.why, "pictures": list(self.pictures), "details": self.details}


@dataclass(frozen=True)
class Reproduction:
    """Every claim's result, the runs' settings and the measured time."""

    claims: tuple[ClaimResult, ...]
    seeds: tuple[int, ...]
    steps: int
    checkpoint_every: int
    seconds: float
    train_seconds: float
    page: str  # the HTML page written
    notes: tuple[str, ...] = ()

    def claim(self, key: str) -> ClaimResult:
        for c in self.claims:
            if c.key == key:
                return c
        raise KeyError(f"no claim {key!r}; claims: {', '.join(c.key for c in self.claims)}")

    def to_json(self) -> dict:
        return {"seeds": list(self.seeds), "steps": self.steps, "checkpoint_every": self.checkpoint_every,
                "seconds": round(self.seconds, 2), "train_seconds": round(self.train_seconds, 2), "page": self.page,
                "notes": list(self.notes), "claims": [c.to_json() for c in self.claims]}
