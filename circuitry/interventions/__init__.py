"""Intervention mechanics: ablate nodes, patch single edges, freeze patterns, batched sweeps.

Targets: `Node` (head "L{l}H{h}" or MLP "M{l}"), `Edge` (sender -> receiver
head, kind Q/K/V, or sender -> logits, kind "direct").
Interventions (frozen records): `Ablation(node, method, preserve_patterns)`,
`EdgePatch(edge, method)`, `Combined(parts)`; methods "zero", "mean",
"resample" (see `records` for their exact meaning).
Running: `clean_run(model, tokens)` -> `CleanRun` (shareable);
`run_interventions(model, clean, interventions, metric, reference=...,
method="batched" | "naive")` -> `SweepResult`; `run_with_intervention` and
`intervention_hooks` for a single full run. Everything runs under
torch.inference_mode().

Example::

    clean = clean_run(model, batch.tokens)
    res = run_interventions(model, clean, [Ablation(n) for n in all_heads(model.cfg)], metric)
"""

from circuitry.interventions.records import (
    METHODS,
    Ablation,
    CleanRun,
    Combined,
    EdgePatch,
    Intervention,
    Metric,
    SweepResult,
    clean_hook_names,
    clean_run,
    parts_of,
    reference_run,
)
from circuitry.interventions.sweep import (
    default_max_batch,
    intervention_hooks,
    run_interventions,
    run_with_intervention,
)
from circuitry.interventions.targets import EDGE_KINDS, LOGITS, Edge, Node, all_heads, all_mlps

__all__ = [
    "METHODS", "EDGE_KINDS", "LOGITS", "Node", "Edge", "all_heads", "all_mlps",
    "Ablation", "EdgePatch", "Combined", "Intervention", "Metric", "parts_of",
    "CleanRun", "clean_run", "reference_run", "clean_hook_names", "SweepResult",
    "run_interventions", "run_with_intervention", "intervention_hooks", "default_max_batch",
]
