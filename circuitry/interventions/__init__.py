"""Intervention mechanics: ablate nodes, patch single edges or activation sites, freeze patterns, batched sweeps.

Targets: `Node` (head "L{l}H{h}" or MLP "M{l}"), `Edge` (sender -> receiver
head, kind Q/K/V, or sender -> logits, kind "direct"), activation `Site`s
(`circuitry.names`: "L1.resid_pre", "L0.attn_out", "M0", "L1H3", "L1H3.q",
"L1H3.k_input", "L1H3.pattern" ...).
Interventions (frozen records): `Ablation(node, method, preserve_patterns, at)`,
`EdgePatch(edge, method, at)`, `Patch(site, method, at)`, `Combined(parts)`;
methods "zero", "mean", "resample", "corrupted" (the paired run's activation,
row-aligned; see `records` for their exact meaning); `at`: None (every
position) or a bool mask [batch, pos] (`positions`).
Running: `clean_run(model, tokens)` -> `CleanRun` (shareable);
`reference_run(model, tokens, interventions)` caches what replacements read;
`run_interventions(model, clean, interventions, metric, batch=..., reference=...,
method="batched" | "naive")` -> `SweepResult`, the metric in the one signature of `circuitry.metricfn`
(a plugin's name, a `Metric` record or fn(logits, batch, clean_logits=None)); `run_with_intervention` and
`intervention_hooks` for a single full run. Everything runs under
torch.inference_mode().

Example::

    clean = clean_run(model, batch.tokens)
    res = run_interventions(model, clean, [Ablation(n) for n in all_heads(model.cfg)], "loss", batch=batch)
"""

from circuitry.interventions.records import (
    METHODS,
    Ablation,
    CleanRun,
    Combined,
    EdgePatch,
    Intervention,
    Patch,
    SweepResult,
    clean_hook_names,
    clean_run,
    node_site,
    parts_of,
    patched_site_names,
    reference_names,
    reference_run,
)
from circuitry.interventions.sweep import (
    default_max_batch,
    intervention_hooks,
    run_interventions,
    run_with_intervention,
)
from circuitry.interventions.targets import EDGE_KINDS, LOGITS, Edge, Node, all_heads, all_mlps
from circuitry.metricfn import MetricFn, MetricLike

__all__ = [
    "METHODS", "EDGE_KINDS", "LOGITS", "Node", "Edge", "all_heads", "all_mlps",
    "Ablation", "EdgePatch", "Patch", "Combined", "Intervention", "MetricFn", "MetricLike", "parts_of", "node_site",
    "CleanRun", "clean_run", "reference_run", "reference_names", "clean_hook_names", "patched_site_names",
    "SweepResult",
    "run_interventions", "run_with_intervention", "intervention_hooks", "default_max_batch",
]
