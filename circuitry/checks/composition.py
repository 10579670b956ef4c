"""Check kind `composition`: Q/K/V composition scores of head -> head edges, or their ratio to the
random-matrix baseline."""

from __future__ import annotations

from circuitry.checks.base import CheckPlan, CheckResult, all_hold, items, with_details
from circuitry.names import HEAD_INPUTS, head_index, parse_component
from circuitry.records import CheckKind
from circuitry.spec.format import EDGE, Check, expectation_of
from circuitry.spec.schema import AnyOf, Field, ListOf

DETECTOR = "composition"  # the pair detector that scores the edges


def plan(run, check: Check) -> CheckPlan:
    path = check.path
    if "edges" in check.options:
        given = items(check.options["edges"], (*path, "edges"))
    else:
        given = [(e, ("circuit", "edges", i)) for i, e in enumerate(run.spec.edges) if e.kind in HEAD_INPUTS]
        if not given:
            raise run.error((*path, "kind"), "the circuit has no Q/K/V edges to score; give edges: [...]")
    edges = []
    for value, p in given:
        e = run.edge(value, p)
        if e.kind not in HEAD_INPUTS or not parse_component(e.sender).is_head:
            raise run.error(p, f"{e}: composition scores are defined for head -> head Q/K/V edges")
        edges.append(e)
    det = run.lookup("circuitry_detectors", DETECTOR, (*path, "kind"))
    if det.kind != "pair":
        raise run.error((*path, "kind"), f"detector {DETECTOR!r} does not score pairs of heads")
    return CheckPlan(state=edges)


def measure(run, check: Check, plan: CheckPlan) -> CheckResult:
    pairs = run.detector(DETECTOR, (*check.path, "kind"))
    key, exp = expectation_of(check)
    values, raw = {}, {}
    for e in plan.state:
        (l1, h1), (l2, h2) = head_index(e.sender), head_index(e.receiver)
        score = float(pairs.scores[e.kind][l1, h1, l2, h2])
        base = float(pairs.baseline[e.kind])
        ratio = score / base if base else float("nan")
        raw[str(e)] = {"score": score, "baseline": base, "ratio_to_baseline": ratio}
        values[str(e)] = ratio if key == "ratio_to_baseline" else score
    what = "composition ratio to baseline" if key == "ratio_to_baseline" else "composition score"
    res = all_hold(check, f"{what} of {', '.join(values)}", values, exp,
                   f"{key} {exp}" if key == "ratio_to_baseline" else str(exp))
    return with_details(res, {"edges": raw})


KIND = CheckKind(
    "composition", "composition scores of edges",
    fields={"edges": Field(AnyOf((EDGE, ListOf(EDGE, min_items=1))),
                           doc="edges to check (default: the circuit's Q/K/V edges)")},
    plan=plan, measure=measure, expect_keys=("score", "ratio_to_baseline"),
    expect_doc="on the score, or {ratio_to_baseline: ...}; must hold for every edge")
