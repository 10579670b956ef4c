"""`discover(model, task)`: detectors propose, batched ablation sweeps prune, a spec records the result.

1. Data: a task plugin's dataset and parameters (`--data` overrides them), and a
   reference batch for mean ablations (the same data with seed + 1); or a task
   file's (`kind: Task`) clean prompts, with its corrupted prompts as the
   reference: removed components and edges then take their activations on the
   corrupted prompts (method `corrupted`, row-aligned) instead of the mean.
2. Detectors: one cached run scores every head (previous_token, induction,
   duplicate_token) and the weights give every pair's composition scores.
   The model must do the task: the metric on the clean run must be clearly
   better than with every component ablated (`task_effect_required`), else
   `TaskNotDone` (exit code 1) and no spec.
3. Nodes: start from every component (heads, MLPs) and prune greedily
   (`circuitry.discovery.prune`): a removed component is mean-ablated (a task
   file: replaced by its corrupted activation); the
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
import os
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from circuitry.data import TokenBatch
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
from circuitry.scan import pattern_names, run_detectors
from circuitry.tasks import format as task_format
from circuitry.tasks.format import TaskFile

ROLE_DETECTORS = ("previous_token", "induction", "duplicate_token")
DEFAULT_TASK = "induction"
DEFAULT_TARGET = 0.8
DEFAULT_MARGIN = 0.2
DEFAULT_ROLE_THRESHOLD = 0.4
METHOD = "mean"  # how removed nodes and edges are replaced for a task plugin (as in the faithfulness check)
TASK_FILE_METHOD = "corrupted"  # ... and for a task file: by their activations on the corrupted prompts
TASK_FILE_SUFFIXES = (".yaml", ".yml")
# a model does the task when the clean run beats the all-ablated one by at least this much, in the metric's
# units (MIN_LOGIT_EFFECT for metrics in logits), and by this fraction of the larger magnitude of the two values
# (see `task_effect_required`)
MIN_TASK_EFFECT = 0.1
MIN_LOGIT_EFFECT = 1.0  # a logit difference of 1: e-fold odds; random models reach a few tenths
LOGIT_METRICS = ("logit_diff", "correct_logit")
MIN_TASK_EFFECT_FRACTION = 0.05


def min_task_effect(metric: str = "") -> float:
    """The least effect in the metric's units: MIN_LOGIT_EFFECT for a metric in logits, else MIN_TASK_EFFECT."""
    return MIN_LOGIT_EFFECT if metric in LOGIT_METRICS else MIN_TASK_EFFECT


def task_rule(metric: str = "") -> str:
    """The does-the-task rule in words, for the metric."""
    return (f"at least {min_task_effect(metric):g} in the metric's units and {MIN_TASK_EFFECT_FRACTION:.0%} of the "
            f"larger magnitude of the two values")


TASK_RULE = task_rule()
CHECK_KINDS = ("detector", "composition", "intervention", "faithfulness")  # the kinds a discovered spec holds
TASK_FILE_CHECK_KINDS = (*CHECK_KINDS, "metric")  # ... on a task file



# ------------------------------------------------------------------ task and data
def names_a_file(text: str, manager: PluginManager) -> bool:
    """The `--task` rule: a task file when the text ends in .yaml / .yml or holds a path separator; else a
    task plugin when one has that name; else a task file when a file of that name exists."""
    if text.lower().endswith(TASK_FILE_SUFFIXES) or "/" in text or os.sep in text:
        return True
    if text in manager.records("circuitry_tasks"):
        return False
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # a name the file system cannot hold
        return False


def resolve_task(task: str | Path | Task | TaskFile, manager: PluginManager | None = None) -> Task | TaskFile:
    """The task plugin record of a name, or the loaded task file of a path (`names_a_file`).

    An unknown name is a UsageError with a did-you-mean among the task plugins that says a task file works
    too; a task file that is missing or malformed is a SpecError located in it (both exit 2)."""
    if isinstance(task, (Task, TaskFile)):
        return task
    manager = manager or get_manager()
    text = str(task)
    if isinstance(task, Path) or names_a_file(text, manager):
        return task_format.load_task(text)
    try:
        return manager.get("circuitry_tasks", text, "task")
    except UsageError as exc:
        raise UsageError(f"{exc}; or give the path of a task file (kind: Task; a .yaml or .yml file)") from None


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


@dataclass(frozen=True)
class Setup:
    """What a discovery runs on: the task, its metric, the clean and reference batches, and how removed
    components and edges are replaced (`mean` for a task plugin, `corrupted` for a task file)."""

    task: str  # the task's name
    metric: Metric
    data: dict  # the clean data as a spec mapping (a task file: where its prompts come from)
    reference_data: dict
    batch: TokenBatch
    reference: TokenBatch
    ablation: str  # METHOD or TASK_FILE_METHOD
    task_file: str = ""  # the task file's absolute path ("" for a task plugin)


def _plugin_setup(model: HookedTransformer, task: Task, metric: Metric, data: str | Mapping[str, Any] | None,
                  manager: PluginManager) -> Setup:
    """A task plugin: its dataset (with `data`'s overrides) and the same data with seed + 1 for mean ablations."""
    spec_data, ref_data = task_data(task, data, manager)
    batch, ref_batch = _batches(model, spec_data, ref_data, manager)
    return Setup(task.name, metric, spec_data, ref_data, batch, ref_batch, METHOD)


def check_task_data(task: Task | TaskFile, data: str | Mapping[str, Any] | None) -> None:
    """Other data than the task's applies to task plugins only (UsageError for a task file)."""
    if data is not None and isinstance(task, TaskFile):
        raise UsageError(f"--data does not apply to a task file ({task.file}): its clean prompts are the data and "
                         f"its corrupted prompts the reference")


def _file_setup(model: HookedTransformer, task: TaskFile, metric: Metric,
                data: str | Mapping[str, Any] | None) -> Setup:
    """A task file: its clean prompts, and its corrupted prompts as the reference (row-aligned replacements).
    Problems of the prompts on this model are located in the task file."""
    from circuitry.budget import require, run_bytes
    from circuitry.tasks.build import build_batch

    check_task_data(task, data)
    batch = build_batch(task, model)
    b, p = batch.tokens.shape
    try:
        require(2 * run_bytes(model.cfg, b, p), f"the clean and corrupted runs of task {task.name} on {b} x {p} "
                                                f"tokens")
    except UsageError as exc:
        raise task.error((task.source,), str(exc)) from None
    path = str(Path(task.file).resolve())
    shape = {"batch": b, "positions": p}
    return Setup(task.name, metric, {"task": path, "prompts": "clean", **shape},
                 {"task": path, "prompts": "corrupted", **shape}, batch, batch.corrupted_batch(),
                 TASK_FILE_METHOD, path)


# ------------------------------------------------------------------ what discovery needs
def _require(manager: PluginManager, task: Task | TaskFile) -> Metric:
    """The task's metric; every plugin-provided name discovery and its spec use must be available
    (UsageError, exit 2, naming what needs it)."""
    try:
        metric = manager.get("circuitry_metrics", task.metric, "metric")
    except UsageError as exc:
        raise UsageError(f"task {task.name!r} needs its metric: {exc}") from None
    if isinstance(task, TaskFile):
        needs = [("circuitry_interventions", TASK_FILE_METHOD, "intervention",
                  "to replace components and edges by their activations on the task's corrupted prompts"),
                 *(("circuitry_check_kinds", k, "check kind", "for the spec's checks") for k in TASK_FILE_CHECK_KINDS)]
    else:
        needs = [("circuitry_interventions", METHOD, "intervention", "to remove components and edges"),
                 ("circuitry_interventions", "zero", "intervention", "for the spec's ablation check"),
                 *(("circuitry_check_kinds", k, "check kind", "for the spec's checks") for k in CHECK_KINDS)]
    for hook, name, kind, why in needs:
        try:
            manager.get(hook, name, kind)
        except UsageError as exc:
            raise UsageError(f"discover needs {kind} {name!r} {why}: {exc}") from None
    return metric


def _scores(model: HookedTransformer, batch: TokenBatch, detectors: dict) -> tuple[dict, dict]:
    """(head scores, pair scores) of the detectors on one cached run; a detector that cannot score the data
    (a UsageError: no repeated tokens, sequences too short ...) is a warning, and no node gets its role."""
    cache = None
    if any(d.needs_cache for d in detectors.values()):
        _, cache = model.run_with_cache(batch.tokens, names=pattern_names(model), stop_at_layer=model.cfg.n_layers)
    heads: dict = {}
    pairs: dict = {}
    for name, det in detectors.items():
        try:
            h, p = run_detectors(model, batch, {name: det}, cache=cache)
        except UsageError as exc:
            warn(f"discover: detector {name!r} cannot score {batch.description}: {exc}; no node gets the role "
                 f"{name!r}")
            continue
        heads.update(h)
        pairs.update(p)
    return heads, pairs


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


def task_effect_required(clean: float, ablated: float, metric: str = "") -> float:
    """How much better than the all-ablated run the clean run must be for the model to do the task:
    `min_task_effect(metric)` in the metric's units (0.1; 1 for a metric in logits), and
    MIN_TASK_EFFECT_FRACTION of the larger magnitude of the two."""
    return max(min_task_effect(metric), MIN_TASK_EFFECT_FRACTION * max(abs(clean), abs(ablated)))


def require_task(model_ref: str, task: Task | TaskFile | str, metric: Metric, data: Mapping[str, Any],
                 clean: float, ablated: float, ablation: str = METHOD) -> None:
    """TaskNotDone (exit 1) unless the clean metric is clearly better than the all-ablated one, in the metric's
    better direction (lower for a loss, higher for a logit difference). `ablation`: how every component was
    removed (mean; corrupted for a task file, where the all-ablated run is nearly the corrupted run)."""
    effect = ablated - clean if metric.lower_is_better else clean - ablated
    required = task_effect_required(clean, ablated, metric.name)
    if not effect >= required:  # NaN fails too
        name = task if isinstance(task, str) else task.name
        raise TaskNotDone(model_ref, name, metric.name, data, clean, ablated, metric.lower_is_better,
                          required, task_rule(metric.name), ablation)


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

    def __init__(self, model, clean, reference, metric: Metric, batch, method: str, target: float) -> None:
        self.model, self.clean, self.reference, self.metric, self.method = model, clean, reference, metric, method
        self.batch, self.target = batch, target
        self.passes = 0
        self.interventions = 0
        self.clean_value = float(metric.compute(clean.logits, batch, clean.logits))
        self.ablated_value = math.nan

    def values(self, interventions: list) -> list[float]:
        """The metric with each intervention, from one sweep."""
        res = run_interventions(self.model, self.clean, interventions, self.metric, batch=self.batch,
                                reference=self.reference, method=self.method)
        self.passes += res.n_passes
        self.interventions += len(interventions)
        return [float(v) for v in res.values]

    def recovered(self, value: float) -> float:
        """The fraction of the task effect a metric value recovers: 1 at the clean value, 0 all ablated
        (the same for a metric where lower or higher is better)."""
        return (self.ablated_value - value) / (self.ablated_value - self.clean_value)


def _ablation(nodes, how: str = METHOD) -> Combined:
    """The nodes removed together (replaced by `how`: mean or corrupted)."""
    return Combined(tuple(Ablation(n, how) for n in nodes))


def _with_edges(nodes, edges, how: str = METHOD) -> Combined:
    """The nodes removed and the edges path-patched together (replaced by `how`)."""
    return Combined(tuple(Ablation(n, how) for n in nodes) + tuple(EdgePatch(e, how) for e in edges))


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
def _prune_edges(sweeper: _Sweeper, nodes: PruneOutcome, ratio: Callable, how: str,
                 say: Callable[[str], None]) -> PruneOutcome:
    """Every Q/K/V edge between kept components (sender in an earlier layer), weakest composition first,
    pruned greedily from the node circuit's fraction."""
    outside = list(nodes.removed)
    kept_heads = [n for n in nodes.kept if n.is_head]
    cfg = sweeper.model.cfg
    candidates = [Edge(s, r, k) for r in kept_heads for s in nodes.kept if s.layer < r.layer
                  for k in ("Q", "K", "V") if not (k == "K" and cfg.keys_read_embeddings(r.layer))]
    candidates.sort(key=lambda e: _weakest_first(ratio(e.sender, e.receiver, e.kind)))

    def eval_edges(sets: list[tuple]) -> list[float]:
        return [sweeper.recovered(v) for v in sweeper.values([_with_edges(outside, s, how) for s in sets])]

    if not candidates:
        return PruneOutcome((), (), {}, nodes.recovered, ())
    return prune_greedy(candidates, eval_edges, target=sweeper.target, start=nodes.recovered, stage="edges",
                        progress=say)


def _ratio_of(comp) -> Callable:
    """ratio(sender, receiver, kind): the composition score over the random baseline (None without one)."""
    def ratio(sender, receiver, kind) -> float | None:
        if comp is None or not sender.is_head:
            return None
        return float(comp.scores[kind][sender.layer, sender.head, receiver.layer, receiver.head]
                     / comp.baseline[kind])
    return ratio


def discover(model: HookedTransformer, task: str | Path | Task | TaskFile = DEFAULT_TASK,
             data: str | Mapping[str, Any] | None = None, *, target: float = DEFAULT_TARGET,
             margin: float = DEFAULT_MARGIN, role_threshold: float = DEFAULT_ROLE_THRESHOLD,
             method: str = "batched", model_ref: str | None = None, name: str | None = None,
             manager: PluginManager | None = None,
             progress: Callable[[str], None] | None = None) -> Circuit:
    """Find the circuit of `task` in `model` and write it as a spec (see the module docstring).

    `task`: a task plugin's name or record, or a task file (its path, or a loaded `TaskFile`; see
    `resolve_task`). Raises TaskNotDone (exit code 1) when the model does not do the task, UsageError (exit
    code 2) for options, data, task files and plugins that do not fit. `name` overrides the spec's name
    (default: the task and the model's short name)."""
    _check_options(target, margin, method)
    manager = manager or get_manager()
    resolved = resolve_task(task, manager)
    check_task_data(resolved, data)
    metric = _require(manager, resolved)
    say = progress or (lambda message: None)
    start = time.perf_counter()
    model.eval()
    given = model_ref or model.source or model.cfg.name or "model"
    ref = absolute_model(given)
    setup = _file_setup(model, resolved, metric, data) if isinstance(resolved, TaskFile) else None
    with _count_passes(model) as passes, torch.inference_mode():
        if setup is None:
            assert isinstance(resolved, Task)
            setup = _plugin_setup(model, resolved, metric, data, manager)
        say("detectors: scoring every head")
        head_scores, pair_scores = _scores(model, setup.batch, _detectors(manager))
        circuit = _prune(model, setup, head_scores, pair_scores.get("composition"), target, margin,
                         role_threshold, method, given, ref, name, say)
        roles = [d for d in ROLE_DETECTORS if d in head_scores]
        spec_text, checks = build_spec(circuit, model, roles, circuit.name, manager)
    return replace(circuit, checks=tuple(checks), spec_text=spec_text, total_passes=passes[0],
                   seconds=time.perf_counter() - start)


def _prune(model: HookedTransformer, setup: Setup, head_scores: dict, comp, target: float, margin: float,
           role_threshold: float, method: str, given: str, ref: str, name: str | None,
           say: Callable[[str], None]) -> Circuit:
    """The clean and reference runs, the does-the-task rule, node and edge pruning: the Circuit found
    (without its checks)."""
    clean = clean_run(model, setup.batch.tokens, patterns=False)
    reference = clean_run(model, setup.reference.tokens, patterns=False)
    batch, metric = setup.batch, setup.metric
    sweeper = _Sweeper(model, clean, reference, metric, batch, method, target)
    how = setup.ablation
    every = sorted(components(model), key=node_key)
    t_prune = time.perf_counter()
    say("nodes: removing every component")
    sweeper.ablated_value = sweeper.values([_ablation(every, how)])[0]
    require_task(given, setup.task, metric, setup.data, sweeper.clean_value, sweeper.ablated_value, how)
    effect = sweeper.ablated_value - sweeper.clean_value

    def eval_nodes(sets: list[tuple]) -> list[float]:
        return [sweeper.recovered(v) for v in sweeper.values([_ablation(s, how) for s in sets])]

    nodes = prune_greedy(every, eval_nodes, target, stage="nodes", progress=say)
    ratio = _ratio_of(comp)
    edges = _prune_edges(sweeper, nodes, ratio, how, say)
    prune_seconds = time.perf_counter() - t_prune
    outside = list(nodes.removed)
    # the whole model: nothing is ablated, the metric is the clean one
    metric_nodes = sweeper.clean_value if not outside else sweeper.ablated_value - nodes.recovered * effect
    metric_circuit = sweeper.clean_value if not outside and not edges.removed else \
        sweeper.ablated_value - edges.recovered * effect
    found_edges = [FoundEdge(e.sender.name, e.receiver.name, e.kind, ratio(e.sender, e.receiver, e.kind),
                             edges.effects[e])
                   for e in sorted(edges.kept, key=lambda e: (node_key(e.sender), node_key(e.receiver),
                                                              "QKV".index(e.kind)))]
    corrupted = float(metric.compute(reference.logits, batch, clean.logits)) if setup.task_file else math.nan
    say("checks: measuring the spec's claims")
    return Circuit(
        ref, setup.task, metric.name, setup.data, setup.reference_data,
        tuple(_found_nodes(nodes.kept, nodes.effects, head_scores, role_threshold)), tuple(found_edges),
        sweeper.clean_value, sweeper.ablated_value, metric_nodes, metric_circuit, target, margin,
        role_threshold, method, (*nodes.rounds, *edges.rounds), sweeper.interventions, sweeper.passes,
        0, prune_seconds, 0.0, (), "", name or spec_name(setup.task, ref), len(every),
        task_file=setup.task_file, ablation=how, lower_is_better=metric.lower_is_better,
        metric_corrupted=corrupted)
