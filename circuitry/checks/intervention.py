"""Check kind `intervention`: the effect of an intervention (ablating nodes, patching edges) on a metric."""

from __future__ import annotations

import math
from typing import Any

from circuitry.checks.base import CheckPlan, CheckResult, Sweep, items
from circuitry.errors import UsageError
from circuitry.names import LOGITS, parse_component
from circuitry.records import CheckKind
from circuitry.spec.format import EDGE, INTERVENTIONS, METRICS, NODE, Check, expectation_of
from circuitry.spec.schema import AnyOf, Field, ListOf


def _is_edge(value: Any) -> bool:
    return isinstance(value, dict) or "->" in str(value)


def build(run, record, value: Any, path: tuple) -> Any:
    """One part of an intervention: `record` applied to the node or edge `value` of the model."""
    from circuitry.interventions import Edge as Target

    if _is_edge(value):
        e = run.edge(value, path)
        if "edge" not in record.targets:
            raise run.error(path, f"intervention {record.name!r} does not apply to edges")
        if parse_component(e.sender).kind not in ("head", "mlp"):
            raise run.error(path, f"{e}: interventions act on edges from heads and MLPs, not from {e.sender}")
        receiver: Any = LOGITS if e.kind == "direct" else e.receiver  # names are parsed into nodes
        target: Any = Target(e.sender, receiver, e.kind)
    else:
        comp = run.component(value, path)
        if comp.kind not in record.targets:
            raise run.error(path, f"intervention {record.name!r} does not apply to {comp.kind}s "
                                  f"(it applies to: {', '.join(record.targets)})")
        target = comp.name
    try:
        return record.build(target)
    except UsageError as exc:
        raise run.error(path, str(exc)) from None


def needs_of(intervention: Any) -> frozenset[str]:
    """What an intervention reads besides the clean run: the reference batch, for mean and resample parts."""
    from circuitry.interventions import parts_of

    methods = {getattr(part, "method", None) for part in parts_of(intervention)}
    return frozenset({"reference"}) if methods & {"mean", "resample"} else frozenset()


def plan(run, check: Check) -> CheckPlan:
    from circuitry.interventions import Combined

    path, options = check.path, check.options
    record = run.lookup("circuitry_interventions", options["intervention"], (*path, "intervention"))
    run.lookup("circuitry_metrics", options["metric"], (*path, "metric"))
    parts = [build(run, record, t, p) for t, p in items(options["target"], (*path, "target"))]
    intervention = parts[0] if len(parts) == 1 else Combined(tuple(parts))
    return CheckPlan(needs=needs_of(intervention), sweeps=(Sweep(check.id, options["metric"], intervention),))


def measure(run, check: Check, plan: CheckPlan) -> CheckResult:
    metric = check.options["metric"]
    value = run.swept[check.id]
    clean = run.metric_clean(metric)
    key, exp = expectation_of(check)
    measured = {"change": value - clean, "relative_change": (value - clean) / abs(clean) if clean else math.nan,
                "value": value}[key]
    targets = ", ".join(str(run.edge(t, check.path)) if _is_edge(t) else str(t)
                        for t, _ in items(check.options["target"], check.path))
    what = {"change": "change in", "relative_change": "relative change in", "value": ""}[key]
    claim = f"{check.options['intervention']} {targets}: {what} {metric}".replace("  ", " ")
    return CheckResult(check.id, check.kind, claim, measured, f"{exp}", exp.holds(measured),
                       {"metric_clean": clean, "metric_intervened": value})


KIND = CheckKind(
    "intervention", "the effect of an intervention on a metric",
    fields={
        "intervention": Field(INTERVENTIONS, required=True),
        "target": Field(AnyOf((EDGE, NODE, ListOf(AnyOf((EDGE, NODE)), min_items=1))), required=True,
                        doc="a node, an edge, or a list of them intervened on together"),
        "metric": Field(METRICS, required=True),
    },
    plan=plan, measure=measure, expect_keys=("change", "relative_change", "value"),
    expect_doc="on the change of the metric, or {relative_change: ...} / {value: ...}")
