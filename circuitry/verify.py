"""`verify(spec)`: a circuit spec checked against a model -> VerificationReport.

One clean cached run serves every check. Detector and composition checks
read it (and the weights); intervention and faithfulness checks run as one
batched sweep per metric through `circuitry.interventions`; decomposition
checks use `circuitry.graph.decompose`. Names in the spec that the model
lacks (a head L9H9 in a 2-layer model) are errors at their file:line:col.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from circuitry.data import TokenBatch
from circuitry.errors import UsageError, did_you_mean
from circuitry.model import HookedTransformer
from circuitry.plugins import PluginManager, get_manager
from circuitry.spec.format import Check, CircuitSpec, Edge, as_list, expectation_of, parse_edge


@dataclass(frozen=True)
class CheckResult:
    """One claim's outcome: the measured value next to the expectation."""

    id: str
    kind: str
    claim: str
    value: float | None
    expect: str
    passed: bool
    details: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict:
        value = None if self.value is None or math.isnan(self.value) else self.value
        return {"id": self.id, "kind": self.kind, "claim": self.claim, "value": value, "expect": self.expect,
                "passed": self.passed, "details": self.details, "seconds": round(self.seconds, 4)}


@dataclass(frozen=True)
class VerificationReport:
    spec: str
    name: str
    model: str
    data: str
    checks: tuple[CheckResult, ...]
    seconds: float
    header: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    def to_json(self) -> dict:
        return {"spec": self.spec, "name": self.name, "model": self.model, "data": self.data,
                "passed": self.passed, "seconds": round(self.seconds, 3),
                "checks": [c.to_json() for c in self.checks]}


# ------------------------------------------------------------------ helpers
def _items(value: Any, path: tuple) -> list[tuple[Any, tuple]]:
    """(item, its key path) for a value that is one item or a list of items."""
    if isinstance(value, list):
        return [(v, (*path, i)) for i, v in enumerate(value)]
    return [(value, path)]


def _head(name: str) -> tuple[int, int] | None:
    if name.startswith("L") and "H" in name:
        l, h = name[1:].split("H")
        return int(l), int(h)
    return None


class _Verifier:
    def __init__(self, spec: CircuitSpec, model: HookedTransformer, batch: TokenBatch,
                 reference_batch: TokenBatch | None, manager: PluginManager) -> None:
        self.spec, self.model, self.batch, self.manager = spec, model, batch, manager
        self.reference_batch = reference_batch
        self._detector_cache: dict[str, Any] = {}
        self._decomposition = None
        self._reference = None
        from circuitry.interventions import clean_run

        # one clean run for every check: interventions, detectors (patterns) and the
        # decomposition (norm scales) all read this cache
        scales = [] if model.cfg.normalization is None else (
            [f"blocks.{l}.ln1.hook_scale" for l in range(model.cfg.n_layers)] + ["ln_final.hook_scale"])
        self.clean = clean_run(model, batch.tokens, patterns=True, extra=scales)
        self._metric_clean: dict[str, float] = {}

    # validation ---------------------------------------------------------
    def check_node(self, name: str, path: tuple, allow: Iterable[str] = ("head", "mlp"), at_key: bool = False) -> str:
        cfg = self.model.cfg
        error = lambda message: self.spec.document.error(path, message, at_key=at_key)  # noqa: E731
        valid_heads = f"L0H0..L{cfg.n_layers - 1}H{cfg.n_heads - 1}"
        head = _head(name)
        if head is not None:
            l, h = head
            if "head" not in allow:
                raise error(f"{name} is a head; expected {' or '.join(allow)}")
            if not (0 <= l < cfg.n_layers and 0 <= h < cfg.n_heads):
                raise error(f"the model has no head {name}: it has heads {valid_heads} "
                            f"({cfg.n_layers} layers x {cfg.n_heads} heads)")
            return name
        if name.startswith("M") and name[1:].isdigit():
            if "mlp" not in allow:
                raise error(f"{name} is an MLP; expected {' or '.join(allow)}")
            if cfg.attn_only:
                raise error(f"the model is attention-only: it has no MLP {name}")
            if not 0 <= int(name[1:]) < cfg.n_layers:
                raise error(f"the model has no MLP {name}: it has M0..M{cfg.n_layers - 1}")
            return name
        mlps = "" if cfg.attn_only or "mlp" not in allow else f" or an MLP (M0..M{cfg.n_layers - 1})"
        raise error(f"{name!r} cannot be used here; expected a head ({valid_heads}){mlps}")

    def check_edge(self, edge: Edge, path: tuple) -> Edge:
        self.check_node(edge.sender, path)
        if edge.kind == "direct":
            return edge
        self.check_node(edge.receiver, path, allow=("head",))
        head = _head(edge.sender)
        ls = head[0] if head else int(edge.sender[1:])  # an MLP writes after its layer's heads
        lr = _head(edge.receiver)[0]  # type: ignore[index]
        if ls >= lr:
            raise self.spec.error(path, f"edge {edge}: the sender must be in an earlier layer than the "
                                        f"receiver (layer {ls} is not before layer {lr})")
        return edge

    def validate_circuit(self) -> None:
        for node in self.spec.nodes:
            self.check_node(node, ("circuit", "nodes", node), at_key=True)
        for i, edge in enumerate(self.spec.edges):
            self.check_edge(edge, ("circuit", "edges", i))

    # shared computations -----------------------------------------------
    def detector(self, name: str):
        if name not in self._detector_cache:
            from circuitry.scan import run_detectors

            det = self.manager.detectors()[name]
            heads, pairs = run_detectors(self.model, self.batch, {name: det}, cache=self.clean.cache)
            self._detector_cache[name] = heads.get(name, pairs.get(name))
        return self._detector_cache[name]

    def reference(self):
        if self._reference is None and self.reference_batch is not None:
            from circuitry.interventions import clean_run

            self._reference = clean_run(self.model, self.reference_batch.tokens, patterns=False)
        return self._reference

    def metric_fn(self, name: str):
        metric = self.manager.metrics()[name]
        batch, clean_logits = self.batch, self.clean.logits
        return metric, (lambda logits, tokens: metric.compute(logits, batch, clean_logits))

    def metric_clean(self, name: str) -> float:
        if name not in self._metric_clean:
            metric, fn = self.metric_fn(name)
            self._metric_clean[name] = float(fn(self.clean.logits, self.batch.tokens))
        return self._metric_clean[name]

    def sweep(self, metric: str, interventions: list) -> list[float]:
        from circuitry.interventions import run_interventions

        _, fn = self.metric_fn(metric)
        res = run_interventions(self.model, self.clean, interventions, fn, reference=self.reference())
        return [float(v) for v in res.values]

    # checks ---------------------------------------------------------------
    def nodes_for(self, check: Check, path: tuple) -> list[str]:
        if "nodes" in check.options:
            return [self.check_node(n, p) for n, p in _items(check.options["nodes"], (*path, "nodes"))]
        key = "role" if "role" in check.options else "detector"
        role = check.options[key]
        nodes = [n for n, r in self.spec.nodes.items() if r == role]
        if not nodes:
            roles = sorted(set(self.spec.nodes.values()) - {""})
            known = f"roles in the circuit: {', '.join(roles)}" if roles else "no circuit node has a role"
            how = "" if key == "role" else " (a detector check without nodes: or role: checks the nodes with the " \
                                             "detector's name as role)"
            raise self.spec.error((*path, key), f"no circuit node has role {role!r}{did_you_mean(str(role), roles)}"
                                                f"{how}; give nodes: [...] or role: ({known})")
        return nodes

    def detector_nodes(self, check: Check) -> list[str]:
        """The heads a detector check scores (validated against the model)."""
        path = check.path
        name = check.options["detector"]
        det = self.manager.detectors()[name]
        if det.kind != "head":
            raise self.spec.error((*path, "detector"), f"{name!r} scores pairs of heads; use a composition check")
        nodes = self.nodes_for(check, path)
        for n, p in _items(check.options.get("nodes", nodes), (*path, "nodes")):
            if _head(n) is None:
                raise self.spec.error(p, f"{n}: detectors score heads, not {n}")
        return nodes

    def run_detector(self, check: Check) -> CheckResult:
        name = check.options["detector"]
        nodes = self.detector_nodes(check)
        scores = self.detector(name)
        values = {n: float(scores[_head(n)]) for n in nodes}
        _, exp = expectation_of(check)
        return _all_hold(check, f"{name}({', '.join(nodes)})", values, exp, str(exp))

    def composition_edges(self, check: Check) -> list[Edge]:
        """The head -> head edges a composition check scores (validated against the model)."""
        path = check.path
        if "edges" in check.options:
            items = [(parse_edge(e), p) for e, p in _items(check.options["edges"], (*path, "edges"))]
        else:
            items = [(e, ("circuit", "edges", i)) for i, e in enumerate(self.spec.edges) if e.kind in ("Q", "K", "V")]
            if not items:
                raise self.spec.error((*path, "kind"), "the circuit has no Q/K/V edges to score; give edges: [...]")
        edges = []
        for e, p in items:
            if e.kind == "direct" or _head(e.sender) is None:
                raise self.spec.error(p, f"{e}: composition scores are defined for head -> head Q/K/V edges")
            edges.append(self.check_edge(e, p))
        return edges

    def run_composition(self, check: Check) -> CheckResult:
        edges = self.composition_edges(check)
        ps = self.detector("composition")
        key, exp = expectation_of(check)
        values, raw = {}, {}
        for e in edges:
            (l1, h1), (l2, h2) = _head(e.sender), _head(e.receiver)  # type: ignore[misc]
            score = float(ps.scores[e.kind][l1, h1, l2, h2])
            base = float(ps.baseline[e.kind])
            raw[str(e)] = {"score": score, "baseline": base, "ratio_to_baseline": score / base}
            values[str(e)] = score / base if key == "ratio_to_baseline" else score
        what = "composition ratio to baseline" if key == "ratio_to_baseline" else "composition score"
        res = _all_hold(check, f"{what} of {', '.join(values)}", values, exp,
                        f"{key} {exp}" if key == "ratio_to_baseline" else str(exp))
        return _with_details(res, {"edges": raw})

    def intervention_of(self, check: Check):
        from circuitry.interventions import Combined
        from circuitry.interventions import Edge as IEdge

        record = self.manager.interventions()[check.options["intervention"]]
        parts = []
        for t, path in _items(check.options["target"], (*check.path, "target")):
            if isinstance(t, dict) or "->" in str(t):
                e = self.check_edge(parse_edge(t), path)
                receiver = "logits" if e.kind == "direct" else e.receiver
                target: Any = IEdge(e.sender, receiver, e.kind)
                if "edge" not in record.targets:
                    raise self.spec.error(path, f"intervention {record.name!r} does not apply to edges")
            else:
                target = self.check_node(str(t), path)
            try:
                parts.append(record.build(target))
            except UsageError as exc:
                raise self.spec.error(path, str(exc)) from None
        return parts[0] if len(parts) == 1 else Combined(tuple(parts))

    def faithfulness_of(self, check: Check):
        from circuitry.interventions import Combined, Node

        method_name = check.options.get("ablation", "mean")
        record = self.manager.interventions()[method_name]
        if "nodes" in check.options:
            nodes = [self.check_node(n, p) for n, p in _items(check.options["nodes"], (*check.path, "nodes"))]
        else:
            nodes = list(self.spec.nodes)  # checked by validate_circuit
        cfg = self.model.cfg
        every = [f"L{l}H{h}" for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
        if not cfg.attn_only:
            every += [f"M{l}" for l in range(cfg.n_layers)]
        outside = [n for n in every if n not in nodes]
        build = lambda ns: Combined(tuple(record.build(Node.parse(n)) for n in ns))  # noqa: E731
        if not outside:
            raise self.spec.error((*check.path, "nodes") if "nodes" in check.options else ("circuit", "nodes"),
                                  "the circuit holds every component; nothing is left to ablate")
        return nodes, build(every), build(outside)


def _all_hold(check: Check, claim: str, values: dict[str, float], exp, expect_text: str) -> CheckResult:
    """Every value must satisfy the expectation; the reported value is the one closest to failing."""
    holds = {k: exp.holds(v) for k, v in values.items()}
    failing = [k for k, ok in holds.items() if not ok]
    if failing:
        worst = failing[0]
    elif exp.op in (">=", ">"):
        worst = min(values, key=values.get)
    elif exp.op in ("<=", "<"):
        worst = max(values, key=values.get)
    else:
        worst = next(iter(values))
    return CheckResult(check.id, check.kind, claim, values[worst], expect_text, not failing,
                       {"values": values} if len(values) > 1 else {})


def _with_details(res: CheckResult, extra: dict) -> CheckResult:
    return dataclasses.replace(res, details={**res.details, **extra})


def _timed(res: CheckResult, seconds: float) -> CheckResult:
    return dataclasses.replace(res, seconds=seconds)


# ------------------------------------------------------------------ entry point
def _check_device(device: str | None) -> None:
    """A UsageError for a device torch does not know or this machine lacks."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, mps ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {device!r}: CUDA is not available here (use cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device {device!r}: MPS is not available here (use cpu)")


def _spec_relative(spec: CircuitSpec) -> str:
    """The spec's model reference; a relative path is looked up next to the spec file first."""
    from pathlib import Path

    from circuitry.sources import split_ref

    scheme, rest = split_ref(spec.model)
    if scheme == "file" and not Path(rest).is_absolute() and spec.file != "<string>":
        beside = Path(spec.file).parent / rest
        if beside.exists():
            return str(beside)
    return spec.model

def _data_batch(spec: CircuitSpec, model: HookedTransformer, data: dict, key: str) -> TokenBatch:
    from circuitry.datasets import make_batch

    # the dataset and its parameters were checked when the spec loaded (spec.format)
    try:
        return make_batch(model, data).to(model.device)
    except UsageError as exc:
        raise spec.error((key,), str(exc)) from None


def load_spec_model(spec: CircuitSpec, model_ref: str | None = None,
                    device: str | None = None) -> tuple[HookedTransformer, str]:
    """The spec's model (or `model_ref`) and the reference it was loaded from; load errors
    of the spec's own `model:` point at that line."""
    from circuitry.sources import load_model

    _check_device(device)
    ref = model_ref or _spec_relative(spec)  # the report names the model as loaded
    try:
        return load_model(ref, device=device), ref
    except UsageError as exc:
        if model_ref:
            raise
        raise spec.error(("model",), str(exc)) from None


def verify(spec: CircuitSpec, model: HookedTransformer | None = None, model_ref: str | None = None,
           device: str | None = None, manager: PluginManager | None = None) -> VerificationReport:
    """Check every claim of `spec`; `model` / `model_ref` override the spec's model."""
    start = time.perf_counter()
    manager = manager or get_manager()
    ref = model_ref or spec.model
    if model is None:
        model, ref = load_spec_model(spec, model_ref, device)
    model.eval()
    with torch.inference_mode():
        batch = _data_batch(spec, model, spec.data, "data")
        needs_ref = any(c.kind in ("intervention", "faithfulness") for c in spec.checks)
        reference = _data_batch(spec, model, spec.reference_data,
                                "reference_data" if "reference_data" in spec.document.data else "data"
                                ) if needs_ref else None
        v = _Verifier(spec, model, batch, reference, manager)
        v.validate_circuit()
        results: dict[str, CheckResult] = {}
        # intervention-style checks: planned first, then one sweep per metric
        sweeps: dict[str, list[tuple[str, Any]]] = {}
        plans: dict[str, Any] = {}
        for check in spec.checks:  # every check is validated against the model before any runs
            if check.kind == "detector":
                v.detector_nodes(check)
            elif check.kind == "composition":
                v.composition_edges(check)
            elif check.kind == "decomposition":
                _decomposition_plan(v, check)
            elif check.kind == "intervention":
                metric = check.options["metric"]
                sweeps.setdefault(metric, []).append((check.id, v.intervention_of(check)))
            elif check.kind == "faithfulness":
                metric = check.options.get("metric", "loss")
                nodes, all_abl, outside_abl = v.faithfulness_of(check)
                plans[check.id] = nodes
                sweeps.setdefault(metric, []).extend([(check.id + ":all", all_abl), (check.id + ":outside", outside_abl)])
        swept: dict[str, float] = {}
        sweep_seconds: dict[str, float] = {}
        for metric, items in sweeps.items():
            t = time.perf_counter()
            values = v.sweep(metric, [it for _, it in items])
            for (key, _), value in zip(items, values):
                swept[key] = value
            per = (time.perf_counter() - t) / max(1, len(items))
            for key, _ in items:
                sweep_seconds[key.split(":")[0]] = sweep_seconds.get(key.split(":")[0], 0.0) + per
        for check in spec.checks:
            t = time.perf_counter()
            if check.kind == "detector":
                res = v.run_detector(check)
            elif check.kind == "composition":
                res = v.run_composition(check)
            elif check.kind == "intervention":
                res = _intervention_result(v, check, swept[check.id])
            elif check.kind == "faithfulness":
                res = _faithfulness_result(v, check, plans[check.id], swept[check.id + ":all"],
                                           swept[check.id + ":outside"])
            elif check.kind == "decomposition":
                res = _decomposition_result(v, check)
            else:  # pragma: no cover - the schema admits no other kinds
                raise UsageError(f"unknown check kind {check.kind!r}")
            results[check.id] = _timed(res, time.perf_counter() - t + sweep_seconds.get(check.id, 0.0))
    header: list[str] = []
    for lines in manager.hook.circuitry_report_header(spec=spec, model=model):
        header.extend([lines] if isinstance(lines, str) else list(lines or []))
    report = VerificationReport(spec.file, spec.name, ref, batch.description,
                                tuple(results[c.id] for c in spec.checks), time.perf_counter() - start, tuple(header))
    manager.hook.circuitry_verify_finished(report=report)
    return report


def _intervention_result(v: _Verifier, check: Check, value: float) -> CheckResult:
    metric = check.options["metric"]
    clean = v.metric_clean(metric)
    key, exp = expectation_of(check)
    measured = {"change": value - clean, "relative_change": (value - clean) / abs(clean) if clean else math.nan,
                "value": value}[key]
    targets = ", ".join(str(parse_edge(t)) if isinstance(t, dict) or "->" in str(t) else str(t)
                        for t in as_list(check.options["target"]))
    what = {"change": "change in", "relative_change": "relative change in", "value": ""}[key]
    claim = f"{check.options['intervention']} {targets}: {what} {metric}".replace("  ", " ")
    return CheckResult(check.id, check.kind, claim, measured, f"{exp}", exp.holds(measured),
                       {"metric_clean": clean, "metric_intervened": value})


def _faithfulness_result(v: _Verifier, check: Check, nodes: list[str], all_ablated: float,
                         circuit_only: float) -> CheckResult:
    metric = check.options.get("metric", "loss")
    clean = v.metric_clean(metric)
    denom = all_ablated - clean
    frac = (all_ablated - circuit_only) / denom if denom else math.nan
    _, exp = expectation_of(check)
    method = check.options.get("ablation", "mean")
    claim = f"{metric} recovered by {', '.join(nodes)} ({method}-ablating the rest)"
    return CheckResult(check.id, check.kind, claim, frac, str(exp), exp.holds(frac),
                       {"metric_clean": clean, "metric_all_ablated": all_ablated,
                        "metric_circuit_only": circuit_only})


def _decomposition_plan(v: _Verifier, check: Check) -> tuple[tuple[str, ...], Any]:
    """(the validated path, the target: 'correct' or a token id) of a decomposition check."""
    from circuitry.graph.paths import parse_path

    try:
        key = parse_path(tuple(as_list(check.options["path"])), v.model.cfg)
    except UsageError as exc:
        raise v.spec.error((*check.path, "path"), str(exc)) from None
    target = check.options.get("target", "correct")
    if target != "correct":
        target = int(target)  # the schema admits 'correct', digits or an integer
        if not 0 <= target < v.model.cfg.d_vocab:
            raise v.spec.error((*check.path, "target"), f"target token {target} is not a token id of the model "
                                                        f"(0..{v.model.cfg.d_vocab - 1})")
    return key, target


def _decomposition_result(v: _Verifier, check: Check) -> CheckResult:
    from circuitry.graph import decompose

    key, target = _decomposition_plan(v, check)
    if v._decomposition is None:
        v._decomposition = decompose(v.model, v.batch.tokens, v.clean.cache, v.clean.logits)
    dec = v._decomposition
    try:
        proj = dec.project(target)
    except UsageError as exc:
        raise v.spec.error((*check.path, "target"), str(exc)) from None
    positions = check.options.get("positions", "predictable")
    mask = v.batch.predictable.to(proj.valid.device) if positions == "predictable" else None
    term = float(proj.mean(mask)[proj.paths.index(key)])
    total = float(proj.total()[proj._mask(mask)].mean())
    share = term / total if total else math.nan
    _, exp = expectation_of(check)
    name = " -> ".join(key)
    claim = f"share of the {'correct-token' if target == 'correct' else f'token {target}'} logit through {name}"
    return CheckResult(check.id, check.kind, claim, share, str(exp), exp.holds(share),
                       {"term_mean": term, "total_mean": total, "positions": positions})
