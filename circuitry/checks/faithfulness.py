"""Check kind `faithfulness`: the fraction of a metric the circuit recovers with everything else ablated.

    recovered = (M(all ablated) - M(circuit only)) / (M(all ablated) - M(clean))

When every component belongs to the circuit nothing is left to ablate and the
circuit is the whole model: the fraction is 1 by definition (a note says so).
When ablating everything barely changes the metric, the fraction is
meaningless: the check reports it with a warning that gives both values.
"""

from __future__ import annotations

import math

from circuitry.checks.base import CheckPlan, CheckResult, Sweep
from circuitry.checks.intervention import needs_of
from circuitry.records import CheckKind
from circuitry.spec.format import INTERVENTIONS, METRICS, NODES, Check, expectation_of
from circuitry.spec.schema import Field

NEAR_ZERO = 1e-6  # |M(all ablated) - M(clean)| below this (relative to |M(clean)|, at least 1) is no effect


def plan(run, check: Check) -> CheckPlan:
    from circuitry.interventions import Combined, Node

    path, options = check.path, check.options
    method = options.get("ablation", "mean")
    record = run.lookup("circuitry_interventions", method, (*path, "ablation") if "ablation" in options else path)
    metric = options.get("metric", "loss")
    run.lookup("circuitry_metrics", metric, (*path, "metric") if "metric" in options else path)
    nodes = run.check_nodes(check) if "nodes" in options else list(run.spec.nodes)
    every = run.every_component()
    outside = [n for n in every if n not in nodes]
    circuit = [n for n in every if n in nodes]
    if not outside:  # the circuit is the whole model: nothing to ablate, recovered is 1 by definition
        return CheckPlan(state=(circuit, True))
    build = lambda names: Combined(tuple(record.build(Node.parse(n)) for n in names))  # noqa: E731
    all_ablated = build(every)
    return CheckPlan(needs=needs_of(all_ablated), state=(circuit, False),
                     sweeps=(Sweep(f"{check.id}:all", metric, all_ablated),
                             Sweep(f"{check.id}:outside", metric, build(outside))))


def measure(run, check: Check, plan: CheckPlan) -> CheckResult:
    metric = check.options.get("metric", "loss")
    method = check.options.get("ablation", "mean")
    nodes, whole = plan.state
    _, exp = expectation_of(check)
    claim = f"{metric} recovered by {', '.join(nodes)} ({method}-ablating the rest)"
    clean = run.metric_clean(metric)
    if whole:
        return CheckResult(check.id, check.kind, claim, 1.0, str(exp), exp.holds(1.0),
                           {"metric_clean": clean, "note": "the circuit holds every component, so nothing is "
                                                           "ablated and it recovers the whole metric by definition"})
    all_ablated, circuit_only = run.swept[f"{check.id}:all"], run.swept[f"{check.id}:outside"]
    denom = all_ablated - clean
    if abs(denom) <= NEAR_ZERO * max(1.0, abs(clean)):
        run.warn(f"check {check.id!r}: {method}-ablating every component leaves {metric} almost unchanged "
                 f"(clean {clean:.6g}, all ablated {all_ablated:.6g}), so the fraction recovered is not "
                 f"meaningful", check.path)
    frac = (all_ablated - circuit_only) / denom if denom else math.nan
    return CheckResult(check.id, check.kind, claim, frac, str(exp), exp.holds(frac),
                       {"metric_clean": clean, "metric_all_ablated": all_ablated,
                        "metric_circuit_only": circuit_only})


KIND = CheckKind(
    "faithfulness", "fraction of the metric recovered by the circuit alone",
    fields={
        "ablation": Field(INTERVENTIONS, doc="how nodes outside the circuit are removed (default: mean)"),
        "metric": Field(METRICS, doc="default: loss"),
        "nodes": Field(NODES, doc="the circuit (default: its nodes)"),
    },
    plan=plan, measure=measure, expect_doc="on the fraction of the metric recovered")
