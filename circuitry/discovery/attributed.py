"""Discovery by attribution (`discover --method eap | eap-ig | eap-ig-act`): score every edge, keep the
smallest top-scoring set whose exact faithfulness reaches the target, and write it as a spec.

1. Every edge of the residual graph is scored (`circuitry.attribution.attribute`) on the task: a task
   file's clean and corrupted prompts, or a task plugin's data paired row by row with its reference data.
2. The faithfulness curve (`circuitry.attribution.circuit.curve`) runs circuits of the top 0.1 .. 100 % of
   the edges exactly; bisection between its points finds the fewest top edges (after pruning edges on no
   path from the embeddings to the logits) whose faithfulness reaches --target.
3. The circuit's nodes are the heads and MLPs its edges touch; its edges are all kept edges. Node and edge
   effects (the faithfulness lost when one is removed from the circuit) are measured exactly; roles come
   from the detectors as in pruning. The spec is written by `specfile.build_spec`, its header says how the
   circuit was chosen and `metadata.attribution` records the method, steps and curve areas.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from circuitry.attribution import attribute
from circuitry.attribution.circuit import CircuitRunner, Curve, curve, smallest_circuit
from circuitry.discovery.core import (
    ROLE_DETECTORS,
    Setup,
    _check_options,
    _count_passes,
    _detectors,
    _file_setup,
    _found_nodes,
    _plugin_setup,
    _ratio_of,
    _require,
    _scores,
    check_task_data,
    node_key,
    require_task,
    resolve_task,
)
from circuitry.discovery.records import Circuit, FoundEdge
from circuitry.discovery.specfile import absolute_model, build_spec, spec_name
from circuitry.interventions import Node
from circuitry.model import HookedTransformer
from circuitry.names import EMBED, LOGITS, POS_EMBED
from circuitry.plugins import PluginManager, get_manager
from circuitry.records import Task
from circuitry.tasks.batch import paired
from circuitry.tasks.format import TaskFile

MAX_EDGE_EFFECTS = 256  # edges whose removal is measured one by one (more: their effect is left undefined)


@dataclass(frozen=True)
class Attribution:
    """How an attributed circuit was chosen: the method, its steps, the curve, the edges scored."""

    method: str
    steps: int | None
    n_edges: int  # in the whole graph
    curve: Curve
    scores: Mapping[str, float]  # the kept edges' attribution scores
    seconds: float

    def to_json(self) -> dict:
        return {"method": self.method, "steps": self.steps, "edges_in_graph": self.n_edges,
                "curve": self.curve.to_json(), "scores": dict(self.scores), "seconds": round(self.seconds, 4)}


def discover_attributed(model: HookedTransformer, task: str | Path | Task | TaskFile, method: str = "eap-ig",
                        steps: int = 5, *, data: str | Mapping[str, Any] | None = None, target: float = 0.8,
                        margin: float = 0.2, role_threshold: float = 0.4, model_ref: str | None = None,
                        name: str | None = None, manager: PluginManager | None = None,
                        progress: Callable[[str], None] | None = None) -> tuple[Circuit, Attribution]:
    """The circuit of `task` found by attribution (see the module docstring) and how it was chosen."""
    _check_options(target, margin, "batched")
    manager = manager or get_manager()
    say = progress or (lambda message: None)
    start = time.perf_counter()
    model.eval()
    given = model_ref or model.source or model.cfg.name or "model"
    ref = absolute_model(given)
    with _count_passes(model) as passes:
        setup, batch = _task_setup(model, task, data, manager)
        metric = setup.metric
        with torch.inference_mode():
            say("detectors: scoring every head")
            head_scores, pair_scores = _scores(model, setup.batch, _detectors(manager))
        say(f"attribution: {method} over every edge")
        t0 = time.perf_counter()
        scores = attribute(model, batch, metric.name, method, steps=steps, manager=manager)
        edge_scores = scores.edge_scores
        assert edge_scores is not None  # level "edges"
        runner = CircuitRunner(model, batch, metric.compute)
        require_task(given, setup.task, metric, setup.data, runner.clean, runner.corrupted, setup.ablation)
        say("faithfulness curve: exact circuit runs")
        found_curve = curve(runner, edge_scores)
        say("the smallest circuit that reaches the target")
        mask, _ = smallest_circuit(runner, edge_scores, target, found_curve.points)
        attribution_seconds = time.perf_counter() - t0
        circuit = _circuit(model, setup, runner, mask, scores, head_scores, pair_scores.get("composition"),
                           target, margin, role_threshold, given, ref, name, say)
        with torch.inference_mode():
            roles = [d for d in ROLE_DETECTORS if d in head_scores]
            spec_text, checks = build_spec(circuit, model, roles, circuit.name, manager)
    kept = {str(e): float(s) for e, s, k in zip(scores.edges, edge_scores, mask.tolist()) if k}
    how = Attribution(method, scores.steps, len(scores.edges), found_curve, kept, attribution_seconds)
    circuit = replace(circuit, checks=tuple(checks), spec_text=_with_attribution(spec_text, how, circuit),
                      total_passes=passes[0], seconds=time.perf_counter() - start, prune_passes=runner.passes)
    return circuit, how


def _circuit(model, setup: Setup, runner: CircuitRunner, mask: torch.Tensor, scores, head_scores: dict, comp,
             target: float, margin: float, role_threshold: float, given: str, ref: str, name: str | None,
             say: Callable[[str], None]) -> Circuit:
    layout = runner.layout
    edges = [e for e, k in zip(layout.edges, mask.tolist()) if k]
    touched = {x for e in edges for x in (e.sender, e.receiver)} - {EMBED, POS_EMBED, LOGITS}
    nodes = sorted((Node.parse(n) for n in touched), key=node_key)
    metric_circuit = runner.run(mask)
    full = runner.faithfulness(metric_circuit)
    say("effects: each node and edge removed from the circuit")

    def without(drop: Callable) -> float:
        m = mask.clone()
        for i, e in enumerate(layout.edges):
            if m[i] and drop(e):
                m[i] = False
        return full - runner.faithfulness(runner.run(m))

    node_effects = {n: without(lambda e, n=n.name: n in (e.sender, e.receiver)) for n in nodes}
    if len(edges) <= MAX_EDGE_EFFECTS:
        edge_effects = {str(e): without(lambda x, e=e: x == e) for e in edges}
    else:
        edge_effects = {str(e): math.nan for e in edges}
    # the nodes alone: every edge among the embeddings, the circuit's nodes and the logits
    inside = {*touched, EMBED, POS_EMBED, LOGITS}
    node_mask = torch.tensor([e.sender in inside and e.receiver in inside for e in layout.edges])
    metric_nodes = runner.run(node_mask)
    ratio = _ratio_of(comp)

    def composition(e) -> float | None:
        if e.kind not in ("Q", "K", "V") or e.sender in (EMBED, POS_EMBED):
            return None
        return ratio(Node.parse(e.sender), Node.parse(e.receiver), e.kind)

    found_edges = [FoundEdge(e.sender, e.receiver, e.kind, composition(e), edge_effects[str(e)]) for e in edges]
    return Circuit(
        ref, setup.task, setup.metric.name, setup.data, setup.reference_data,
        tuple(_found_nodes(nodes, node_effects, head_scores, role_threshold)), tuple(found_edges),
        runner.clean, runner.corrupted, metric_nodes, metric_circuit, target, margin, role_threshold, "batched",
        (), runner.passes, 0, 0, 0.0, 0.0, (), "", name or spec_name(setup.task, ref),
        len([s for s in layout.senders if s not in (EMBED, POS_EMBED)]), task_file=setup.task_file,
        ablation=setup.ablation, lower_is_better=setup.metric.lower_is_better,
        metric_corrupted=runner.corrupted)


def _with_attribution(spec_text: str, how: Attribution, circuit: Circuit) -> str:
    """The spec with its header saying how the circuit was chosen and `metadata.attribution`."""
    lines = spec_text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("apiVersion:"))
    pts = ", ".join(f"{p.percent:g}%: {p.faithfulness:.3f}" for p in how.curve.points)
    steps = f" ({how.steps} steps)" if how.steps else ""
    head = [
        f"# {circuit.name}: a circuit found by `circuitry discover --method {how.method}` for the task "
        f"{circuit.task!r}.",
        f"# Attribution: {how.method}{steps} scored all {how.n_edges} edges for {circuit.metric!r}; the circuit is "
        f"the fewest top-|score| edges",
        f"# (pruned to paths from the embeddings to the logits) whose exact faithfulness reaches "
        f"{circuit.target:g}: {len(circuit.edges)} edges,",
        f"# faithfulness {circuit.recovered:.3f} (every edge outside patched from the "
        f"{'corrupted prompts' if circuit.task_file else 'reference data, row by row'}).",
        f"# Faithfulness curve (top % of edges): {pts}; CPR {how.curve.cpr:.3f}, CMD {how.curve.cmd:.3f}.",
        "# Thresholds: measured values with margin m; the faithfulness check below replaces whole nodes.",
    ]
    body = lines[at:]
    meta = next(i for i, line in enumerate(body) if line.startswith("metadata:"))
    steps_field = f"steps: {how.steps}, " if how.steps else ""
    record = (f"  attribution: {{method: {how.method}, {steps_field}"
              f"edges_in_graph: {how.n_edges}, edges: {len(circuit.edges)}, faithfulness: "
              f"{circuit.recovered:.4f}, cpr: {how.curve.cpr:.4f}, cmd: {how.curve.cmd:.4f}}}")
    body.insert(meta + 1, record)
    comments = {f"    - {e}": f"  # attribution {how.scores[e]:+.4f}" for e in how.scores}
    body = [line.split("  #")[0] + comments[line.split("  #")[0]] if line.split("  #")[0] in comments else line
            for line in body]
    return "\n".join(head + body) + "\n"


def _task_setup(model: HookedTransformer, task: str | Path | Task | TaskFile, data: str | Mapping[str, Any] | None,
                manager: PluginManager) -> tuple[Setup, Any]:
    """(the discovery setup of a task file or plugin, its contrastive batch: a task file's own, or a plugin's data
    paired row by row with its reference data)."""
    resolved = resolve_task(task, manager)
    check_task_data(resolved, data)
    metric = _require(manager, resolved)
    with torch.inference_mode():
        setup = _file_setup(model, resolved, metric, data) if isinstance(resolved, TaskFile) else \
            _plugin_setup(model, resolved, metric, data, manager)
    return setup, setup.batch if setup.task_file else paired(setup.batch, setup.reference, setup.task)


def task_batch(model: HookedTransformer, task: str | Path | Task | TaskFile,
               data: str | Mapping[str, Any] | None = None, manager: PluginManager | None = None):
    """(contrastive batch, task name, metric record) of a task file or a task plugin on `model`, for
    attribution."""
    setup, batch = _task_setup(model, task, data, manager or get_manager())
    return batch, setup.task, setup.metric
