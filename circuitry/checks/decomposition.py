"""Check kind `decomposition`: a path's share of a logit in the exact path decomposition."""

from __future__ import annotations

import math

from circuitry.checks.base import CheckPlan, CheckResult
from circuitry.errors import UsageError
from circuitry.records import CheckKind
from circuitry.spec.format import NODE, PATH_TERM, TARGET, Check, as_list, expectation_of
from circuitry.spec.schema import AnyOf, Field, ListOf, Str

NEAR_ZERO = 1e-9  # a total logit smaller than this makes a share meaningless


def plan(run, check: Check) -> CheckPlan:
    from circuitry.budget import require
    from circuitry.graph.decomposition import decomposition_bytes
    from circuitry.graph.paths import parse_path

    try:
        key = parse_path(tuple(as_list(check.options["path"])), run.model.cfg)
    except UsageError as exc:
        raise run.error((*check.path, "path"), str(exc)) from None
    target = check.options.get("target", "correct")
    if target != "correct":
        target = int(target)  # the schema admits 'correct', digits or an integer
        if not 0 <= target < run.model.cfg.d_vocab:
            raise run.error((*check.path, "target"), f"target token {target} is not a token id of the model "
                                                     f"(0..{run.model.cfg.d_vocab - 1})")
    b, p = run.batch.tokens.shape
    try:  # refused before any check runs, as every other problem of the spec
        require(decomposition_bytes(run.model.cfg, b, p), f"the decomposition of {b} x {p} tokens")
    except UsageError as exc:
        raise run.error(check.path, str(exc)) from None
    return CheckPlan(needs=frozenset({"scales"}), state=(key, target))


def measure(run, check: Check, plan: CheckPlan) -> CheckResult:
    key, target = plan.state
    dec = run.decomposition()
    try:
        proj = dec.project(target, paths=[key])  # the one term; its total() is still the whole logit
    except UsageError as exc:
        raise run.error((*check.path, "target"), str(exc)) from None
    positions = check.options.get("positions", "predictable")
    mask = run.batch.predictable.to(proj.valid.device) if positions == "predictable" else None
    term = float(proj.mean(mask)[proj.paths.index(key)])
    total = float(proj.total()[proj._mask(mask)].mean())
    if abs(total) <= NEAR_ZERO:
        run.warn(f"check {check.id!r}: the total logit is {total:.3g}, so a share of it is not meaningful",
                 check.path)
    share = term / total if total else math.nan
    _, exp = expectation_of(check)
    name = " -> ".join(key)
    what = "correct-token" if target == "correct" else f"token {target}"
    return CheckResult(check.id, check.kind, f"share of the {what} logit through {name}", share, str(exp),
                       exp.holds(share), {"term_mean": term, "total_mean": total, "positions": positions})


KIND = CheckKind(
    "decomposition", "a path's share of the target logit in the exact decomposition",
    fields={
        "path": Field(AnyOf((PATH_TERM, ListOf(NODE, min_items=1))), required=True,
                      doc="a path term: a head, an MLP, direct, bias, remainder, or [A, B]: two heads in "
                          "increasing layers (a virtual head)"),
        "target": Field(TARGET),
        "positions": Field(Str(choices=("predictable", "all")), doc="default: predictable"),
    },
    plan=plan, measure=measure, expect_doc="on the path's share of the target logit")
