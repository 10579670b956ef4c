"""The spec a discovery writes: its checks, measured by `verify`, with thresholds set by a margin.

Checks (those that apply to the circuit found):
- one detector check per role detector among the nodes' roles
  (previous_token, induction, duplicate_token), on the lowest-scoring node;
- one composition check per edge kind, over the kept edges of that kind whose
  composition score is clearly above the random baseline (ratio >= 1.2; scores
  of random matrices scatter by about 5% around it);
- an intervention check: zero-ablating the previous-token heads together (when
  the circuit has none: the node whose removal costs most), change in the metric;
- an intervention check: mean-patching every kept edge together;
- a faithfulness check: the fraction of the metric the nodes recover with every
  other component mean-ablated.

Margin rule (margin m, default 0.2): a measured value v gives the bound
`>= v - m|v|` (for a negative change: `<= v + m|v|`), rounded outwards to 3
decimals; a composition ratio r (score / random baseline) gives
`ratio_to_baseline >= 1 + (r - 1)(1 - m)`, keeping (1 - m) of the excess over
the baseline. The values come from `circuitry.verify` run on a draft of the
spec, so the written spec measures exactly what was measured here.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

PLACEHOLDER = ">= -1000000"
MIN_COMPOSITION_RATIO = 1.2  # edges with a weaker composition get no composition check


def _floor3(x: float) -> float:
    return math.floor(x * 1000 + 1e-9) / 1000


def _ceil3(x: float) -> float:
    return math.ceil(x * 1000 - 1e-9) / 1000


def bound(value: float, margin: float) -> str:
    """The expectation for a measured value: >= v - m|v| (v >= 0), <= v + m|v| (v < 0)."""
    if value >= 0:
        return f">= {_floor3(value - margin * abs(value)):.3f}"
    return f"<= {_ceil3(value + margin * abs(value)):.3f}"


def ratio_bound(ratio: float, margin: float) -> str:
    """The expectation for a composition ratio r (> 1): >= 1 + (r - 1)(1 - m)."""
    return f">= {_floor3(1 + (ratio - 1) * (1 - margin)):.3f}"


def _q(value: Any) -> str:
    """A YAML flow value (JSON is valid YAML)."""
    return json.dumps(value)


def plan_checks(circuit, role_detectors) -> list[dict]:
    """The checks to write, as spec mappings without `expect`, plus the margin rule under `_rule`."""
    checks: list[dict] = []
    roles = {n.role for n in circuit.nodes}
    for role in role_detectors:
        if role in roles:
            checks.append({"id": f"{role.replace('_', '-')}-heads", "kind": "detector", "detector": role,
                           "_rule": "bound", "_what": "lowest node"})
    for kind in ("Q", "K", "V"):
        edges = [e for e in circuit.edges if e.kind == kind and e.composition is not None
                 and e.composition >= MIN_COMPOSITION_RATIO]
        if edges:
            checks.append({"id": f"{kind.lower()}-composition", "kind": "composition",
                           "edges": [e.name for e in edges], "_rule": "ratio", "_what": "lowest edge"})
    prev = [n.name for n in circuit.nodes if n.role == "previous_token"]
    if prev:
        checks.append({"id": "ablate-previous-token-heads", "kind": "intervention", "intervention": "zero",
                       "target": prev, "metric": circuit.metric, "_rule": "bound", "_what": "change"})
    elif circuit.nodes:
        top = max(circuit.nodes, key=lambda n: n.effect if not math.isnan(n.effect) else -math.inf)
        checks.append({"id": f"ablate-{top.name.lower()}", "kind": "intervention", "intervention": "zero",
                       "target": [top.name], "metric": circuit.metric, "_rule": "bound", "_what": "change"})
    if circuit.edges:
        checks.append({"id": "patch-circuit-edges", "kind": "intervention", "intervention": "mean",
                       "target": [e.name for e in circuit.edges], "metric": circuit.metric, "_rule": "bound",
                       "_what": "change"})
    checks.append({"id": "faithfulness", "kind": "faithfulness", "ablation": "mean", "metric": circuit.metric,
                   "_rule": "bound", "_what": "fraction recovered"})
    return checks


def _expect_yaml(check: dict, expect: str) -> str:
    if check["kind"] == "composition":
        return f"{{ratio_to_baseline: {_q(expect)}}}"
    if check["kind"] == "intervention":
        return f"{{change: {_q(expect)}}}"
    return _q(expect)


def _pct(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.1f}%"


def render(circuit, checks: list[dict], expects: dict[str, str], name: str,
           measured: dict[str, float] | None = None) -> str:
    """The spec's YAML text, with comments on how it was found and how thresholds were set."""
    m = circuit.margin
    lines = [
        f"# {name}: a circuit found by `circuitry discover` for the task {circuit.task!r}.",
        f"# Pruning: greedy rounds of batched sweeps remove components (mean-ablated) and then",
        f"# Q/K/V edges (mean-patched) while the circuit recovers >= {circuit.target:g} of the task",
        f"# metric {circuit.metric!r} ((ablated - circuit) / (ablated - clean)): clean {circuit.metric_clean:.4f},",
        f"# every component ablated {circuit.metric_ablated:.4f}; the nodes recover "
        f"{circuit.recovered_nodes:.3f}, the nodes with only",
        f"# the edges below {circuit.recovered:.3f}.",
        f"# Thresholds: from the values measured on this model with margin m = {m:g}: a measured value v",
        "# gives '>= v - m|v|' (a negative change: '<= v + m|v|'), rounded outwards to 3 decimals; a",
        "# composition ratio r (score / random baseline) gives 'ratio_to_baseline >= 1 + (r - 1)(1 - m)'.",
        "apiVersion: circuitry/v1",
        "kind: CircuitSpec",
        "metadata:",
        f"  name: {_q(name)}",
        f"  description: {_q(_description(circuit))}",
        f"  tags: {_q(['discovered', circuit.task])}",
        f"model: {_q(circuit.model)}",
        f"data: {_q(dict(circuit.data))}",
        f"reference_data: {_q(dict(circuit.reference_data))}",
        "circuit:",
        "  nodes:",
    ]
    for n in circuit.nodes:
        scores = ", ".join(f"{k} {v:.3f}" for k, v in n.scores.items())
        lines.append(f"    {n.name}: {n.role}  # {scores + '; ' if scores else ''}removing it alone loses "
                     f"{_pct(n.effect)} of the effect")
    if circuit.edges:
        lines.append("  edges:")
        for e in circuit.edges:
            comp = f"composition {e.composition:.2f}x baseline; " if e.composition is not None else ""
            lines.append(f"    - {e.name}  # {comp}patching it alone loses {_pct(e.effect)} of the effect")
    lines.append("checks:")
    for c in checks:
        lines.append(f"  - id: {c['id']}")
        for key, value in c.items():
            if key in ("id",) or key.startswith("_"):
                continue
            lines.append(f"    {key}: {_q(value) if not isinstance(value, str) else value}")
        comment = ""
        if measured is not None and c["id"] in measured:
            comment = f"  # measured ({c['_what']}): {measured[c['id']]:.4g}"
        lines.append(f"    expect: {_expect_yaml(c, expects[c['id']])}{comment}")
    return "\n".join(lines) + "\n"


def _description(circuit) -> str:
    roles: dict[str, list[str]] = {}
    for n in circuit.nodes:
        roles.setdefault(n.role, []).append(n.name)
    parts = [f"{role} {', '.join(ns)}" for role, ns in roles.items()]
    kinds = sorted({e.kind for e in circuit.edges})
    edges = f"; {len(circuit.edges)} {'/'.join(kinds)} edges" if circuit.edges else ""
    return (f"Discovered circuit for {circuit.task}: {'; '.join(parts)}{edges}; recovers "
            f"{circuit.recovered_nodes:.2f} of {circuit.metric} (nodes only).")


def spec_name(task: str, model_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "-", f"{task}-{model_name or 'model'}").strip("-")


def build_spec(circuit, model, name: str | None = None, manager=None):
    """(spec text, measured checks): draft spec -> verify measures each check -> thresholds."""
    from circuitry.discovery.core import ROLE_DETECTORS, MeasuredCheck
    from circuitry.spec import load_spec
    from circuitry.verify import verify

    name = name or spec_name(circuit.task, model.cfg.name)
    detectors = (manager.detectors() if manager is not None else {})
    checks = plan_checks(circuit, [d for d in ROLE_DETECTORS if not detectors or d in detectors])
    draft = render(circuit, checks, {c["id"]: PLACEHOLDER for c in checks}, name)
    report = verify(load_spec(text=draft), model=model, manager=manager)
    measured = {c.id: float(c.value) for c in report.checks}
    expects = {}
    for c in checks:
        v = measured[c["id"]]
        expects[c["id"]] = ratio_bound(v, circuit.margin) if c["_rule"] == "ratio" else bound(v, circuit.margin)
    text = render(circuit, checks, expects, name, measured)
    load_spec(text=text)  # the written spec must load
    return text, [MeasuredCheck(c["id"], c["kind"], measured[c["id"]], expects[c["id"]]) for c in checks]
