"""`discover(model, task)`: detectors propose, batched ablation sweeps prune, a spec records the result.

1. Data: the task's dataset and parameters (`--data` overrides them), and a
   reference batch for mean ablations (the same data with seed + 1).
2. Detectors: one cached run scores every head (previous_token, induction,
   duplicate_token) and the weights give every pair's composition scores.
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
   score when that score is >= role_threshold, else "other".
6. Checks: the spec's checks are measured by `circuitry.verify` itself on
   a draft spec, and their thresholds set from those values with the margin
   (`circuitry.discovery.specfile`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from circuitry.discovery.prune import PruneOutcome, PruneRound, prune_greedy
from circuitry.errors import UsageError, did_you_mean
from circuitry.jsonable import finite_or_none, finite_tree
from circuitry.model import HookedTransformer
from circuitry.plugins import PluginManager, get_manager
from circuitry.records import Task

ROLE_DETECTORS = ("previous_token", "induction", "duplicate_token")
DEFAULT_TASK = "induction"
DEFAULT_TARGET = 0.8
DEFAULT_MARGIN = 0.2
DEFAULT_ROLE_THRESHOLD = 0.4
METHOD = "mean"  # how removed nodes and edges are replaced (as in the faithfulness check)


@dataclass(frozen=True)
class FoundNode:
    """A kept component: its role, its detector scores, and the fraction of the task effect lost
    when it alone is removed from the final circuit."""

    name: str
    role: str
    scores: Mapping[str, float]
    effect: float

    def to_json(self) -> dict:
        """effect (and a score) is null when undefined: NaN, e.g. a task effect of zero."""
        return {"node": self.name, "role": self.role,
                "scores": {k: finite_or_none(v) for k, v in self.scores.items()}, "effect": _num(self.effect)}


@dataclass(frozen=True)
class FoundEdge:
    """A kept edge sender -> receiver (kind); composition: score / random baseline (None for MLP senders)."""

    sender: str
    receiver: str
    kind: str
    composition: float | None
    effect: float

    @property
    def name(self) -> str:
        return f"{self.sender} -> {self.receiver} ({self.kind})"

    def to_json(self) -> dict:
        """composition_ratio is null for an MLP sender; effect is null when undefined (NaN)."""
        return {"edge": self.name, "from": self.sender, "to": self.receiver, "kind": self.kind,
                "composition_ratio": _num(self.composition), "effect": _num(self.effect)}


@dataclass(frozen=True)
class MeasuredCheck:
    """A check of the written spec: the value `verify` measured and the expectation set from it."""

    id: str
    kind: str
    value: float
    expect: str

    def to_json(self) -> dict:
        """value is null when verify measured no finite number."""
        return {"id": self.id, "kind": self.kind, "value": _num(self.value), "expect": self.expect}


@dataclass(frozen=True)
class Circuit:
    """What `discover` found, how well it recovers the task metric, and what it cost."""

    model: str
    task: str
    metric: str
    data: Mapping[str, Any]
    reference_data: Mapping[str, Any]
    nodes: tuple[FoundNode, ...]
    edges: tuple[FoundEdge, ...]
    metric_clean: float
    metric_ablated: float  # every component mean-ablated
    metric_nodes: float  # components outside the circuit mean-ablated
    metric_circuit: float  # ... and the pruned edges patched as well
    target: float
    margin: float
    role_threshold: float
    method: str  # "batched" or "naive" sweeps
    rounds: tuple[PruneRound, ...]
    interventions: int  # evaluated by the pruning sweeps
    prune_passes: int  # forward passes of the pruning sweeps
    total_passes: int  # every forward pass of the run (detectors, clean runs, sweeps, measuring the checks)
    prune_seconds: float
    seconds: float
    checks: tuple[MeasuredCheck, ...]
    spec_text: str

    def _frac(self, value: float) -> float:
        d = self.metric_ablated - self.metric_clean
        return (self.metric_ablated - value) / d if d else math.nan

    @property
    def recovered_nodes(self) -> float:
        """Fraction recovered by the circuit's nodes (the spec's faithfulness check)."""
        return self._frac(self.metric_nodes)

    @property
    def recovered(self) -> float:
        """Fraction recovered by the circuit's nodes with only its edges between them."""
        return self._frac(self.metric_circuit)

    def to_json(self) -> dict:
        """The strict-JSON document of `discover --json`. A number that is undefined is null:
        recovered fractions when ablating everything leaves the metric at its clean value (0/0),
        metrics that came out NaN or infinite. The `seconds` fields (here and in each round) are
        the only timings."""
        return {
            "model": self.model, "task": self.task, "metric": self.metric, "data": finite_tree(dict(self.data)),
            "reference_data": finite_tree(dict(self.reference_data)),
            "nodes": [n.to_json() for n in self.nodes], "edges": [e.to_json() for e in self.edges],
            "metric_clean": _num(self.metric_clean), "metric_all_ablated": _num(self.metric_ablated),
            "metric_nodes_only": _num(self.metric_nodes), "metric_circuit": _num(self.metric_circuit),
            "recovered_nodes": _num(self.recovered_nodes), "recovered": _num(self.recovered),
            "target": self.target, "margin": self.margin, "role_threshold": self.role_threshold,
            "sweeps": self.method, "rounds": [finite_tree(r.to_json()) for r in self.rounds],
            "interventions": self.interventions,
            "forward_passes": {"pruning": self.prune_passes, "total": self.total_passes},
            "seconds": {"pruning": round(self.prune_seconds, 4), "total": round(self.seconds, 4)},
            "checks": [c.to_json() for c in self.checks],
        }


def _num(x: float | None) -> float | None:
    """x for JSON: None when it is None, NaN or infinite (`circuitry.jsonable.finite_or_none`)."""
    return finite_or_none(x)


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
    from circuitry.datasets import parse_data_ref

    datasets = manager.datasets()
    if data is None:
        name, given = task.dataset, {}
    elif isinstance(data, str):
        name, given = parse_data_ref(data)
    else:
        given = dict(data)
        name = str(given.pop("name", task.dataset))
    if name not in datasets:
        where = f"task {task.name!r} names " if data is None else ""
        raise UsageError(f"{where}unknown dataset {name!r}{did_you_mean(name, datasets)}; "
                         f"valid choices: {', '.join(sorted(datasets))}")
    ds = datasets[name]
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
    from circuitry.interventions import all_heads, all_mlps

    return [*all_heads(model.cfg), *all_mlps(model.cfg)]


def node_key(node) -> tuple[int, int, int]:
    """Layer order: the heads of a layer, then its MLP."""
    return (node.layer, 0 if node.is_head else 1, node.head or 0)


def assign_role(scores: Mapping[str, float], threshold: float) -> str:
    """The role detector with the highest score, when that score is >= threshold; else 'other'."""
    best = max(scores, key=lambda k: scores[k], default=None)
    return best if best is not None and scores[best] >= threshold else "other"


class _Sweeper:
    """Batched (or naive) sweeps of removal sets on one clean run, as recovered fractions."""

    def __init__(self, model, clean, reference, metric_fn, method: str) -> None:
        self.model, self.clean, self.reference, self.metric_fn, self.method = model, clean, reference, metric_fn, method
        self.passes = 0
        self.interventions = 0
        self.clean_value = float(metric_fn(clean.logits, clean.tokens))
        self.ablated_value = math.nan

    def values(self, interventions: list) -> list[float]:
        from circuitry.interventions import run_interventions

        res = run_interventions(self.model, self.clean, interventions, self.metric_fn,
                                reference=self.reference, method=self.method)
        self.passes += res.n_passes
        self.interventions += len(interventions)
        return [float(v) for v in res.values]

    def recovered(self, value: float) -> float:
        return (self.ablated_value - value) / (self.ablated_value - self.clean_value)


def _ablation(nodes) -> Any:
    from circuitry.interventions import Ablation, Combined

    return Combined(tuple(Ablation(n, METHOD) for n in nodes))


def _with_edges(nodes, edges) -> Any:
    from circuitry.interventions import Ablation, Combined, EdgePatch

    return Combined(tuple(Ablation(n, METHOD) for n in nodes) + tuple(EdgePatch(e, METHOD) for e in edges))


# ------------------------------------------------------------------ entry point
def discover(model: HookedTransformer, task: str | Task = DEFAULT_TASK,
             data: str | Mapping[str, Any] | None = None, *, target: float = DEFAULT_TARGET,
             margin: float = DEFAULT_MARGIN, role_threshold: float = DEFAULT_ROLE_THRESHOLD,
             method: str = "batched", model_ref: str | None = None, name: str | None = None,
             manager: PluginManager | None = None,
             progress: Callable[[str], None] | None = None) -> Circuit:
    """Find the circuit of `task` in `model` and write it as a spec (see the module docstring)."""
    from circuitry.datasets import make_batch
    from circuitry.discovery.specfile import build_spec
    from circuitry.interventions import Edge, clean_run
    from circuitry.scan import run_detectors

    if not 0 < target <= 1:
        raise UsageError(f"target must lie in (0, 1], got {target}")
    if not 0 <= margin < 1:
        raise UsageError(f"margin must lie in [0, 1), got {margin}")
    if method not in ("batched", "naive"):
        raise UsageError(f"method must be 'batched' or 'naive', got {method!r}")
    manager = manager or get_manager()
    task = resolve_task(task, manager)
    metrics = manager.metrics()
    if task.metric not in metrics:
        raise UsageError(f"task {task.name!r} names an unknown metric {task.metric!r}"
                         f"{did_you_mean(task.metric, metrics)}; valid choices: {', '.join(sorted(metrics))}")
    metric = metrics[task.metric]
    say = progress or (lambda message: None)
    start = time.perf_counter()
    model.eval()
    spec_data, ref_data = task_data(task, data, manager)
    with _count_passes(model) as passes, torch.inference_mode():
        batch = make_batch(model, spec_data).to(model.device)
        ref_batch = make_batch(model, ref_data).to(model.device)
        say("detectors: scoring every head")
        detectors = manager.detectors()
        chosen = {k: detectors[k] for k in (*ROLE_DETECTORS, "composition") if k in detectors}
        head_scores, pair_scores = run_detectors(model, batch, chosen)
        comp = pair_scores.get("composition")

        clean = clean_run(model, batch.tokens, patterns=False)
        reference = clean_run(model, ref_batch.tokens, patterns=False)
        metric_fn = lambda logits, tokens: metric.compute(logits, batch, clean.logits)  # noqa: E731
        sweeper = _Sweeper(model, clean, reference, metric_fn, method)
        every = sorted(components(model), key=node_key)
        t_prune = time.perf_counter()
        say("nodes: ablating every component")
        sweeper.ablated_value = sweeper.values([_ablation(every)])[0]
        effect = sweeper.ablated_value - sweeper.clean_value
        if not abs(effect) > 1e-6 * max(1.0, abs(sweeper.clean_value)):
            raise UsageError(f"mean-ablating every component leaves the task metric {task.metric!r} unchanged "
                             f"({sweeper.clean_value:.4g}): the model does not do task {task.name!r}, so there "
                             f"is no circuit to find")

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
        candidates.sort(key=lambda e: (ratio(e.sender, e.receiver, e.kind) or 0.0))

        def eval_edges(sets: list[tuple]) -> list[float]:
            return [sweeper.recovered(v) for v in sweeper.values([_with_edges(outside, s) for s in sets])]

        if candidates:
            edges = prune_greedy(candidates, eval_edges, target, start=nodes.recovered, stage="edges",
                                 progress=say)
        else:
            edges = PruneOutcome((), (), {}, nodes.recovered, ())
        prune_seconds = time.perf_counter() - t_prune
        metric_nodes = sweeper.ablated_value - nodes.recovered * effect
        metric_circuit = sweeper.ablated_value - edges.recovered * effect

        found_nodes = []
        for n in nodes.kept:
            scores = {d: float(s[n.layer, n.head]) for d, s in head_scores.items()} if n.is_head else {}
            role = assign_role({d: v for d, v in scores.items() if d in ROLE_DETECTORS}, role_threshold) \
                if n.is_head else "mlp"
            found_nodes.append(FoundNode(n.name, role, scores, nodes.effects[n]))
        found_edges = [FoundEdge(e.sender.name, e.receiver.name, e.kind, ratio(e.sender, e.receiver, e.kind),
                                 edges.effects[e])
                       for e in sorted(edges.kept, key=lambda e: (node_key(e.sender), node_key(e.receiver),
                                                                  "QKV".index(e.kind)))]
        ref = model_ref or model.source or model.cfg.name
        if Path(ref).exists():
            ref = str(Path(ref).resolve())
        say("checks: measuring the spec's claims")
        circuit = Circuit(
            ref, task.name, task.metric, spec_data, ref_data, tuple(found_nodes), tuple(found_edges),
            sweeper.clean_value, sweeper.ablated_value, metric_nodes, metric_circuit, target, margin,
            role_threshold, method, (*nodes.rounds, *edges.rounds), sweeper.interventions, sweeper.passes,
            0, prune_seconds, 0.0, (), "")
        spec_text, checks = build_spec(circuit, model, name=name, manager=manager)
    return Circuit(**{**circuit.__dict__, "checks": tuple(checks), "spec_text": spec_text,
                      "total_passes": passes[0], "seconds": time.perf_counter() - start})
