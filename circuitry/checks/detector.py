"""Check kind `detector`: a detector's score of each node (`previous_token(L0H0) >= 0.9`)."""

from __future__ import annotations

from circuitry.checks.base import CheckPlan, CheckResult, all_hold
from circuitry.names import head_index
from circuitry.records import CheckKind
from circuitry.spec.format import DETECTORS, NODES, Check, expectation_of
from circuitry.spec.schema import Field, Str


def plan(run, check: Check) -> CheckPlan:
    path, options = check.path, check.options
    name = options["detector"]
    det = run.lookup("circuitry_detectors", name, (*path, "detector"))
    if det.kind != "head":
        raise run.error((*path, "detector"), f"{name!r} scores pairs of heads; use a composition check")
    if "nodes" in options and "role" in options:
        raise run.error((*path, "role"), "give nodes or role, not both", at_key=True)
    nodes = run.check_nodes(check, allow=("head",))
    return CheckPlan(needs=frozenset({"patterns"}) if det.needs_cache else frozenset(), state=nodes)


def measure(run, check: Check, plan: CheckPlan) -> CheckResult:
    name = check.options["detector"]
    scores = run.detector(name, (*check.path, "detector"))
    values = {n: float(scores[head_index(n)]) for n in plan.state}
    _, exp = expectation_of(check)
    return all_hold(check, f"{name}({', '.join(plan.state)})", values, exp, str(exp))


KIND = CheckKind(
    "detector", "a detector score of each node",
    fields={
        "detector": Field(DETECTORS, required=True),
        "nodes": Field(NODES, doc="heads to check (default: the circuit's nodes whose role is the detector)"),
        "role": Field(Str(), doc="check the circuit's nodes with this role"),
    },
    plan=plan, measure=measure, expect_doc="must hold for every node")
