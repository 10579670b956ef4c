"""`activation_patching`: one patch per layer / head / position, batched through the sweep engine.

Noising (the default): the base run is the clean prompts, the reference run
the corrupted ones, and every patch puts the corrupted activation (row i from
corrupted prompt i) into the clean run. Denoising: the roles are swapped
(`ContrastiveBatch.corrupted_batch()`), clean activations go into the
corrupted run. The base run is cached once (with the patched sites), the
reference run caches only the patched sites, and the patches run through
`circuitry.interventions.run_interventions`: stacked along the batch, each
pass starting at the earliest stage its patches change, sized by the memory
budget.

The metric (`circuitry.metricfn`: a plugin's name, a `Metric` record or fn(logits, batch, clean_logits=None))
reads the task batch given and, as its clean logits, the unpatched run of the clean prompts in both
directions: the base run when noising, the reference run when denoising (`kl` measures how far each run is
from the clean one).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from circuitry.budget import format_bytes, require
from circuitry.budget import memory_budget as default_budget
from circuitry.errors import UsageError
from circuitry.interventions import (
    clean_hook_names,
    clean_run,
    patched_site_names,
    reference_names,
    reference_run,
    run_interventions,
)
from circuitry.metricfn import MetricFn, MetricLike, resolve_metric
from circuitry.patching.grids import make_grid
from circuitry.patching.labels import head_labels, layer_labels, position_labels
from circuitry.patching.normalise import normalise
from circuitry.patching.result import PatchingResult
from circuitry.tasks import ContrastiveBatch


def _number(metric: MetricFn, logits: torch.Tensor, batch: ContrastiveBatch, clean_logits: torch.Tensor,
            run: str) -> float:
    value = metric(logits, batch, clean_logits)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise UsageError(f"the patching metric must return one number for the whole batch (a float or a 0-d "
                             f"tensor); on the {run} run it returned shape {tuple(value.shape)}")
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UsageError(f"the patching metric must return a float or a 0-d tensor, got "
                         f"{type(value).__name__}") from None


def cache_bytes(cfg, batch: int, pos: int, names: list[str]) -> int:
    """Bytes (float32) of cached activations `names` for batch x pos tokens, plus the logits."""
    per_pos = cfg.d_vocab
    for name in names:
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "hook_pattern":
            per_pos += cfg.n_heads * pos
        elif leaf.endswith("_input"):
            per_pos += cfg.n_heads * cfg.d_model
        elif leaf in ("hook_q", "hook_k", "hook_v", "hook_z"):
            per_pos += cfg.n_heads * cfg.d_head
        else:
            per_pos += cfg.d_model
    return 4 * batch * pos * per_pos


def activation_patching(model, batch: ContrastiveBatch, what: str, metric: MetricLike, *, denoise: bool = False,
                        per_position: bool | None = None, memory_budget: float | None = None,
                        progress: Callable[[int, int], None] | None = None,
                        method: str = "batched") -> PatchingResult:
    """Patch `what` (`circuitry.patching.grids`: resid_pre, resid_mid, resid_post, attn_out, mlp_out, heads,
    q, k, v, q_input, k_input, v_input, pattern) layer by layer, head by head and, per position, position by
    position, from the paired run, and measure `metric` on each patched run.

    metric: a metric plugin's name, a `Metric` record or metric(logits [batch, pos, d_vocab], batch,
    clean_logits=None) -> a float or 0-d tensor for the whole batch (e.g. the mean logit difference of the
    answers at the read positions), called with `batch` and the logits of the unpatched clean prompts.
    denoise=False: noising (corrupted activations into the clean run); True: denoising. per_position: None for
    the kind's default (layer kinds per position, head kinds over every position at once). memory_budget:
    bytes for the caches and every pass (default: the memory budget, `circuitry.budget`). progress(done,
    total): called after every pass. method "naive": one full pass per patch (the reference the batched sweep
    is tested against).
    """
    if not isinstance(batch, ContrastiveBatch):
        raise UsageError(f"activation patching needs a ContrastiveBatch (clean and corrupted prompts), got "
                         f"{type(batch).__name__}")
    fn = resolve_metric(metric)
    base = batch.corrupted_batch() if denoise else batch  # base.tokens: the run patched; base.corrupted: the source
    n_rows, n_pos = base.tokens.shape
    grid = make_grid(what, model.cfg, n_rows, n_pos, per_position, device=model.device)
    budget = default_budget() if memory_budget is None else int(memory_budget)
    extra = patched_site_names(grid.patches)
    base_names = list(dict.fromkeys([*clean_hook_names(model, patterns=False), *extra]))
    need = (cache_bytes(model.cfg, n_rows, n_pos, base_names)
            + cache_bytes(model.cfg, n_rows, n_pos, reference_names(model, grid.patches)))
    require(need, f"activation patching of {what} ({format_bytes(need)} of cached activations for "
            f"{n_rows} x {n_pos} tokens)", budget)
    with torch.inference_mode():
        clean = clean_run(model, base.tokens, patterns=False, extra=extra)
        reference = reference_run(model, base.corrupted, grid.patches)
        clean_logits = reference.logits if denoise else clean.logits  # the unpatched run of the clean prompts
        m_base = _number(fn, clean.logits, batch, clean_logits, "corrupted" if denoise else "clean")
        m_ref = _number(fn, reference.logits, batch, clean_logits, "clean" if denoise else "corrupted")
        sweep = run_interventions(model, clean, grid.patches, fn, batch=batch, clean_logits=clean_logits,
                                  reference=reference, method=method, memory_budget=budget, progress=progress)
    values = torch.tensor([float(v) for v in sweep.values], dtype=torch.float64).reshape(grid.shape)
    m_clean, m_corrupted = (m_ref, m_base) if denoise else (m_base, m_ref)
    direction = "denoising" if denoise else "noising"
    axes = {"layer": layer_labels(model.cfg.n_layers), "head": head_labels(model.cfg.n_heads),
            "pos": position_labels(batch)}
    return PatchingResult(what, values, normalise(values, m_clean, m_corrupted, direction), m_clean, m_corrupted,
                          grid.dims, tuple(axes[d] for d in grid.dims), direction, sweep.n_passes + 2,
                          len(grid.patches), sweep.n_unchanged)
