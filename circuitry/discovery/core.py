"""`discover(model, task)`: detectors propose, batched ablation sweeps prune, a spec records the result.

1. Data: the task's dataset and parameters (`--data` overrides them), and a
   reference batch for mean ablations (the same data with seed + 1).
2. Detectors: one cached run scores every head (previous_token, induction,
   duplicate_token) and the weights give every pair's composition scores.
   The model must do the task: the metric on the clean run must be clearly
   better than with every component ablated (`task_effect_required`), else
   `TaskNotDone` (exit code 1) and no spec.
3. Nodes: start from every component (heads, MLPs) and prune greedily
   (`circuitry.discovery.prune`): a removed component is mean-ablated; the
   circuit must keep recovering >= target of the task metric, measured as
   (metric(all ablated) - metric(circuit)) / (metric(all ablated) - metric(clean)),
   which is exactly what a spec's faithfulness check measures.
4. Edges: every Q/K/V edge between kept components (sender in an earlier
   layer), ordered by composition ratio, is pruned the same way; a removed
   edge is path-patched with the sender's mean output on that input only.
   Direct paths into the logits are not pruned.
5. Roles: a kept head takes the name of the role detector with its highest
   score when that score is >= role_threshold; other nodes get no role ("").
6. Checks: the spec's checks are measured by `circuitry.verify` itself on
   a draft spec, and their thresholds set from those values with the margin
   (`circuitry.discovery.specfile`). When every component is needed, the
   circuit is the whole model and recovers the metric by definition.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml

from circuitry.datasets import make_batch, parse_data_ref
from circuitry.diagnostics import warn
from circuitry.discovery.prune import PruneOutcome, prune_greedy
from circuitry.discovery.records import Circuit, FoundEdge, FoundNode, TaskNotDone
from circuitry.discovery.specfile import absolute_model, build_spec, data_ref, spec_name
from circuitry.errors import UsageError, did_you_mean
from circuitry.interventions import (
    Ablation,
    Combined,
    Edge,
    EdgePatch,
    all_heads,
    all_mlps,
    clean_run,
    run_interventions,
)
from circuitry.model import HookedTransformer
from circuitry.plugins import PluginManager, get_manager
from circuitry.records import Metric, Task
from circuitry.scan import run_detectors

ROLE_DETECTORS = ("previous_token", "induction", "duplicate_token")
DEFAULT_TASK = "induction"
DEFAULT_TARGET = 0.8
DEFAULT_MARGIN = 0.2
DEFAULT_ROLE_THRESHOLD = 0.4
METHOD = "mean"  # how removed nodes and edges are replaced (as in the faithfulness check)
# a model does the task when the clean run beats the all-ablated one by at least this much, in the metric's
# units, and by this fraction of the larger magnitude of the two values (see `task_effect_required`)
MIN_TASK_EFFECT = 0.1
MIN_TASK_EFFECT_FRACTION = 0.05
TASK_RULE = (f"at least {MIN_TASK_EFFECT:g} in the metric's units and {MIN_TASK_EFFECT_FRACTION:.0%} of the larger "
             f"magnitude of the two values")
CHECK_KINDS = ("detector", "composition", "intervention", "faithfulness")  # the kinds a discovered spec holds



# ------------------------------------------------------------------ task and data
def resolve_task(task: str | Task, manager: PluginManager | None = None) -> Task:
    """The task record of a name (UsageError with did-you-mean for unknown names)."""
    if isinstance(task, Task):
        return task
    return (manager or get_manager()).get("circuitry_tasks", task, "task")


def _typed(value: Any) -> Any:
    """'20' -> 20, 'true' -> True, other strings unchanged (for parameters read from --data)."""
    if not isinstance(value, str):
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    return parsed if isinstance(parsed, (int, float, bool)) else value


def task_data(task: Task, data: str | Mapping[str, Any] | None, manager: PluginManager) -> tuple[dict, dict]:
    """(data, reference data) as spec mappings with every parameter written out.

    `data` None: the task's dataset and parameters. A reference to the task's own
    dataset overrides some of its parameters; another dataset starts from that
    dataset's defaults. The reference batch is the same data with seed + 1
    (datasets without a seed: the same data).
    """
    given: dict[str, Any]
    if data is None:
        name, given = task.dataset, {}
    elif isinstance(data, str):
        name, given = parse_data_ref(data)
    else:
        given = dict(data)
        name = str(given.pop("name", task.dataset))
    try:
        ds = manager.get("circuitry_datasets", name, "dataset")
    except UsageError as exc:
        raise (UsageError(f"task {task.name!r} needs its dataset: {exc}") if data is None else exc) from None
    base = dict(task.dataset_params) if name == task.dataset else {}
    params = {**ds.params, **base, **{k: _typed(v) for k, v in given.items()}}
    for key in params:
        if key not in ds.params:
            raise UsageError(f"dataset {name!r} has no parameter {key!r}{did_you_mean(key, ds.params)}; "
                             f"valid: {', '.join(ds.params) or '(none)'}")
    if name == "file" and params.get("path"):
        params["path"] = str(Path(str(params["path"])).resolve())
    spec_data = {"name": name, **params}
    reference = dict(spec_data)
    if "seed" in ds.params:
        reference["seed"] = int(params["seed"]) + 1
    return spec_data, reference


def _batches(model: HookedTransformer, data: dict, reference: dict, manager: PluginManager) -> tuple:
    """(the clean batch, the reference batch), on the model's device; problems name the data."""
    out = []
    for what, mapping in (("the data", data), ("the reference data for mean ablations", reference)):
        try:
            out.append(make_batch(model, mapping, manager).to(model.device))
        except UsageError as exc:
            raise UsageError(f"{what} {data_ref(mapping)}: {exc}") from None
    return tuple(out)


# ------------------------------------------------------------------ what discovery needs
def _require(manager: PluginManager, task: Task) -> Metric:
    """The task's metric; every plugin-provided name discovery and its spec use must be available
    (UsageError, exit 2, naming what needs it)."""
    try:
        metric = manager.get("circuitry_metrics", task.metric, "metric")
    except UsageError as exc:
        raise UsageError(f"task {task.name!r} needs its metric: {exc}") from None
    needs = [("circuitry_interventions", "mean", "intervention", "to remove components and edges"),
             ("circuitry_interventions", "zero", "intervention", "for the spec's ablation check"),
             *(("circuitry_check_kinds", k, "check kind", "for the spec's checks") for k in CHECK_KINDS)]
    for hook, name, kind, why in needs:
        try:
            manager.get(hook, name, kind)
        except UsageError as exc:
            raise UsageError(f"discover needs {kind} {name!r} {why}: {exc}") from None
    return metric


def _detectors(manager: PluginManager) -> dict:
    """The role detectors and the composition detector that are available; a warning for each that is not
    (nodes then get no role from it; edges are ordered without composition scores)."""
    chosen = {}
    for name in (*ROLE_DETECTORS, "composition"):
        try:
            chosen[name] = manager.get("circuitry_detectors", name, "detector")
        except UsageError as exc:
            what = "edges are ordered without composition scores" if name == "composition" else \
                f"no node gets the role {name!r}"
            warn(f"discover: {exc}; {what}")
    return chosen


def task_effect_required(clean: float, ablated: float) -> float:
    """How much better than the all-ablated run the clean run must be for the model to do the task:
    MIN_TASK_EFFECT in the metric's units, and MIN_TASK_EFFECT_FRACTION of the larger magnitude of the two."""
    return max(MIN_TASK_EFFECT, MIN_TASK_EFFECT_FRACTION * max(abs(clean), abs(ablated)))


def require_task(model_ref: str, task: Task, metric: Metric, data: Mapping[str, Any], clean: float,
                 ablated: float) -> None:
    """TaskNotDone (exit 1) unless the clean metric is clearly better than the all-ablated one."""
    effect = ablated - clean if metric.lower_is_better else clean - ablated
    required = task_effect_required(clean, ablated)
    if not effect >= required:  # NaN fails too
        raise TaskNotDone(model_ref, task.name, task.metric, data, clean, ablated, metric.lower_is_better,
                          required, TASK_RULE)


# ------------------------------------------------------------------ helpers
@contextmanager
def _count_passes(model: HookedTransformer):
    """Count forward passes (full or partial runs) of `model` while the block runs."""
    count = [0]
    handle = model.register_forward_pre_hook(lambda mod, args: count.__setitem__(0, count[0] + 1))
    try:
        yield count
    finally:
        handle.remove()


def components(model: HookedTransformer) -> list:
    """Every head and MLP of the model."""
    return [*all_heads(model.cfg), *all_mlps(model.cfg)]


def node_key(node) -> tuple[int, int, int]:
    """Layer order: the heads of a layer, then its MLP."""
    return (node.layer, 0 if node.is_head else 1, node.head or 0)


def assign_role(scores: Mapping[str, float], threshold: float) -> str:
    """The role detector with the highest score, when that score is >= threshold; else "" (no role)."""
    finite = {k: v for k, v in scores.items() if math.isfinite(v)}
    best = max(finite, key=lambda k: finite[k], default=None)
    return best if best is not None and finite[best] >= threshold else ""


def _weakest_first(ratio: float | None) -> float:
    """Sort key of an edge's composition ratio: weakest first; no ratio (None, NaN) counts as 0."""
    return 0.0 if ratio is None or math.isnan(ratio) else ratio


class _Sweeper:
    """Batched (or naive) sweeps of removal sets on one clean run, as recovered fractions."""

    def __init__(self, model, clean, reference, metric_fn, method: str) -> None:
        self.model, self.clean, self.reference, self.metric_fn, self.method = model, clean, reference, metric_fn, method
        self.passes = 0
        self.interventions = 0
        self.clean_value = float(metric_fn(clean.logits, clean.tokens))
        self.ablated_value = math.nan

    def values(self, interventions: list) -> list[float]:
        res = run_interventions(self.model, self.clean, interventions, self.metric_fn,
                                reference=self.reference, method=self.method)
        self.passes += res.n_passes
        self.interventions += len(interventions)
        return [float(v) for v in res.values]

    def recovered(self, value: float) -> float:
        return (self.ablated_value - value) / (self.ablated_value - self.clean_value)


def _ablation(nodes) -> Combined:
    return Combined(tuple(Ablation(n, METHOD) for n in nodes))


def _with_edges(nodes, edges) -> Combined:
    return Combined(tuple(Ablation(n, METHOD) for n in nodes) + tuple(EdgePatch(e, METHOD) for e in edges))


def _check_options(target: float, margin: float, method: str) -> None:
    if not 0 < target <= 1:
        raise UsageError(f"target must lie in (0, 1], got {target}")
    if not 0 <= margin < 1:
        raise UsageError(f"margin must lie in [0, 1), got {margin}")
    if method not in ("batched", "naive"):
        raise UsageError(f"method must be 'batched' or 'naive', got {method!r}")


def _found_nodes(kept, effects, head_scores, role_threshold: float) -> list[FoundNode]:
    out = []
    for n in kept:
        scores = {d: float(s[n.layer, n.head]) for d, s in head_scores.items()} if n.is_head else {}
        role = assign_role({d: v for d, v in scores.items() if d in ROLE_DETECTORS}, role_threshold) \
            if n.is_head else ""
        out.append(FoundNode(n.name, role, scores, effects[n]))
    return out


# ------------------------------------------------------------------ entry point
def discover(model: HookedTransformer, task: str | Task = DEFAULT_TASK,
             data: str | Mapping[str, Any] | None = None, *, target: float = DEFAULT_TARGET,
             margin: float = DEFAULT_MARGIN, role_threshold: float = DEFAULT_ROLE_THRESHOLD,
             method: str = "batched", model_ref: str | None = None, name: str | None = None,
             manager: PluginManager | None = None,
             progress: Callable[[str], None] | None = None) -> Circuit:
    """Find the circuit of `task` in `model` and write it as a spec (see the module docstring).

    Raises TaskNotDone (exit code 1) when the model does not do the task, UsageError (exit code 2) for
    options, data and plugins that do not fit. `name` overrides the spec's name (default: the task and
    the model's short name)."""
    _check_options(target, margin, method)
    manager = manager or get_manager()
    task = resolve_task(task, manager)
    metric = _require(manager, task)
    say = progress or (lambda message: None)
    start = time.perf_counter()
    model.eval()
    given = model_ref or model.source or model.cfg.name or "model"
    ref = absolute_model(given)
    spec_data, ref_data = task_data(task, data, manager)
    with _count_passes(model) as passes, torch.inference_mode():
        batch, ref_batch = _batches(model, spec_data, ref_data, manager)
        say("detectors: scoring every head")
        head_scores, pair_scores = run_detectors(model, batch, _detectors(manager))
        comp = pair_scores.get("composition")

        clean = clean_run(model, batch.tokens, patterns=False)
        reference = clean_run(model, ref_batch.tokens, patterns=False)

        def metric_fn(logits, tokens):
            return metric.compute(logits, batch, clean.logits)

        sweeper = _Sweeper(model, clean, reference, metric_fn, method)
        every = sorted(components(model), key=node_key)
        t_prune = time.perf_counter()
        say("nodes: ablating every component")
        sweeper.ablated_value = sweeper.values([_ablation(every)])[0]
        require_task(given, task, metric, spec_data, sweeper.clean_value, sweeper.ablated_value)
        effect = sweeper.ablated_value - sweeper.clean_value

        def eval_nodes(sets: list[tuple]) -> list[float]:
            return [sweeper.recovered(v) for v in sweeper.values([_ablation(s) for s in sets])]

        nodes = prune_greedy(every, eval_nodes, target, stage="nodes", progress=say)
        outside = list(nodes.removed)
        kept_heads = [n for n in nodes.kept if n.is_head]

        def ratio(sender, receiver, kind) -> float | None:
            if comp is None or not sender.is_head:
                return None
            return float(comp.scores[kind][sender.layer, sender.head, receiver.layer, receiver.head]
                         / comp.baseline[kind])

        candidates = [Edge(s, r, k) for r in kept_heads for s in nodes.kept if s.layer < r.layer
                      for k in ("Q", "K", "V")]
        candidates.sort(key=lambda e: _weakest_first(ratio(e.sender, e.receiver, e.kind)))

        def eval_edges(sets: list[tuple]) -> list[float]:
            return [sweeper.recovered(v) for v in sweeper.values([_with_edges(outside, s) for s in sets])]

        if candidates:
            edges = prune_greedy(candidates, eval_edges, target, start=nodes.recovered, stage="edges",
                                 progress=say)
        else:
            edges = PruneOutcome((), (), {}, nodes.recovered, ())
        prune_seconds = time.perf_counter() - t_prune
        # the whole model: nothing is ablated, the metric is the clean one
        metric_nodes = sweeper.clean_value if not outside else sweeper.ablated_value - nodes.recovered * effect
        metric_circuit = sweeper.clean_value if not outside and not edges.removed else \
            sweeper.ablated_value - edges.recovered * effect

        found_edges = [FoundEdge(e.sender.name, e.receiver.name, e.kind, ratio(e.sender, e.receiver, e.kind),
                                 edges.effects[e])
                       for e in sorted(edges.kept, key=lambda e: (node_key(e.sender), node_key(e.receiver),
                                                                  "QKV".index(e.kind)))]
        name = name or spec_name(task.name, ref)
        say("checks: measuring the spec's claims")
        circuit = Circuit(
            ref, task.name, task.metric, spec_data, ref_data,
            tuple(_found_nodes(nodes.kept, nodes.effects, head_scores, role_threshold)), tuple(found_edges),
            sweeper.clean_value, sweeper.ablated_value, metric_nodes, metric_circuit, target, margin,
            role_threshold, method, (*nodes.rounds, *edges.rounds), sweeper.interventions, sweeper.passes,
            0, prune_seconds, 0.0, (), "", name, len(every))
        roles = [d for d in ROLE_DETECTORS if d in head_scores]
        spec_text, checks = build_spec(circuit, model, roles, name, manager)
    return replace(circuit, checks=tuple(checks), spec_text=spec_text, total_passes=passes[0],
                   seconds=time.perf_counter() - start)
