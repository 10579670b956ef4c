"""The notebook surface: thin entry points over the library, re-exported as `import circuitry as cy`.

Each function takes what a notebook has at hand (a model or a model reference, a data reference, a task
name or file, a spec path, text or mapping) and calls the one implementation underneath:

- `load_model(ref)`, `make_batch(model, data)`, `task_batch(model, task)`
- `scan(model, data)` -> `ScanResult`; `verify(spec, model)` -> `VerificationReport`
- `patch(model, task, what, metric)` -> `PatchingResult`; `attribute(model, task, metric, method)` ->
  `AttributionResult`; `discover(model, task)` -> `Circuit`
- `attention(model, tokens, heads)` and `html(result)`: pictures that Jupyter shows inline

Metrics: a metric is a metric plugin's name (`logit_diff`, `loss`, ...; `circuitry plugins` lists them), a
`Metric` record, or a function with the plugins' signature `fn(logits [batch, pos, d_vocab], batch,
clean_logits=None) -> float or 0-d tensor`, where `batch` is the task's `ContrastiveBatch` (answers, read
positions) and `clean_logits` the clean run's logits (`circuitry.metricfn`, the one resolver: every API that
takes a metric takes these three forms). `metric_fn` binds such a metric to a batch, giving a one-argument
function of the logits; attribution takes metric names only (it needs the metric's differentiable form and
its direction).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from circuitry.errors import UsageError
from circuitry.metricfn import metric_fn

if TYPE_CHECKING:

    from circuitry.attribution import AttributionResult
    from circuitry.data import TokenBatch
    from circuitry.discovery import Circuit
    from circuitry.model import HookedTransformer
    from circuitry.patching import PatchingResult
    from circuitry.report.notebook import Html
    from circuitry.scan import ScanResult
    from circuitry.tasks import ContrastiveBatch
    from circuitry.verify import VerificationReport

__all__ = ["attention", "attribute", "discover", "html", "load_model", "make_batch", "metric_fn", "patch", "scan",
           "task_batch", "verify"]


# ------------------------------------------------------------------ models and data
def load_model(ref: str, device: str | None = None, dtype: str | None = None,
               device_map: str | dict | None = None) -> HookedTransformer:
    """Load a model from a reference such as ``builtin:attn-only-2l``, ``hf:gpt2``, ``tl:DIR`` or a path, on
    `device`, in `dtype` (float32, the default, bfloat16 or float16); device_map spreads the blocks over
    several devices (`circuitry.sources.load_model`)."""
    from circuitry.sources import load_model as load

    return load(ref, device=device, dtype=dtype, device_map=device_map)


def as_model(model: Any) -> HookedTransformer:
    """A `HookedTransformer` as it is, a model reference loaded; anything else is a UsageError that says how
    to convert it."""
    from circuitry.model import HookedTransformer

    if isinstance(model, HookedTransformer):
        return model
    if isinstance(model, (str, Path)):
        return load_model(str(model))
    hint = ""
    if hasattr(getattr(model, "config", None), "model_type"):
        hint = "; convert a transformers model with circuitry.from_hf(model)"
    elif hasattr(getattr(model, "cfg", None), "to_dict"):
        hint = "; convert a TransformerLens model with circuitry.from_transformer_lens(model)"
    raise UsageError(f"expected a circuitry HookedTransformer or a model reference (builtin:attn-only-2l, a path, "
                     f"hf:NAME ...), got {type(model).__name__}{hint}")


def make_batch(model: Any, data: str | Mapping[str, Any] | None = None) -> TokenBatch:
    """The token batch a data reference names, on the model's device: `NAME:k=v,...` (`repeated:seq_len=20`),
    a mapping `{"name": NAME, **params}`, a token file's path, or None for the default data
    (`circuitry.datasets.make_batch`)."""
    from circuitry.datasets import make_batch as make

    model = as_model(model)
    return make(model, data).to(model.device)


def task_batch(model: Any, task: Any = "induction", data: str | Mapping[str, Any] | None = None) -> ContrastiveBatch:
    """The contrastive batch of a task on `model`: a task plugin's name (`induction`: its data paired row by
    row with the same data of the next seed), a task file's path, task YAML text, or a loaded `TaskFile`;
    `data` overrides a task plugin's data. A `ContrastiveBatch` is returned as it is."""
    from circuitry.tasks import ContrastiveBatch

    if isinstance(task, ContrastiveBatch):
        return task
    return _task(as_model(model), task, data)[0]


def _task(model: HookedTransformer, task: Any, data: Any) -> tuple[ContrastiveBatch, str | None]:
    """(the task's batch, its metric's name; None for a batch given as it is)."""
    from circuitry.discovery.attributed import task_batch as make
    from circuitry.tasks import ContrastiveBatch

    if isinstance(task, ContrastiveBatch):
        if data is not None:
            raise UsageError("data applies to a task given by name or file, not to a ContrastiveBatch")
        return task, None
    if isinstance(task, str) and "\n" in task:
        from circuitry.tasks.format import load_task

        task = load_task(text=task)
    batch, _, metric = make(model, task, data)
    return batch, metric.name


# ------------------------------------------------------------------ analyses
def scan(model: Any, data: Any = None, detectors: str | list[str] | None = None, manager: Any = None) -> ScanResult:
    """Every head scored by the detectors (all of them, or the names given) on one cached run
    (`circuitry.scan.scan`). data: a `TokenBatch`, a data reference, or None for the default data."""
    from circuitry.data import TokenBatch
    from circuitry.scan import scan as run

    model = as_model(model)
    batch = data.to(model.device) if isinstance(data, TokenBatch) else make_batch(model, data)
    return run(model, batch, [detectors] if isinstance(detectors, str) else detectors, manager)


def verify(spec: Any, model: Any = None, **options: Any) -> VerificationReport:
    """Check every claim of a spec and return the report (`circuitry.verify.verify`).

    spec: a `Spec` / `CircuitSpec`, a path, YAML text, or a mapping (`Spec.from_dict`). model: None (the
    spec's own model), a model reference, or a `HookedTransformer`. options: data, device, dtype,
    keep_patterns, manager (as `circuitry.verify.verify` takes them). A failed claim is in the report
    (`report.passed`, `report.failed`), not an exception; a spec or model that does not fit is a SpecError /
    UsageError."""
    from circuitry.model import HookedTransformer
    from circuitry.spec.format import CircuitSpec
    from circuitry.spec.pyspec import Spec
    from circuitry.verify import verify as run

    if not isinstance(spec, CircuitSpec):
        spec = Spec.from_dict(spec) if isinstance(spec, Mapping) else Spec.from_yaml(spec)
    if model is None or isinstance(model, HookedTransformer):
        return run(spec, model=model, **options)
    if isinstance(model, (str, Path)):
        return run(spec, model_ref=str(model), **options)
    return run(spec, model=as_model(model), **options)


def patch(model: Any, task: Any = "induction", what: str = "heads", metric: Any = None, *, denoise: bool = False,
          per_position: bool | None = None, data: Any = None, **options: Any) -> PatchingResult:
    """Activation patching of `what` (resid_pre, attn_out, heads, q, k, v, pattern ...; see
    `circuitry.patching`) on a task (`task_batch`: a name, a file, YAML text or a `ContrastiveBatch`).
    metric: None (the task's metric; logit_diff for a batch given as it is), a plugin's name, a `Metric` or
    a function fn(logits, batch, clean_logits=None). options: memory_budget, progress, method."""
    from circuitry.patching import activation_patching

    model = as_model(model)
    batch, task_metric = _task(model, task, data)
    metric = metric if metric is not None else task_metric or "logit_diff"
    return activation_patching(model, batch, what, metric, denoise=denoise, per_position=per_position, **options)


def attribute(model: Any, task: Any = "induction", metric: str | None = None, method: str = "eap-ig", *,
              data: Any = None, **options: Any) -> AttributionResult:
    """Attribution scores of every edge and node of the residual graph on a task (`circuitry.attribution`).
    metric: a metric plugin's name (default: the task's; logit_diff for a batch given as it is). method: eap,
    eap-ig, eap-ig-act or exact. options: level, steps, memory_budget, progress, at, per_position."""
    from circuitry.attribution import attribute as run

    if metric is not None and not isinstance(metric, str):
        raise UsageError(f"attribution takes a metric plugin's name (it needs the metric's gradient and "
                         f"direction), got {type(metric).__name__}")
    model = as_model(model)
    batch, task_metric = _task(model, task, data)
    return run(model, batch, metric or task_metric or "logit_diff", method, **options)


def discover(model: Any, task: Any = "induction", data: Any = None, **options: Any) -> Circuit:
    """Find the circuit of a task (`circuitry.discovery.discover`): the nodes and edges that keep its metric,
    with a spec `circuitry verify` passes (`circuit.spec_text`; `circuitry.discovery.write_spec`). options:
    target, margin, role_threshold, method, name, progress."""
    from circuitry.discovery import discover as run

    return run(as_model(model), task, data, **options)


# ------------------------------------------------------------------ pictures
def attention(model: Any, tokens: Any, heads: str | list[str], index: int = 0, title: str | None = None) -> Html:
    """The attention patterns of `heads` (`L1H3` or a list) on one sequence: token ids [pos], a [batch, pos]
    tensor or a `TokenBatch` (row `index`); shown inline in Jupyter (`circuitry.figures.figures_for_heads`)."""
    from circuitry.data import TokenBatch
    from circuitry.figures import figures_for_heads
    from circuitry.report.notebook import Html

    model = as_model(model)
    data = ""
    if isinstance(tokens, TokenBatch):
        data, tokens = tokens.description, tokens.tokens
    if getattr(tokens, "ndim", 1) == 2 or (isinstance(tokens, (list, tuple)) and tokens
                                           and isinstance(tokens[0], (list, tuple))):
        if not -len(tokens) <= index < len(tokens):
            raise UsageError(f"index {index} is outside the batch of {len(tokens)} sequences")
        tokens = tokens[index]
    names = [heads] if isinstance(heads, str) else list(heads)
    return Html.of(figures_for_heads(model, tokens, names, data=data, title=title))


def html(obj: Any, **options: Any) -> Html:
    """A picture of a result that Jupyter shows inline (`circuitry.report.notebook.html`)."""
    from circuitry.report.notebook import html as draw

    return draw(obj, **options)
