"""Expectations: every written form, what each accepts at its boundary, and the errors."""

from __future__ import annotations

import math
import re

import pytest

from circuitry.spec.expect import PATTERN, Expectation, ExpectationError, parse_expectation


@pytest.mark.parametrize("raw,op,a,b,text", [
    (">= 0.9", ">=", 0.9, None, ">= 0.9"),
    (">0.5", ">", 0.5, None, "> 0.5"),
    ("<= -1", "<=", -1.0, None, "<= -1"),
    ("  <  2e-3  ", "<", 0.002, None, "< 0.002"),
    ("== 1.0 +- 0.05", "==", 1.0, 0.05, "== 1 ± 0.05"),
    ("== 2 ± .5", "==", 2.0, 0.5, "== 2 ± 0.5"),
    ("== 3", "==", 3.0, 0.0, "== 3"),
    ("0.5 .. 1.0", "range", 0.5, 1.0, "0.5 .. 1"),
    ("-1..+1", "range", -1.0, 1.0, "-1 .. 1"),
    ([0.25, 4], "range", 0.25, 4.0, "0.25 .. 4"),
    (0.9, ">=", 0.9, None, ">= 0.9"),
    (2, ">=", 2.0, None, ">= 2"),
])
def test_forms(raw, op, a, b, text):
    e = parse_expectation(raw)
    assert (e.op, e.a) == (op, pytest.approx(a))
    if b is not None:
        assert e.b == pytest.approx(b)
    assert str(e) == text == e.to_json()
    assert parse_expectation(text) == e  # the readable form reads back as the same expectation


@pytest.mark.parametrize("raw,inside,outside", [
    (">= 0.9", [0.9, 1.0, 1e9], [0.8999, -1.0]),
    ("> 0.9", [0.90001, 5.0], [0.9, 0.1]),
    ("<= 0.3", [0.3, -5.0], [0.30001]),
    ("< 0.3", [0.2999, -1.0], [0.3, 1.0]),
    ("== 1 +- 0.1", [1.0, 0.9, 1.1, 0.95], [0.89, 1.11]),
    ("== 1", [1.0], [1.0000001, 0.9999999]),
    ("0.5 .. 1", [0.5, 0.75, 1.0], [0.4999, 1.0001]),
    ([2, 2], [2.0], [1.99, 2.01]),
    (0, [0.0, 3.0], [-0.001]),
])
def test_holds_at_the_boundaries(raw, inside, outside):
    e = parse_expectation(raw)
    assert all(e.holds(v) for v in inside), [v for v in inside if not e.holds(v)]
    assert not any(e.holds(v) for v in outside), [v for v in outside if e.holds(v)]


@pytest.mark.parametrize("raw", [">= 0", "< 1", "== 0 +- 10", "-1e9 .. 1e9", [-1, 1]])
def test_nan_and_none_never_hold(raw):
    e = parse_expectation(raw)
    assert not e.holds(math.nan)
    assert not e.holds(None)


@pytest.mark.parametrize("raw,message", [
    (">= abc", "cannot read expectation '>= abc'; write '>= X'"),
    ("=> 0.9", "cannot read expectation '=> 0.9'"),
    ("0.9", "cannot read expectation '0.9'"),  # a string number: write 0.9 or '>= 0.9'
    ("", "cannot read expectation ''"),
    (">= 0.9 or < 0.1", "cannot read expectation"),
    ("== 1 +- ", "cannot read expectation"),
    ("== 1 +- -0.1", "the tolerance after '+-' must not be negative"),
    (">= nan", "cannot read expectation '>= nan'"),
    ("1.0 .. 0.5", "range '1.0 .. 0.5' is empty: the lower bound is above the upper"),
    ([1.0, 0.5], "range [1, 0.5] is empty"),
    ([1], "a range is a list of two numbers [low, high], got [1]"),
    ([1, 2, 3], "a range is a list of two numbers"),
    ([1, "2"], "a range is a list of two numbers"),
    ([True, 2], "a range is a list of two numbers"),
    (True, "expected an expectation"),
    (None, "expected an expectation"),
    ({"change": ">= 1"}, "got a mapping"),
    (float("inf"), "bounds must be finite numbers"),
    (float("nan"), "bounds must be finite numbers"),
    (">= 1e999", "bounds must be finite numbers"),
    ([0, float("inf")], "bounds must be finite numbers"),
])
def test_errors(raw, message):
    with pytest.raises(ExpectationError) as info:
        parse_expectation(raw)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_error_lists_the_syntax():
    with pytest.raises(ExpectationError) as info:
        parse_expectation("at least 0.9")
    for form in ("'>= X'", "'== X +- TOL'", "'A .. B'", "[A, B]"):
        assert form in str(info.value)


@pytest.mark.parametrize("text", [">= 0.9", "<1", " > -2.5e3 ", "== 1 +- 0.1", "== 2 ± .5", "== 3", "0.5 .. 1",
                                  "-1..+1", ">= abc", "0.9", "=> 1", "== 1 +-", "1 ..", "", ">= 1 extra"])
def test_json_schema_pattern_agrees_with_the_parser(text):
    """The JSON Schema's string pattern accepts exactly the strings the parser reads (finite bounds)."""
    try:
        parse_expectation(text)
        parsed = True
    except ExpectationError:
        parsed = False
    assert bool(re.match(PATTERN, text)) == parsed


def test_expectation_is_a_frozen_record():
    e = Expectation(">=", 1.0)
    with pytest.raises(AttributeError):
        e.a = 2.0  # type: ignore[misc]
    assert e == parse_expectation(">= 1")
