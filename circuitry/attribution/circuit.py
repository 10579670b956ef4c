"""Edge circuits: exact faithfulness of a set of edges, the faithfulness curve, and choosing a circuit by score.

A circuit is a set of edges of the residual graph (a bool mask over `Layout.edges`). Its run replaces,
at every receiver input, what each sender outside the circuit sends by the sender's output on the
corrupted prompts, and keeps what circuit senders send in this run:

    input_r = input_r(corrupted) + sum over circuit edges s -> r of (a_s(this run) - a_s(corrupted))

one forward pass per circuit, from the corrupted run's cached inputs and sender outputs. With every edge
the run is the clean run; with none, the corrupted run. Faithfulness (normalised, 1: the circuit carries
the whole clean - corrupted difference):

    F = (M(circuit) - M(corrupted)) / (M(clean) - M(corrupted))

The faithfulness curve is F at circuits of the top-scoring 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50 and 100 %
of the edges (by |score|), each pruned of edges that lie on no path from the embeddings to the logits.
Its areas, over the fraction of edges kept (trapezoids, the points above plus the empty circuit):
CPR = the area under F (higher is better), CMD = the area of |1 - F| (lower is better), as MIB defines them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from circuitry.attribution.gradients import _capture_hooks, receiver_hook_names
from circuitry.attribution.layout import Layout

CURVE_PERCENTS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)


@dataclass(frozen=True)
class CurvePoint:
    percent: float  # of the edges asked for
    n_edges: int  # kept after pruning edges on no path
    faithfulness: float
    metric: float


@dataclass(frozen=True)
class Curve:
    points: tuple[CurvePoint, ...]
    cpr: float
    cmd: float
    metric_clean: float
    metric_corrupted: float

    def to_json(self) -> dict:
        from circuitry.jsonable import finite_or_none

        return {"points": [{"percent": p.percent, "edges": p.n_edges, "faithfulness": finite_or_none(p.faithfulness),
                            "metric": finite_or_none(p.metric)} for p in self.points],
                "cpr": finite_or_none(self.cpr), "cmd": finite_or_none(self.cmd),
                "metric_clean": self.metric_clean, "metric_corrupted": self.metric_corrupted}


class CircuitRunner:
    """Runs edge circuits on a task batch: the corrupted run is cached once, each circuit is one pass."""

    def __init__(self, model, batch, metric: Callable) -> None:
        self.model, self.batch, self.metric = model, batch, metric
        self.layout = Layout.of(model.cfg)
        cfg = model.cfg
        self.tokens = model.check_tokens(batch.tokens)
        corrupted_tokens = model.check_tokens(batch.corrupted)
        b, p = self.tokens.shape
        self.corrupted_out = torch.zeros(len(self.layout.senders), b, p, cfg.d_model, device=model.device,
                                         dtype=model.dtype)
        self.inputs: dict[str, torch.Tensor] = {}
        self.hooks = receiver_hook_names(cfg, self.layout)

        def keep(x, hook):
            self.inputs[hook.name] = (x[:, :, 0] if x.ndim == 4 else x).detach().clone()
            return x

        with torch.inference_mode():
            with model.hooks([*_capture_hooks(model, self.layout, self.corrupted_out),
                              *((n, keep) for n, _ in self.hooks)]):
                corrupted_logits = model(corrupted_tokens)
            self.clean_logits = model(self.tokens)
        self.clean = float(metric(self.clean_logits, batch, self.clean_logits))
        self.corrupted = float(metric(corrupted_logits, batch, self.clean_logits))
        self.passes = 2

    def faithfulness(self, value: float) -> float:
        d = self.clean - self.corrupted
        return (value - self.corrupted) / d if d else math.nan

    def run(self, mask: torch.Tensor) -> float:
        """The metric with only the edges in `mask` [n_edges] (bool) taken from this run."""
        layout, model = self.layout, self.model
        current = torch.zeros_like(self.corrupted_out)
        hooks: list = list(_capture_hooks(model, layout, current))
        weights = mask.to(current.dtype).to(current.device)
        for name, first in self.hooks:
            r = layout.receivers[first]
            if r.kind in ("Q", "K", "V"):
                rows = torch.stack([weights[layout.offsets[first + 3 * h]: layout.offsets[first + 3 * h] + r.n_up]
                                    for h in range(layout.n_heads)])  # [head, n_up]
            else:
                rows = weights[layout.offsets[first]: layout.offsets[first] + r.n_up]
            hooks.append((name, self._replace(self.inputs[name], rows, r.n_up, current)))
        with torch.inference_mode(), model.hooks(hooks):
            logits = model(self.tokens)
        self.passes += 1
        return float(self.metric(logits, self.batch, self.clean_logits))

    def _replace(self, corrupted_input: torch.Tensor, rows: torch.Tensor, n_up: int, current: torch.Tensor):
        corrupted_out = self.corrupted_out

        def hook(x, hook):
            delta = current[:n_up] - corrupted_out[:n_up]  # [n_up, batch, pos, d_model]
            if x.ndim == 4:  # per-head inputs [batch, pos, head, d_model]
                return corrupted_input[:, :, None] + torch.einsum("sbpd,hs->bphd", delta, rows)
            return corrupted_input + torch.einsum("sbpd,s->bpd", delta, rows)
        return hook


def connected(layout: Layout, mask: torch.Tensor) -> torch.Tensor:
    """The edges of `mask` that lie on a path from an embedding to the logits through edges of `mask`."""
    edges = layout.edges
    keep = mask.clone().bool()
    while True:
        chosen = [e for e, k in zip(edges, keep.tolist()) if k]
        # a node is reached when an embedding or a chosen edge from a reached node feeds it (stream order)
        reached = {"embed", "pos_embed"}
        for e in chosen:  # edges are grouped by receiver in stream order, senders before receivers
            if e.sender in reached:
                reached.add(e.receiver)
        useful = {"logits"}
        for e in reversed(chosen):
            if e.receiver in useful:
                useful.add(e.sender)
        new = torch.tensor([bool(k) and e.sender in reached and e.receiver in useful
                            for e, k in zip(edges, keep.tolist())])
        if torch.equal(new, keep):
            return keep
        keep = new


def top_mask(layout: Layout, scores: torch.Tensor, n: int) -> torch.Tensor:
    """The n edges with the largest |score| (ties in stream order), pruned to those on a path."""
    order = sorted(range(len(scores)), key=lambda i: (-abs(float(scores[i])), i))[:n]
    mask = torch.zeros(len(scores), dtype=torch.bool)
    mask[order] = True
    return connected(layout, mask)


def curve(runner: CircuitRunner, scores: torch.Tensor, percents: Sequence[float] = CURVE_PERCENTS) -> Curve:
    """The faithfulness curve of circuits chosen by score (see the module docstring)."""
    total = len(scores)
    points = []
    for pct in percents:
        n = min(total, math.ceil(total * pct / 100))
        mask = top_mask(runner.layout, scores, n)
        value = runner.run(mask)
        points.append(CurvePoint(pct, int(mask.sum()), runner.faithfulness(value), value))
    xs = [0.0] + [p.percent / 100 for p in points]
    fs = [0.0] + [p.faithfulness for p in points]
    span = xs[-1] - xs[0]
    area = lambda ys: sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1)) / span  # noqa: E731
    return Curve(tuple(points), area(fs), area([abs(1 - f) for f in fs]), runner.clean, runner.corrupted)


def smallest_circuit(runner: CircuitRunner, scores: torch.Tensor, target: float,
                     known: Sequence[CurvePoint] = ()) -> tuple[torch.Tensor, float]:
    """(mask, faithfulness) of the smallest top-n circuit (bisection over n, assuming faithfulness grows with
    n) whose faithfulness reaches `target`; the whole graph when none smaller does."""
    total = len(scores)
    lo, hi = 0, total  # faithfulness(lo) < target assumed; hi reaches it (the whole graph: 1)
    for p in known:
        n = min(total, math.ceil(total * p.percent / 100))
        if p.faithfulness >= target:
            hi = min(hi, n)
        else:
            lo = max(lo, n) if n < hi else lo
    cache: dict[int, tuple[torch.Tensor, float]] = {}

    def f(n: int) -> tuple[torch.Tensor, float]:
        if n not in cache:
            mask = top_mask(runner.layout, scores, n)
            cache[n] = (mask, runner.faithfulness(runner.run(mask)))
        return cache[n]

    while hi - lo > 1:
        mid = (lo + hi) // 2
        if f(mid)[1] >= target:
            hi = mid
        else:
            lo = mid
    return f(hi)
