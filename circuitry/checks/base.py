"""What every check kind shares: the plan of a check, its result, and helpers to build them.

A check kind (`circuitry.records.CheckKind`) works in two steps on the shared
run of a spec (`circuitry.checks.run.VerifiedRun`):

1. `plan(run, check) -> CheckPlan`: check the claim against the model and say
   what it needs (attention patterns in the clean cache, the reference batch,
   normalisation scales) and which interventions must be swept. No model runs,
   so every problem of every check is reported before any work starts.
2. `measure(run, check, plan) -> CheckResult`: read the shared run (and the
   swept values, `run.swept[key]`) and compare the value with the expectation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from circuitry.jsonable import finite_or_none, finite_tree
from circuitry.spec.expect import Expectation
from circuitry.spec.format import Check

# what a plan may need of the shared run
NEEDS = ("patterns", "reference", "scales")


@dataclass(frozen=True)
class Sweep:
    """One intervention measured by a metric in the batched sweep of that metric; its value is
    `run.swept[key]` when the check is measured."""

    key: str
    metric: str
    intervention: Any
    direction: str = "noising"  # noising: on the clean run; denoising: on the corrupted run of a task


@dataclass(frozen=True)
class CheckPlan:
    """What a check needs of the shared run, the interventions it needs swept, and its own state."""

    needs: frozenset[str] = frozenset()
    sweeps: tuple[Sweep, ...] = ()
    state: Any = None

    def __post_init__(self) -> None:
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise ValueError(f"unknown needs {sorted(unknown)}; valid: {', '.join(NEEDS)}")


@dataclass(frozen=True)
class CheckResult:
    """One claim's outcome: the measured value next to the expectation."""

    id: str
    kind: str
    claim: str
    value: float | None
    expect: str
    passed: bool
    details: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict:
        """The result as strict JSON data: NaN and infinite values become null."""
        return {"id": self.id, "kind": self.kind, "claim": self.claim, "value": finite_or_none(self.value),
                "expect": self.expect, "passed": self.passed, "details": finite_tree(self.details),
                "seconds": round(self.seconds, 4)}


def all_hold(check: Check, claim: str, values: dict[str, float], exp: Expectation, expect_text: str) -> CheckResult:
    """Every value must satisfy the expectation; the reported value is the one closest to failing."""
    holds = {k: exp.holds(v) for k, v in values.items()}
    failing = [k for k, ok in holds.items() if not ok]
    if failing:
        worst = failing[0]
    elif exp.op in (">=", ">"):
        worst = min(values, key=lambda k: values[k])
    elif exp.op in ("<=", "<"):
        worst = max(values, key=lambda k: values[k])
    else:
        worst = next(iter(values))
    return CheckResult(check.id, check.kind, claim, values[worst], expect_text, not failing,
                       {"values": values} if len(values) > 1 else {})


def with_details(res: CheckResult, extra: dict) -> CheckResult:
    return replace(res, details={**res.details, **extra})


def items(value: Any, path: tuple) -> list[tuple[Any, tuple]]:
    """(item, its key path) for a value that is one item or a list of items."""
    if isinstance(value, list):
        return [(v, (*path, i)) for i, v in enumerate(value)]
    return [(value, path)]
