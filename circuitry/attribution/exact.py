"""Exact attribution: every edge (or node) patched from the corrupted run on its own, through the sweep engine.

score = sign * (M(clean) - M(clean with the edge patched)), sign = +1 when higher is better: the same
convention as the gradient methods, which approximate it. An edge patch replaces the sender's output
only along that edge (`circuitry.interventions.EdgePatch`, method `corrupted`); a node patch replaces a
head's or MLP's output in every path (`Ablation`, method `corrupted`), and the embeddings' node is the
run with the corrupted token embeddings (positions are the same in both runs, so `pos_embed` is 0).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from circuitry.attribution.layout import Layout
from circuitry.interventions import (
    Ablation,
    EdgePatch,
    Node,
    clean_run,
    patched_site_names,
    reference_run,
    run_interventions,
)
from circuitry.interventions import Edge as IEdge
from circuitry.interventions.targets import sender_of
from circuitry.metricfn import MetricLike, resolve_metric
from circuitry.names import EMBED, POS_EMBED


def edge_patches(layout: Layout, at: torch.Tensor | None = None) -> list[EdgePatch]:
    """The path patch of every edge of `layout` from the corrupted run (method `corrupted`), in edge order."""
    return [EdgePatch(IEdge(sender_of(e.sender), None if e.kind == "direct" else Node.parse(e.receiver), e.kind),
                      "corrupted", at=at) for e in layout.edges]


def exact_scores(model, batch, metric: MetricLike, sign: float, level: str, memory_budget: int | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 at: torch.Tensor | None = None) -> tuple[torch.Tensor, int, float, float]:
    """(scores, forward passes, metric on the clean run, metric on the corrupted run): scores [n_edges] in
    `Layout.edges` order (level "edges") or [n_senders] in `Layout.senders` order (level "nodes").
    metric: a plugin's name, a `Metric` record or metric(logits, batch, clean_logits=None) -> float
    (`circuitry.metricfn`). at [batch, pos] (bool): patch at those positions only."""
    fn = resolve_metric(metric)
    layout = Layout.of(model.cfg)
    tokens, corrupted = model.check_tokens(batch.tokens), model.check_tokens(batch.corrupted)
    if level == "edges":
        items: list = edge_patches(layout, at)
        names = list(range(len(items)))
    else:
        names = [i for i, n in enumerate(layout.senders) if n not in (EMBED, POS_EMBED)]
        items = [Ablation(Node.parse(layout.senders[i]), "corrupted", at=at) for i in names]
    clean = clean_run(model, tokens, patterns=False, extra=patched_site_names(items))
    base = float(fn(clean.logits, batch, clean.logits))
    reference = reference_run(model, corrupted, items)
    res = run_interventions(model, clean, items, fn, batch=batch, reference=reference,
                            memory_budget=memory_budget, progress=progress)
    size = len(layout.edges) if level == "edges" else len(layout.senders)
    out = torch.zeros(size, dtype=torch.float64)
    for i, v in zip(names, res.values):
        out[i] = sign * (base - float(v))
    passes = 1 + 1 + res.n_passes
    if level == "nodes":  # the embeddings: the clean run with the corrupted token embeddings
        with torch.inference_mode():
            e_corr = model.embed.W_E[corrupted]
            if at is not None:
                e_corr = torch.where(at.to(e_corr.device)[:, :, None], e_corr, model.embed.W_E[tokens])
            logits = model.run_with_hooks(tokens, [("hook_embed", lambda x, hook: e_corr)])
        out[layout.index[EMBED]] = sign * (base - float(fn(logits, batch, clean.logits)))
        passes += 1
    return out, passes, base, float(fn(reference.logits, batch, clean.logits))
