"""Expectations: the right-hand side of a claim, written the way people read them.

    ">= 0.9"            at least 0.9
    "< 0.5"             below 0.5
    "== 1.0 +- 0.05"    within a tolerance
    "0.5 .. 1.0"        a closed range (also a YAML list [0.5, 1.0])
    0.9                 a bare number means ">= 0.9"
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_OPS = {
    ">=": lambda v, x: v >= x,
    ">": lambda v, x: v > x,
    "<=": lambda v, x: v <= x,
    "<": lambda v, x: v < x,
}
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_CMP = re.compile(rf"^\s*(>=|<=|>|<)\s*({_NUM})\s*$")
_EQ = re.compile(rf"^\s*==\s*({_NUM})\s*(?:(?:\+-|±)\s*({_NUM}))?\s*$")
_RANGE = re.compile(rf"^\s*({_NUM})\s*\.\.\s*({_NUM})\s*$")

SYNTAX = "'>= X', '> X', '<= X', '< X', '== X +- TOL', 'A .. B', [A, B] or a number (meaning >= it)"


class ExpectationError(ValueError):
    """Raised with a message saying what was expected."""


@dataclass(frozen=True)
class Expectation:
    """A predicate on a measured number with a readable form."""

    op: str  # ">=", ">", "<=", "<", "==", "range"
    a: float
    b: float | None = None  # upper bound for range, tolerance for ==

    def holds(self, value: float) -> bool:
        if value is None or math.isnan(value):
            return False
        if self.op == "range":
            return self.a <= value <= self.b  # type: ignore[operator]
        if self.op == "==":
            return abs(value - self.a) <= (self.b or 0.0)
        return _OPS[self.op](value, self.a)

    def __str__(self) -> str:
        if self.op == "range":
            return f"{self.a:g} .. {self.b:g}"
        if self.op == "==":
            return f"== {self.a:g}" + (f" ± {self.b:g}" if self.b else "")
        return f"{self.op} {self.a:g}"

    def to_json(self) -> str:
        return str(self)


def parse_expectation(raw) -> Expectation:
    """Parse a string, number or two-element list into an `Expectation`."""
    if isinstance(raw, bool):
        raise ExpectationError(f"expected an expectation ({SYNTAX}), got {raw!r}")
    if isinstance(raw, (int, float)):
        return Expectation(">=", float(raw))
    if isinstance(raw, list):
        if len(raw) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in raw):
            lo, hi = float(raw[0]), float(raw[1])
            if lo > hi:
                raise ExpectationError(f"range [{lo:g}, {hi:g}] is empty: the lower bound is above the upper")
            return Expectation("range", lo, hi)
        raise ExpectationError(f"a range is a list of two numbers [low, high], got {raw!r}")
    if not isinstance(raw, str):
        raise ExpectationError(f"expected an expectation ({SYNTAX}), got {type(raw).__name__}")
    if m := _CMP.match(raw):
        return Expectation(m.group(1), float(m.group(2)))
    if m := _EQ.match(raw):
        return Expectation("==", float(m.group(1)), float(m.group(2)) if m.group(2) else 0.0)
    if m := _RANGE.match(raw):
        lo, hi = float(m.group(1)), float(m.group(2))
        if lo > hi:
            raise ExpectationError(f"range {raw!r} is empty: the lower bound is above the upper")
        return Expectation("range", lo, hi)
    raise ExpectationError(f"cannot read expectation {raw!r}; write {SYNTAX}")
