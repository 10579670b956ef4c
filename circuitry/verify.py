"""`verify(spec)`: a circuit spec checked against a model -> VerificationReport.

The orchestration of the check kinds (`circuitry.checks`, one module per kind):

1. the model and the clean batch (errors located at the spec's `model:` and
   `data:` lines);
2. every check is planned against the model: every problem of every check
   is raised together, at its file:line:col, before any work starts;
3. what the plans need: the reference batch (mean / resample ablations), one
   clean cached run (with attention patterns only when a check reads them,
   with normalisation scales for decompositions), the memory of each checked
   against the budget first;
4. one batched sweep per metric for every intervention of every check;
5. each check measures its result from the shared `VerifiedRun`.

The report keeps the run (`report.run`), so the HTML report, discovery and
notebooks reuse the model, the batch, the clean run and the detector results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from circuitry.checks import CheckPlan, CheckResult, VerifiedRun
from circuitry.data import TokenBatch
from circuitry.errors import UsageError
from circuitry.model import HookedTransformer
from circuitry.plugins import PluginManager, get_manager
from circuitry.spec.format import CircuitSpec, relative_to
from circuitry.spec.loader import SpecError, raise_all

__all__ = ["CheckResult", "VerificationReport", "failing_parts", "load_spec_model", "spec_model_ref", "verify"]


@dataclass(frozen=True)
class VerificationReport:
    """Every check's result; `run` is the shared run they were measured on (not part of the JSON)."""

    spec: str
    name: str
    model: str
    data: str
    checks: tuple[CheckResult, ...]
    seconds: float
    header: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    run: VerifiedRun | None = field(default=None, compare=False, repr=False)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    def to_json(self) -> dict:
        return {"spec": self.spec, "name": self.name, "model": self.model, "data": self.data,
                "passed": self.passed, "seconds": round(self.seconds, 3),
                "checks": [c.to_json() for c in self.checks], "warnings": list(self.warnings)}

    def _repr_html_(self) -> str:  # Jupyter shows the report inline: claims, circuit, scores
        from circuitry.report.notebook import report_html
        return report_html(self)


def failing_parts(report: VerificationReport, result: CheckResult) -> list[str]:
    """The nodes or edges of a check with several values (`details["values"]`: one per head or edge, each of
    which must meet the expectation) whose own value does not; [] when the report kept no run."""
    from circuitry.spec.format import expectation_of

    values = result.details.get("values")
    check = next((c for c in report.run.spec.checks if c.id == result.id), None) if report.run else None
    if not isinstance(values, dict) or check is None:
        return []
    _, exp = expectation_of(check)
    return [k for k, v in values.items() if not exp.holds(v)]


# ------------------------------------------------------------------ model and data
def spec_model_ref(spec: CircuitSpec) -> str:
    """The spec's model reference, with a relative path (plain, `file:`, `hf:` or `tl:`) read from the
    spec's directory when it exists there."""
    from circuitry.sources import split_ref

    scheme, rest = split_ref(spec.model)
    if scheme not in ("file", "hf", "tl") or not rest:
        return spec.model
    beside = relative_to(spec.file, rest)
    if beside == rest:
        return spec.model
    return beside if spec.model == rest else f"{scheme}:{beside}"


def load_spec_model(spec: CircuitSpec, model_ref: str | None = None, device: str | None = None,
                    dtype: str | None = None, device_map: str | None = None) -> tuple[HookedTransformer, str]:
    """The spec's model (or `model_ref`) and the reference it was loaded from; load errors of the spec's
    own `model:` point at that line."""
    from circuitry.sources import check_device, check_dtype, load_model

    check_device(device)  # not the spec's fault: not located at its model line
    check_dtype(dtype)
    ref = model_ref or spec_model_ref(spec)
    try:
        return load_model(ref, device=device, dtype=dtype or spec.dtype, device_map=device_map), ref
    except SpecError:
        raise
    except UsageError as exc:
        if model_ref:
            raise
        raise spec.error(("model",), str(exc)) from None


def _batch(spec: CircuitSpec, model: HookedTransformer, data: Any, key: tuple, manager: PluginManager,
           located: bool = True) -> TokenBatch:
    from circuitry.datasets import make_batch

    try:
        return make_batch(model, data, manager).to(model.device)
    except SpecError:
        raise
    except UsageError as exc:
        if not located:
            raise
        raise spec.error(key, str(exc)) from None


def _task_batch(spec: CircuitSpec, model: HookedTransformer) -> TokenBatch:
    """The clean prompts of the spec's task, paired with the corrupted ones (errors located in the task)."""
    from circuitry.budget import require, run_bytes
    from circuitry.tasks.build import build_batch

    batch = build_batch(spec.task, model)
    b, p = batch.tokens.shape
    try:
        require(2 * run_bytes(model.cfg, b, p), f"the clean and corrupted runs of task {spec.task.name} on {b} x {p} "
                                                f"tokens")
    except UsageError as exc:
        raise spec.error(spec.task_key, str(exc)) from None
    return batch


def _data_key(spec: CircuitSpec, key: str) -> tuple:
    return (key,) if key in spec.document.data else ()


# ------------------------------------------------------------------ planning
def _validate_circuit(run: VerifiedRun) -> list[SpecError]:
    """Every circuit node and edge checked against the model; the problems found."""
    errors = []
    for node in run.spec.nodes:
        try:
            run.component(node, ("circuit", "nodes", node), allow=("head", "mlp", "embed", "pos_embed"),
                          at_key=True)
        except SpecError as exc:
            errors.append(exc)
    for i, edge in enumerate(run.spec.edges):
        try:
            run.edge(edge, ("circuit", "edges", i))
        except SpecError as exc:
            errors.append(exc)
    return errors


def _located(run: VerifiedRun, path: tuple, exc: UsageError) -> SpecError:
    return exc if isinstance(exc, SpecError) else run.error(path, str(exc))


def _plan(run: VerifiedRun) -> dict[str, CheckPlan]:
    """Every check planned against the model; every problem raised together."""
    errors = _validate_circuit(run)
    plans: dict[str, CheckPlan] = {}
    for check in run.spec.checks:
        try:
            kind = run.lookup("circuitry_check_kinds", check.kind, (*check.path, "kind"))
            plans[check.id] = kind.plan(run, check)
        except UsageError as exc:
            errors.append(_located(run, check.path, exc))
    raise_all(errors)
    return plans


def _needs(plans: dict[str, CheckPlan]) -> frozenset[str]:
    out: frozenset[str] = frozenset()
    for plan in plans.values():
        out |= plan.needs
    return out


# ------------------------------------------------------------------ running
def _clean_run(run: VerifiedRun, needs: frozenset[str], keep_patterns: bool) -> None:
    from circuitry.budget import require, run_bytes
    from circuitry.interventions import clean_run

    model, tokens = run.model, run.batch.tokens
    patterns = "patterns" in needs or keep_patterns
    batch, pos = tokens.shape
    try:
        require(run_bytes(model.cfg, batch, pos, patterns=patterns), f"the clean run on {batch} x {pos} tokens")
    except UsageError as exc:
        raise run.error(_data_key(run.spec, "data"), str(exc)) from None
    scales = [] if model.cfg.normalization is None or "scales" not in needs else (
        [f"blocks.{l}.ln1.hook_scale" for l in range(model.cfg.n_layers)] + ["ln_final.hook_scale"])
    run.clean = clean_run(model, tokens, patterns=patterns, extra=scales)


def _reference(run: VerifiedRun, data_override: Any, manager: PluginManager, batches: dict | None) -> None:
    if batches is not None and "reference" in batches:
        run.reference_batch = batches["reference"]
        return
    _make_reference(run, data_override, manager)
    if batches is not None:
        batches["reference"] = run.reference_batch


def _make_reference(run: VerifiedRun, data_override: Any, manager: PluginManager) -> None:
    spec = run.spec
    if run.task is not None and data_override is None:  # the task's corrupted prompts
        run.reference_batch = run.task.corrupted_batch()
        return
    if data_override is not None:  # the overriding data with the next seed (or the same data)
        from circuitry.datasets import resolve

        ds, values = resolve(data_override, manager)
        if "seed" in values and values["seed"] < 2**63 - 1:
            values["seed"] += 1
        batch = _batch(spec, run.model, {"name": ds.name, **values}, (), manager, located=False)
    else:
        key = "reference_data" if "reference_data" in spec.document.data else "data"
        batch = _batch(spec, run.model, spec.reference_data, _data_key(spec, key), manager)
        if batch.tokens.shape[1] < run.batch.tokens.shape[1]:
            raise spec.error(_data_key(spec, key), f"the reference data has {batch.tokens.shape[1]} positions, "
                                                   f"fewer than the {run.batch.tokens.shape[1]} of the clean data: "
                                                   f"mean and resample ablations need at least as many")
    run.reference_batch = batch


def _sweeps(run: VerifiedRun, plans: dict[str, CheckPlan]) -> dict[str, float]:
    """One batched sweep per metric and direction over the interventions of every check; seconds per check.

    Noising sweeps run on the clean prompts with the reference (or the task's corrupted prompts) as the
    source; denoising sweeps run on the task's corrupted prompts with the clean prompts as the source."""
    from circuitry.interventions import reference_run, run_interventions

    groups: dict[tuple[str, str], list[tuple[str, str, Any]]] = {}
    for check in run.spec.checks:
        for s in plans[check.id].sweeps:
            groups.setdefault((s.metric, s.direction), []).append((check.id, s.key, s.intervention))
    # one reference run per direction, caching what that direction's interventions read
    noising = [it for (_, d), items in groups.items() if d == "noising" for _, _, it in items]
    denoising = [it for (_, d), items in groups.items() if d == "denoising" for _, _, it in items]
    seconds: dict[str, float] = {}
    for (metric, direction), items in groups.items():
        first = next(c for c in run.spec.checks if c.id == items[0][0])
        t = time.perf_counter()
        record = run.metric(metric, first.path)
        if direction == "denoising":
            base = run.corrupted_run()
            source = run.denoising_source(lambda: reference_run(run.model, run.batch.tokens, denoising))
        else:
            base, source = run.clean, run.reference(noising)
        try:
            res = run_interventions(run.model, base, [it for _, _, it in items], record, batch=run.batch,
                                    clean_logits=run.clean.logits, reference=source)
        except SpecError:
            raise
        except UsageError as exc:
            raise _located(run, first.path, exc) from None
        for (_, key, _), value in zip(items, res.values):
            run.swept[key] = float(value)
        per = (time.perf_counter() - t) / len(items)
        for check_id, _, _ in items:
            seconds[check_id] = seconds.get(check_id, 0.0) + per
    return seconds


def _measure(run: VerifiedRun, plans: dict[str, CheckPlan], sweep_seconds: dict[str, float]) -> list[CheckResult]:
    from dataclasses import replace

    results, errors = [], []
    for check in run.spec.checks:
        t = time.perf_counter()
        kind = run.lookup("circuitry_check_kinds", check.kind, (*check.path, "kind"))
        try:
            res = kind.measure(run, check, plans[check.id])
        except UsageError as exc:
            errors.append(_located(run, check.path, exc))
            continue
        results.append(replace(res, seconds=time.perf_counter() - t + sweep_seconds.get(check.id, 0.0)))
    raise_all(errors)
    return results


def verify(spec: CircuitSpec, model: HookedTransformer | None = None, model_ref: str | None = None,
           device: str | None = None, manager: PluginManager | None = None, data: Any = None,
           keep_patterns: bool = False, dtype: str | None = None,
           batches: dict[str, TokenBatch] | None = None) -> VerificationReport:
    """Check every claim of `spec`; `model` / `model_ref` override the spec's model, `data` (a data reference)
    its data. keep_patterns: keep the attention patterns in the clean run even when no check reads them
    (for pictures drawn from `report.run`). batches: the batches of an earlier call with a model of the same
    shape and vocabulary (checkpoints of one training run), reused; an empty dict is filled for later calls."""
    from circuitry.diagnostics import collecting, warn

    start = time.perf_counter()
    manager = manager or get_manager()
    ref = model_ref or spec.model
    if model is None:
        model, ref = load_spec_model(spec, model_ref, device, dtype)
    model.eval()
    with collecting() as found, torch.inference_mode():
        batch = batches.get("clean") if batches is not None else None
        if batch is None:
            batch = _task_batch(spec, model) if spec.task is not None and data is None else \
                _batch(spec, model, data if data is not None else spec.data, _data_key(spec, "data"), manager,
                       located=data is None)
            if batches is not None:
                batches["clean"] = batch
        run = VerifiedRun(spec, model, batch, manager)
        plans = _plan(run)
        needs = _needs(plans)
        if "reference" in needs:
            _reference(run, data, manager, batches)
        _clean_run(run, needs, keep_patterns)
        sweep_seconds = _sweeps(run, plans)
        results = _measure(run, plans, sweep_seconds)
    header: list[str] = []
    for lines in manager.call_hook("circuitry_report_header", spec=spec, model=model):
        header.extend([lines] if isinstance(lines, str) else list(lines or []))
    warnings = [*spec.warnings, *found, *run.warnings]
    for message in warnings:
        warn(message)  # to the command's warnings (stderr, --json) or Python's warnings
    report = VerificationReport(spec.file, spec.name, ref, batch.description, tuple(results),
                                time.perf_counter() - start, tuple(header), tuple(dict.fromkeys(warnings)), run)
    manager.call_hook("circuitry_verify_finished", report=report)
    return report
