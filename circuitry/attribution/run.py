"""`attribute(model, batch, metric, method, ...)`: score every node and edge of a task with one method."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from circuitry.attribution.exact import exact_scores
from circuitry.attribution.gradients import GRADIENT_METHODS, gradient_scores
from circuitry.attribution.layout import Layout
from circuitry.attribution.result import AttributionResult
from circuitry.errors import UsageError, did_you_mean
from circuitry.patching import position_labels

METHODS = (*GRADIENT_METHODS, "exact")
LEVELS = ("nodes", "edges")
DEFAULT_STEPS = 5


def check_method(method: str) -> str:
    if method not in METHODS:
        raise UsageError(f"unknown attribution method {method!r}{did_you_mean(method, METHODS)}; valid: "
                         f"{', '.join(METHODS)}")
    return method


def metric_record(name: str, manager=None):
    """The metric plugin `name`, which attribution by gradients needs differentiable."""
    from circuitry.plugins import get_manager

    return (manager or get_manager()).get("circuitry_metrics", name, "metric")


def attribute(model, batch, metric: str = "logit_diff", method: str = "eap-ig", level: str = "edges",
              steps: int = DEFAULT_STEPS, memory_budget: int | None = None,
              progress: Callable[[int, int], None] | None = None, manager=None,
              at: torch.Tensor | None = None, per_position: bool = False) -> AttributionResult:
    """Scores of every edge (and node) of `model`'s residual graph on a task batch (`ContrastiveBatch`).

    method: eap, eap-ig (input embeddings interpolated, `steps` runs), eap-ig-act (receiver inputs
    interpolated) or exact (one patch per edge / node through the sweep engine). level: edges (edges
    and nodes) or nodes (exact: nodes only, one patch per node). at [batch, pos] (bool, e.g.
    `batch.mask(["S2", "END"])`): patch only at those positions (default every position). per_position: also
    the node scores by position (gradient methods)."""
    check_method(method)
    if level not in LEVELS:
        raise UsageError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    if not hasattr(batch, "corrupted"):
        raise UsageError("attribution needs a contrastive task (clean and corrupted prompts): --task FILE, or "
                         "--task induction")
    record = metric_record(metric, manager)
    sign = -1.0 if record.lower_is_better else 1.0
    layout = Layout.of(model.cfg)
    layout.check(model.cfg)
    start = time.perf_counter()
    model.eval()
    if method == "exact":
        scores, passes, clean, corrupted = exact_scores(model, batch, record.compute, sign, level, memory_budget,
                                                        progress, at)
        edge_scores = scores if level == "edges" else None
        if level == "edges":
            node_scores, more, _, _ = exact_scores(model, batch, record.compute, sign, "nodes", memory_budget, at=at)
            passes += more
        else:
            node_scores = scores
        node_positions = None
    else:
        if record.tensor is None:
            raise UsageError(f"metric {metric!r} has no gradient (it counts or ranks); attribution by "
                             f"{method} needs a differentiable metric: logit_diff, correct_logit, prob, loss, kl "
                             f"(or --method exact)")
        g = gradient_scores(model, batch, record.tensor, method, steps, sign, memory_budget, progress, at,
                            per_position)
        edge_scores, node_positions, passes = g.edges, g.node_positions, g.n_passes
        node_scores = layout.node_sums(edge_scores)
        clean, corrupted = g.metric_clean, g.metric_corrupted
    return AttributionResult(method, metric, layout, edge_scores, node_scores, node_positions,
                             position_labels(batch) if node_positions is not None else (), clean, corrupted,
                             steps if method not in ("eap", "exact") else None, passes,
                             time.perf_counter() - start)
