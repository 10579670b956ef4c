"""Check kind `intervention`: the effect of an intervention on a metric.

The targets are nodes (ablated in every path), edges (path patching) and
activation sites (`L1.resid_pre`, `L1H3.q`, `L1H3.pattern` ...: activation
patching). `at` restricts the intervention to positions (names of the
spec's task, `S2`, `END`, `S1+1`, or indices). With a task, `direction`
says which run is patched: noising (default) patches the clean prompts with
the source (`intervention: corrupted`: the corrupted prompts' activations),
denoising patches the corrupted prompts with the clean prompts' activations.

Expectations: `change` (the metric patched minus on the run patched),
`relative_change`, `value`, and `normalised`, the fraction of the task's
clean-corrupted difference the intervention carries:
noising (M_clean - M_patched) / (M_clean - M_corrupted), denoising
(M_patched - M_corrupted) / (M_clean - M_corrupted); 1: all of it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from circuitry.checks.base import CheckPlan, CheckResult, Sweep, items
from circuitry.errors import UsageError
from circuitry.names import LOGITS, check_site
from circuitry.records import CheckKind
from circuitry.spec.format import EDGE, INTERVENTIONS, METRICS, NODE, Check, expectation_of
from circuitry.spec.schema import AnyOf, Field, ListOf, Str
from circuitry.tasks.format import POSITIONS

DIRECTIONS = ("noising", "denoising")
SITE = Str(check=lambda text: _site_syntax(text), pattern_doc="an activation site",
           doc="an activation site: L1.resid_pre, L0.attn_out, L1H3.q, L1H3.pattern ...")


def _site_syntax(text: str) -> None:
    from circuitry.names import parse_site

    parse_site(text)


def _is_edge(value: Any) -> bool:
    return isinstance(value, dict) or "->" in str(value)


def _target(run, value: Any, path: tuple) -> tuple[Any, str]:
    """(the target of the model `value` names, its kind: head, mlp, edge or site)."""
    from circuitry.interventions import Edge as Target

    if _is_edge(value):
        e = run.edge(value, path)
        receiver: Any = LOGITS if e.kind == "direct" else e.receiver  # names are parsed into nodes
        return Target(e.sender, receiver, e.kind), "edge"
    if "." not in str(value):
        comp = run.component(value, path)
        return comp.name, comp.kind
    try:
        return check_site(value, run.model.cfg), "site"
    except UsageError as exc:
        raise run.error(path, str(exc)) from None


def positions_mask(run, at: Any, path: tuple) -> torch.Tensor | None:
    """The bool mask [batch, pos] of the positions `at` names (None: every position)."""
    if at is None:
        return None
    wanted = at if isinstance(at, list) else [at]
    task = run.task
    try:
        if task is not None:
            return task.mask(wanted)
        if any(not isinstance(a, int) for a in wanted):
            raise run.error(path, "positions by name (S2, END ...) need a task (the spec's `task:`); give indices")
        b, p = run.batch.tokens.shape
        mask = torch.zeros(b, p, dtype=torch.bool, device=run.batch.tokens.device)
        for a in wanted:
            if not -p <= a < p:
                raise UsageError(f"position {a} is outside the sequences of {p} tokens")
            mask[:, a % p] = True
        return mask
    except UsageError as exc:
        raise run.error(path, str(exc)) from None


def build(run, record, value: Any, path: tuple, at: torch.Tensor | None = None) -> Any:
    """One part of an intervention: `record` applied to the node, edge or site `value` of the model."""
    target, kind = _target(run, value, path)
    if kind not in record.targets:
        what = {"edge": "edges", "site": "activation sites", "head": "heads", "mlp": "MLPs"}[kind]
        raise run.error(path, f"intervention {record.name!r} does not apply to {what} "
                              f"(it applies to: {', '.join(record.targets)})")
    try:
        return record.build(target) if at is None else record.build(target, at=at)
    except UsageError as exc:
        raise run.error(path, str(exc)) from None


def needs_of(intervention: Any) -> frozenset[str]:
    """What an intervention reads besides the run it patches: the reference (or paired) batch, for mean,
    resample and corrupted parts."""
    from circuitry.interventions import parts_of

    methods = {getattr(part, "method", None) for part in parts_of(intervention)}
    return frozenset({"reference"}) if methods & {"mean", "resample", "corrupted"} else frozenset()


def plan(run, check: Check) -> CheckPlan:
    from circuitry.interventions import Combined

    path, options = check.path, check.options
    record = run.lookup("circuitry_interventions", options["intervention"], (*path, "intervention"))
    run.lookup("circuitry_metrics", options["metric"], (*path, "metric"))
    direction = options.get("direction", "noising")
    if direction == "denoising":
        run.require_task((*path, "direction"), "denoising")
    if record.name == "corrupted":
        run.require_task((*path, "intervention"), "the corrupted intervention (activations of the paired run)")
    key, _ = expectation_of(check)
    if key == "normalised":
        run.require_task((*path, "expect"), "a normalised effect")
    at = positions_mask(run, options.get("at"), (*path, "at"))
    parts = [build(run, record, t, p, at) for t, p in items(options["target"], (*path, "target"))]
    intervention = parts[0] if len(parts) == 1 else Combined(tuple(parts))
    return CheckPlan(needs=needs_of(intervention),
                     sweeps=(Sweep(check.id, options["metric"], intervention, direction),))


def _label(value: Any) -> str:
    if _is_edge(value):
        from circuitry.names import parse_edge

        return str(parse_edge(value))
    from circuitry.names import canonical_name, parse_site

    try:
        return parse_site(value).name  # L1H3 for l1h3, L1.resid_pre for l1.resid_pre
    except UsageError:
        return str(canonical_name(value))


def measure(run, check: Check, plan: CheckPlan) -> CheckResult:
    metric = check.options["metric"]
    direction = check.options.get("direction", "noising")
    value = run.swept[check.id]
    clean = run.metric_clean(metric)
    details: dict[str, Any] = {"metric_clean": clean, "metric_intervened": value}
    base = clean
    if run.task is not None:
        corrupted = run.metric_corrupted(metric)
        details["metric_corrupted"] = corrupted
        base = corrupted if direction == "denoising" else clean
    key, exp = expectation_of(check)
    if key == "normalised":
        measured = normalised(run, check, clean, details["metric_corrupted"], value, direction)
    else:
        measured = {"change": value - base, "relative_change": (value - base) / abs(base) if base else math.nan,
                    "value": value}[key]
    targets = ", ".join(_label(t) for t, _ in items(check.options["target"], check.path))
    at = check.options.get("at")
    where = f" at {', '.join(map(str, at if isinstance(at, list) else [at]))}" if at is not None else ""
    what = {"change": "change in", "relative_change": "relative change in", "value": "",
            "normalised": "normalised effect on"}[key]
    how = f" ({direction})" if run.task is not None else ""
    claim = f"{check.options['intervention']} {targets}{where}{how}: {what} {metric}".replace("  ", " ")
    return CheckResult(check.id, check.kind, claim, measured, f"{exp}", exp.holds(measured), details)


def normalised(run, check: Check, clean: float, corrupted: float, patched: float, direction: str) -> float:
    """The fraction of the clean-corrupted difference the intervention carries (`circuitry.patching.normalise`,
    refused with a warning when the two runs barely differ)."""
    from circuitry.patching.normalise import normalise, too_close

    if too_close(clean, corrupted):
        run.warn(f"check {check.id!r}: the metric barely differs between the clean ({clean:.6g}) and corrupted "
                 f"({corrupted:.6g}) prompts, so a normalised effect is not meaningful", check.path)
        return math.nan
    return float(normalise(torch.tensor(patched, dtype=torch.float64), clean, corrupted, direction))


KIND = CheckKind(
    "intervention", "the effect of an intervention on a metric",
    fields={
        "intervention": Field(INTERVENTIONS, required=True),
        "target": Field(AnyOf((EDGE, NODE, SITE, ListOf(AnyOf((EDGE, NODE, SITE)), min_items=1))), required=True,
                        doc="a node, an edge, an activation site, or a list of them intervened on together"),
        "metric": Field(METRICS, required=True),
        "at": Field(POSITIONS, doc="the positions (names of the task, S2, END, S1+1, or indices; default all)"),
        "direction": Field(Str(choices=DIRECTIONS), doc="with a task: noising (default) patches the clean "
                                                        "prompts, denoising the corrupted ones"),
    },
    plan=plan, measure=measure, expect_keys=("change", "relative_change", "value", "normalised"),
    expect_doc="on the change of the metric, or {relative_change: ...} / {value: ...} / {normalised: ...}")
