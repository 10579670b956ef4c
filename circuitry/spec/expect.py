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
# one way to match each number (`\d+(?:\.\d*)?`, not `\d+\.?\d*`), so a long run of digits that does not
# fit is refused in linear time instead of backtracking over every split of the digits
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_CMP_RE = rf"\s*(>=|<=|>|<)\s*({_NUM})\s*"
_EQ_RE = rf"\s*==\s*({_NUM})\s*(?:(?:\+-|±)\s*({_NUM}))?\s*"
_RANGE_RE = rf"\s*({_NUM})\s*\.\.\s*({_NUM})\s*"
_CMP, _EQ, _RANGE = (re.compile(rf"^{r}$") for r in (_CMP_RE, _EQ_RE, _RANGE_RE))
# every string form, for the JSON Schema (groups made non-capturing)
PATTERN = "^(?:" + "|".join(r.replace("(?:", "(").replace("(", "(?:") for r in (_CMP_RE, _EQ_RE, _RANGE_RE)) + ")$"

SYNTAX = "'>= X', '> X', '<= X', '< X', '== X +- TOL', 'A .. B', [A, B] or a number (meaning >= it)"


class ExpectationError(ValueError):
    """Raised with a message saying what was expected."""


def _show(raw) -> str:
    """repr(raw), shortened to a readable fragment (a message quotes what was written, not all of it)."""
    text = repr(raw)
    return text if len(text) <= 60 else text[:57] + "..."


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
            tol = self.b or 0.0  # as bounds, so "== 1 +- 0.1" holds at 1.1 despite float rounding of 1.1 - 1
            return self.a - tol <= value <= self.a + tol
        return _OPS[self.op](value, self.a)

    def __str__(self) -> str:
        if self.op == "range":
            return f"{self.a:g} .. {self.b:g}"
        if self.op == "==":
            return f"== {self.a:g}" + (f" ± {self.b:g}" if self.b else "")
        return f"{self.op} {self.a:g}"

    def to_json(self) -> str:
        return str(self)


def _finite(x: float, raw) -> float:
    if not math.isfinite(x):
        raise ExpectationError(f"expectation {_show(raw)}: bounds must be finite numbers, got {x}")
    return x


def parse_expectation(raw) -> Expectation:
    """Parse a string, number or two-element list into an `Expectation`."""
    if isinstance(raw, bool) or raw is None:
        raise ExpectationError(f"expected an expectation ({SYNTAX}), got {_show(raw)}")
    if isinstance(raw, (int, float)):
        return Expectation(">=", _finite(float(raw), raw))
    if isinstance(raw, list):
        if len(raw) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in raw):
            lo, hi = _finite(float(raw[0]), raw), _finite(float(raw[1]), raw)
            if lo > hi:
                raise ExpectationError(f"range [{lo:g}, {hi:g}] is empty: the lower bound is above the upper")
            return Expectation("range", lo, hi)
        raise ExpectationError(f"a range is a list of two numbers [low, high], got {_show(raw)}")
    if isinstance(raw, dict):
        raise ExpectationError(f"expected an expectation ({SYNTAX}), got a mapping {_show(raw)}")
    if not isinstance(raw, str):
        raise ExpectationError(f"expected an expectation ({SYNTAX}), got {type(raw).__name__} {_show(raw)}")
    if m := _CMP.match(raw):
        return Expectation(m.group(1), _finite(float(m.group(2)), raw))
    if m := _EQ.match(raw):
        tol = float(m.group(2)) if m.group(2) else 0.0
        if tol < 0:
            raise ExpectationError(f"expectation {_show(raw)}: the tolerance after '+-' must not be negative")
        return Expectation("==", _finite(float(m.group(1)), raw), _finite(tol, raw))
    if m := _RANGE.match(raw):
        lo, hi = _finite(float(m.group(1)), raw), _finite(float(m.group(2)), raw)
        if lo > hi:
            raise ExpectationError(f"range {_show(raw)} is empty: the lower bound is above the upper")
        return Expectation("range", lo, hi)
    raise ExpectationError(f"cannot read expectation {_show(raw)}; write {SYNTAX}")
