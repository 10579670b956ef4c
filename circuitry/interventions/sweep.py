"""Running interventions: one at a time (naive) or many per forward pass (batched).

Batched sweeps give every intervention a copy of the clean batch (each copy
carries its own intervention, applied to its rows only), stack as many
copies along the batch dimension as one pass may hold (`pass_rows`), and
start every pass at the latest stage its copies allow: the cached clean
residual there, repeated, changed by the copies' starts (see
`circuitry.interventions.plan`). Nothing before that stage is computed
again: it is the clean run's. Copies with different start stages never
share a pass, so no copy computes a block it does not need, and
interventions that change nothing (every replacement equals the clean
activation it replaces, as for positions before the first token where clean
and corrupted prompts differ) are not run: their value is the clean run's.
The metric is evaluated per copy on logits made from the final residual, so
the logits of one copy at a time are held, as in a single forward pass.

How many copies share a pass: as many as fit in the bytes one copy's pass
takes (at least `MIN_PASS_BYTES`), and never more than the memory budget
allows. A pass of the clean batch's size keeps the peak memory near one
forward pass's; larger passes are not faster per row on a CPU (and often
slower: their activations no longer stay in the caches, and every fresh
allocation of that size costs page faults), while batches too small to keep
the cores busy are stacked up to `MIN_PASS_BYTES`. `max_batch` sets the rows
of a pass explicitly (for an accelerator with memory to spare). Inside the
loop over passes nothing waits for the device: masks' positions and
unchanged interventions are found before the first pass.

`sweep_clean_run` makes a clean run that caches only what a sweep of given
interventions reads; `run_interventions` makes one when given tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch

from circuitry.errors import UsageError
from circuitry.interventions.plan import Context, check_targets, collect, read_names, stage_layers
from circuitry.interventions.records import (
    Ablation,
    CleanRun,
    EdgePatch,
    Intervention,
    Patch,
    SweepResult,
    as_interventions,
    clean_run,
    parts_of,
    patched_site_names,
    reference_run,
)
from circuitry.metricfn import MetricFn, MetricLike, resolve_metric

RUN_METHODS = ("batched", "naive")


def _needs_patterns(items: Iterable[Intervention]) -> bool:
    return any(isinstance(p, Ablation) and p.preserve_patterns for it in items for p in parts_of(it))


def _needs_head_inputs(items: Iterable[Intervention]) -> bool:
    """Whether a run materialises per-head Q/K/V inputs [batch, pos, head, d_model] (edge or input patches)."""
    return any((isinstance(p, EdgePatch) and p.edge.kind in ("Q", "K", "V"))
               or (isinstance(p, Patch) and p.site.kind.endswith("_input"))
               for it in items for p in parts_of(it))


def sweep_clean_run(model, tokens: torch.Tensor, interventions: Iterable[Intervention]) -> CleanRun:
    """The clean run of `model` on tokens [batch, pos] that a sweep of `interventions` needs, caching nothing
    more (`plan.read_names`: the residual stream at each one's start, the clean values of the sites they
    change, patterns to freeze). A `clean_run` (what checks share) serves any sweep; this one, only these
    interventions, at a fraction of the memory."""
    items = as_interventions(interventions)
    tokens = model.check_tokens(tokens)
    check_targets(model.cfg, [part for it in items for part in parts_of(it)])
    with torch.inference_mode():
        logits, cache = model.run_with_cache(tokens, names=read_names(model.cfg, items))
    return CleanRun(tokens, logits, cache)


def _as_clean(model, clean: CleanRun | torch.Tensor, items: tuple[Intervention, ...], method: str) -> CleanRun:
    if isinstance(clean, CleanRun):
        return clean
    if isinstance(clean, torch.Tensor):
        if method == "naive":
            return clean_run(model, clean, patterns=_needs_patterns(items), extra=patched_site_names(items))
        return sweep_clean_run(model, clean, items)
    raise UsageError(f"clean must be a CleanRun or a token tensor [batch, pos], got {type(clean).__name__}")


def _as_reference(model, reference: CleanRun | torch.Tensor | None,
                  items: tuple[Intervention, ...] | None = None) -> CleanRun | None:
    if reference is None or isinstance(reference, CleanRun):
        return reference
    if isinstance(reference, torch.Tensor):
        return reference_run(model, reference, items)
    raise UsageError(f"reference must be a CleanRun, a token tensor [batch, pos] or None, "
                     f"got {type(reference).__name__}")


def intervention_hooks(model, clean: CleanRun, intervention: Intervention,
                       reference: CleanRun | torch.Tensor | None = None) -> list[tuple[str, Callable]]:
    """Hooks that apply `intervention` to a full run of model on clean.tokens.

    Use them with `model.run_with_hooks(clean.tokens, hooks)` or
    `model.run_with_cache(clean.tokens, hooks=hooks)` under torch.inference_mode().
    """
    with torch.inference_mode():
        check_targets(model.cfg, list(parts_of(intervention)))
        ctx = Context(model, clean, _as_reference(model, reference, (intervention,)))
        return collect(ctx, [(slice(None), parts_of(intervention))], 0, None)


def run_with_intervention(model, clean: CleanRun | torch.Tensor, intervention: Intervention,
                          reference: CleanRun | torch.Tensor | None = None) -> torch.Tensor:
    """Logits [batch, pos, d_vocab] of one full run with `intervention` applied."""
    with torch.inference_mode():
        check_targets(model.cfg, list(parts_of(intervention)))
        clean = _as_clean(model, clean, (intervention,), "naive")
        return model.run_with_hooks(clean.tokens, intervention_hooks(model, clean, intervention, reference))


MIN_PASS_BYTES = 128 * 2**20  # passes of smaller batches stack copies up to this size (about 128 MiB of activations)


def pass_bytes(cfg, rows: int, pos: int, per_head_inputs: bool = False) -> int:
    """Bytes a forward pass over rows x pos tokens holds at once, by a rough estimate of a block's live activations.

    Per row and position (float32): ~12 d_model (residual, normalised input, q/k/v, z, outputs),
    3 d_mlp (pre, post, output), 3 head x pos (scores, pattern), and 2 head x d_model
    when per-head Q/K/V inputs are materialised (edge patches).
    """
    per_pos = 12 * cfg.d_model + 3 * (cfg.d_mlp or 0) + 3 * cfg.n_heads * pos
    if per_head_inputs:
        per_pos += 2 * cfg.n_heads * cfg.d_model
    return 4 * int(rows) * int(pos) * per_pos


def default_max_batch(cfg, pos: int, budget: float | None = None,
                      per_head_inputs: bool = False) -> int:
    """Rows per forward pass that fit `budget` bytes (default: the memory budget, `circuitry.budget`), by
    `pass_bytes`'s estimate (at least one)."""
    if budget is None:
        from circuitry.budget import memory_budget

        budget = memory_budget()
    return max(1, int(budget // pass_bytes(cfg, 1, pos, per_head_inputs)))


def pass_rows(cfg, batch: int, pos: int, budget: float | None = None, per_head_inputs: bool = False) -> int:
    """Rows of one pass of a batched sweep over copies of a batch [batch, pos]: as many whole copies as fit in
    the bytes of one copy's pass or `MIN_PASS_BYTES`, whichever is larger, and no more than fit `budget`
    (`default_max_batch`); at least one copy (a copy's rows are never split across passes)."""
    one = pass_bytes(cfg, batch, pos, per_head_inputs)
    copies = max(1, max(one, MIN_PASS_BYTES) // one)
    return min(copies * batch, default_max_batch(cfg, pos, budget, per_head_inputs))


def _run_from_stage(model, tokens: torch.Tensor, resid: torch.Tensor, stage: int) -> torch.Tensor:
    """The final residual [rows, pos, d_model] of a run that starts with `resid` at `stage` (tokens [rows, pos]:
    only their shape is read, for the positions)."""
    L = model.cfg.n_layers
    if stage == 2 * L:
        return resid
    layer, mid = divmod(stage, 2)
    if mid:  # resume block `layer` at its MLP (sequential MLP models), as Block.forward does
        block = model.blocks[layer]
        resid = block.hook_resid_mid(resid)
        resid = block.hook_resid_post(resid + block.mlp_branch(resid))
        layer += 1
        if layer == L:
            return resid
    return model(tokens, start_at_layer=layer, resid=resid, stop_at_layer=L)


def _value(metric: MetricFn | None, logits: torch.Tensor, batch, clean_logits: torch.Tensor) -> torch.Tensor:
    if metric is None:
        return logits
    v = metric(logits, batch, clean_logits)
    return v.detach() if isinstance(v, torch.Tensor) else torch.tensor(float(v))


def _chunks(idxs: list[int], per_chunk: int) -> list[list[int]]:
    """Split into ceil(n / per_chunk) chunks of nearly equal size (none for no items)."""
    if not idxs:
        return []
    n_chunks = math.ceil(len(idxs) / per_chunk)
    size, extra = divmod(len(idxs), n_chunks)
    out, start = [], 0
    for c in range(n_chunks):
        end = start + size + (1 if c < extra else 0)
        out.append(idxs[start:end])
        start = end
    return out


def run_interventions(model, clean: CleanRun | torch.Tensor, interventions: Sequence[Intervention],
                      metric: MetricLike | None = None, *, batch=None, clean_logits: torch.Tensor | None = None,
                      reference: CleanRun | torch.Tensor | None = None, method: str = "batched",
                      max_batch: int | None = None, memory_budget: float | None = None,
                      progress: Callable[[int, int], None] | None = None) -> SweepResult:
    """Run each intervention on the clean tokens and return its metric value (or logits).

    clean: a CleanRun (shared with other callers) or tokens [batch, pos].
    metric: the metrics' one signature (`circuitry.metricfn`), given as a metric plugin's name, a `Metric`
    record or a function metric(logits [batch, pos, d_vocab], batch, clean_logits=None) -> float or tensor
    (0-d or [batch]), called once per intervention as metric(logits, batch, clean_logits); None returns the
    logits of every intervention. batch: what the metric reads as its batch (a `TokenBatch` or
    `ContrastiveBatch` for the metric plugins; default: the clean run's tokens [batch, pos]). clean_logits:
    what it reads as the clean logits (default: the clean run's; a denoising sweep, whose clean run is the
    corrupted prompts', passes the logits of the clean prompts).
    reference: tokens or a CleanRun for "mean", "resample" and "corrupted" (see records.METHODS);
    tokens are run once, caching what the interventions read.
    method "batched" (default): one copy of the clean batch per intervention, copies stacked along the
    batch, at most max_batch rows per pass (default `pass_rows`: the copies that fit in one copy's pass or
    MIN_PASS_BYTES, and in memory_budget bytes; by default the memory budget of `circuitry.budget`,
    CIRCUITRY_MEMORY_BUDGET; a pass holds at least one whole copy), each pass starting at its copies'
    common stage; interventions that change nothing are not run.
    "naive": one full forward pass per intervention, all changes made by hooks (the reference).
    Both give the same values up to float rounding.
    progress(done, total): called after every pass with the interventions done so far.
    """
    if method not in RUN_METHODS:
        raise UsageError(f"method must be one of {', '.join(RUN_METHODS)}, got {method!r}")
    if max_batch is not None and (not isinstance(max_batch, int) or max_batch < 1):
        raise UsageError(f"max_batch must be a positive integer, got {max_batch!r}")
    items = as_interventions(interventions)
    fn = None if metric is None else resolve_metric(metric)
    with torch.inference_mode():
        check_targets(model.cfg, [part for it in items for part in parts_of(it)])
        clean = _as_clean(model, clean, items, method)
        ctx = Context(model, clean, _as_reference(model, reference, items))
        tokens = clean.tokens
        reads = tokens if batch is None else batch  # what the metric reads as its batch
        clean_logits = clean.logits if clean_logits is None else clean_logits
        b, pos = tokens.shape
        L = model.cfg.n_layers
        values: list[torch.Tensor | None] = [None] * len(items)
        parts = [parts_of(it) for it in items]
        stages = [min(ctx.stage(part) for part in p) for p in parts]  # validates every intervention first
        n_passes, row_layers, done = 0, 0.0, 0
        unchanged = [method == "batched" and all(ctx.unchanged(part) for part in p) for p in parts]
        if any(unchanged):
            clean_value = _value(fn, clean.logits, reads, clean_logits)
            for i in (i for i, u in enumerate(unchanged) if u):
                values[i] = clean_value
                done += 1
        if method == "naive":
            for i, p in enumerate(parts):
                hooks = collect(ctx, [(slice(None), p)], 0, None)
                logits = model.run_with_hooks(tokens, hooks)
                ctx.release()
                values[i] = _value(fn, logits, reads, clean_logits)
                n_passes, done = n_passes + 1, done + 1
                row_layers += b * L
                if progress is not None:
                    progress(done, len(items))
        else:
            if max_batch is None:
                max_batch = pass_rows(model.cfg, b, pos, memory_budget, per_head_inputs=_needs_head_inputs(items))
            per_chunk = max(1, max_batch // b)
            stacked: dict[int, torch.Tensor] = {}  # copies -> the tokens of a pass [copies * batch, pos]
            for stage in sorted(set(stages)):
                group = [i for i, s in enumerate(stages) if s == stage and not unchanged[i]]
                start = ctx.stage_resid(stage)  # the clean residual every pass of this stage starts from
                for chunk in _chunks(group, per_chunk):
                    n = len(chunk)
                    resid = start.repeat(n, 1, 1)  # [n * batch, pos, d_model], changed in place by the starts
                    copies = [(slice(j * b, (j + 1) * b), parts[i]) for j, i in enumerate(chunk)]
                    hooks = collect(ctx, copies, stage, resid)
                    ctx.release()
                    if n not in stacked:
                        stacked[n] = tokens.repeat(n, 1)
                    with model.hooks(hooks):
                        final = _run_from_stage(model, stacked[n], resid, stage)
                    del hooks, resid
                    for (rows, _), i in zip(copies, chunk):  # one copy's logits at a time
                        logits = model.unembed_resid(model.ln_final(final[rows]))
                        values[i] = _value(fn, logits, reads, clean_logits)
                        del logits
                    del final
                    n_passes, done = n_passes + 1, done + n
                    row_layers += n * b * stage_layers(stage, L)
                    if progress is not None:
                        progress(done, len(items))
    return SweepResult(items, tuple(values), n_passes, row_layers, method,  # type: ignore[arg-type]
                       tuple(it.name for it in items), sum(unchanged))
