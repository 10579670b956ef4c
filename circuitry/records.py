"""Typed, frozen records that plugins register through the `circuitry_*` hooks.

A plugin returns a list of these from a registration hook; the plugin manager
checks their types and that names are unique across plugins, and guards their
functions (`score`, `generate`, `load`, `names`, `build`, `compute`): an
exception from one, or a return value that `result_problem` rejects, becomes a
`PluginError` that names the plugin and the record.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from circuitry.data import TokenBatch
    from circuitry.model import ActivationCache, HookedTransformer


@dataclass(frozen=True)
class DetectorInput:
    """What a detector sees: the model, the data and one clean cached run on it.

    cache holds at least every `blocks.{l}.attn.hook_pattern` [batch, head, q, k];
    it is None for weights-only detectors.
    """

    model: HookedTransformer
    batch: TokenBatch | None
    cache: ActivationCache | None


@dataclass(frozen=True)
class PairScores:
    """Scores for ordered pairs of heads: scores[kind] [layer, head, layer, head],
    from (l1, h1) to (l2, h2), NaN unless l1 < l2; baseline[kind] is the expected
    score of random matrices of the same shapes."""

    scores: Mapping[str, torch.Tensor]
    baseline: Mapping[str, float]


@dataclass(frozen=True)
class Detector:
    """Scores every head (kind "head": a tensor [layer, head]) or every pair of heads
    (kind "pair": a `PairScores`) for a behaviour.

    needs_cache: False for detectors that read weights only.
    value_range: the range of the score, for display and validation.
    """

    name: str
    description: str
    score: Callable[[DetectorInput], Any]
    kind: str = "head"
    needs_cache: bool = True
    value_range: tuple[float, float] = (0.0, 1.0)
    threshold: float = 0.5  # scores at or above it are highlighted by `scan`

    def __post_init__(self) -> None:
        if self.kind not in ("head", "pair"):
            raise ValueError(f"detector {self.name!r}: kind must be 'head' or 'pair', got {self.kind!r}")


@dataclass(frozen=True)
class Dataset:
    """A data generator: generate(model, **params) -> TokenBatch.

    params maps each accepted parameter to its default; values given by users
    are converted to the default's type. limits: (minimum, maximum) of numeric
    parameters, None for no bound (a parameter named `seed` is always within
    0..2**63-1); they are checked where the value is written (file:line:col in
    a spec). shape(model, **params) -> (batch, positions), when the size is
    known before generating: the memory budget is checked before `generate`
    allocates anything. paths: parameters that name files, read relative to
    the spec that names them.
    """

    name: str
    description: str
    generate: Callable[..., TokenBatch]
    params: Mapping[str, Any] = field(default_factory=dict)
    limits: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    shape: Callable[..., tuple[int, int]] | None = None
    paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelSource:
    """Converts a model reference into a canonical `HookedTransformer`.

    scheme: the prefix before ':' in references (`builtin:attn-only-2l`); the
    source with scheme "file" also takes plain paths.
    load(rest, device) receives the reference without its scheme; a source that also takes a
    `dtype` keyword (a torch dtype, or None for float32) builds the model in that dtype directly.
    names(): the models this source can list (may be empty).
    """

    scheme: str
    description: str
    load: Callable[[str, Any], HookedTransformer]
    names: Callable[[], list[str]] = list


@dataclass(frozen=True)
class Intervention:
    """A way to change a run (zero / mean / resample ablation, edge patching ...).

    build(target, **params) returns one part for the intervention engine: an
    `Ablation` of a node, an `EdgePatch` of an edge or a `Patch` of an activation
    site (circuitry.interventions); `at` (a bool mask [batch, pos]) is passed
    when the intervention acts on some positions only.
    """

    name: str
    description: str
    build: Callable[..., Any]
    targets: tuple[str, ...] = ("head", "mlp")
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Metric:
    """A number from a run: compute(logits [batch, pos, vocab], batch, clean_logits) -> float
    (a real number or a 0-dim tensor). tensor: the same number as a 0-dim tensor that keeps the
    autograd graph (same arguments), for metrics that attribution can differentiate; None for
    metrics that are not differentiable (accuracy, rank)."""

    name: str
    description: str
    compute: Callable[..., float]
    lower_is_better: bool = True
    tensor: Callable[..., Any] | None = None


@dataclass(frozen=True)
class Task:
    """A task names its data and its metric (used by discovery)."""

    name: str
    description: str
    dataset: str
    metric: str
    dataset_params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckKind:
    """A kind of claim in a spec (`kind: detector`, `kind: intervention` ...).

    fields: the kind's own keys (besides id, kind, description and expect),
    as `circuitry.spec.schema.Field`s; the spec schema is built from them.
    expect_keys: the keys an `expect` mapping may hold (`{change: ...}`); the
    first is what a plain expectation compares; () for plain expectations only.
    plan(run, check) -> `circuitry.checks.CheckPlan`: checks the claim against
    the model (raising `UsageError`s, which are located at the check), says
    what it needs of the shared run and which interventions it needs swept; it
    runs no model. measure(run, check, plan) -> `circuitry.checks.CheckResult`.
    `run` is the shared `circuitry.checks.VerifiedRun` of the spec.
    """

    name: str
    description: str
    fields: Mapping[str, Any]
    plan: Callable[..., Any]
    measure: Callable[..., Any]
    expect_keys: tuple[str, ...] = ()
    expect_doc: str = ""


RECORD_HOOKS: dict[str, type] = {
    "circuitry_detectors": Detector,
    "circuitry_datasets": Dataset,
    "circuitry_model_sources": ModelSource,
    "circuitry_interventions": Intervention,
    "circuitry_metrics": Metric,
    "circuitry_tasks": Task,
    "circuitry_check_kinds": CheckKind,
}


RECORD_KINDS: dict[type, str] = {
    Detector: "detector",
    Dataset: "dataset",
    ModelSource: "model source",
    Intervention: "intervention",
    Metric: "metric",
    Task: "task",
    CheckKind: "check kind",
}


def record_key(record: Any) -> str:
    """The name a record is looked up by: a model source's scheme, every other record's name."""
    return record.scheme if isinstance(record, ModelSource) else record.name


def function_fields(record: Any) -> tuple[str, ...]:
    """The fields of a record that hold plugin code: those annotated `Callable` (score, generate,
    load, names, build, compute)."""
    from dataclasses import fields

    return tuple(f.name for f in fields(record)
                 if "Callable" in str(f.type) and callable(getattr(record, f.name)))


def record_kind(record: Any) -> str:
    """The word for a record in messages: "detector", "model source" ..."""
    for cls, kind in RECORD_KINDS.items():
        if isinstance(record, cls):
            return kind
    return type(record).__name__.lower()


# ------------------------------------------------------------------ return values
def _describe(value: Any) -> str:
    """A short description of a value for messages: its type, and a tensor's shape."""
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dim"):
        return f"a tensor of shape {tuple(shape)}"
    return "None" if value is None else type(value).__name__


def _detector_score(rec: Detector, result: Any, args: tuple, kwargs: dict) -> str | None:
    import torch

    if rec.kind == "pair":
        return None if isinstance(result, PairScores) else "a PairScores"
    inp = args[0] if args else kwargs.get("inp")
    model = getattr(inp, "model", None)
    cfg = getattr(model, "cfg", None)
    shape = (cfg.n_layers, cfg.n_heads) if cfg is not None else None
    if isinstance(result, torch.Tensor) and (tuple(result.shape) == shape if shape else result.dim() == 2):
        return None
    return f"a tensor of shape {shape or '[layer, head]'} [layer, head]"


def _dataset_generate(rec: Dataset, result: Any, args: tuple, kwargs: dict) -> str | None:
    from circuitry.data import TokenBatch

    return None if isinstance(result, TokenBatch) else "a circuitry.data.TokenBatch"


def _source_load(rec: ModelSource, result: Any, args: tuple, kwargs: dict) -> str | None:
    from circuitry.model import HookedTransformer

    return None if isinstance(result, HookedTransformer) else "a circuitry.model.HookedTransformer"


def _source_names(rec: ModelSource, result: Any, args: tuple, kwargs: dict) -> str | None:
    ok = isinstance(result, (list, tuple)) and all(isinstance(n, str) for n in result)
    return None if ok else "a list of model names (str)"


def _intervention_build(rec: Intervention, result: Any, args: tuple, kwargs: dict) -> str | None:
    from circuitry.interventions import Ablation, EdgePatch, Patch

    return None if isinstance(result, (Ablation, EdgePatch, Patch)) else "an Ablation, EdgePatch or Patch"


def _metric_compute(rec: Metric, result: Any, args: tuple, kwargs: dict) -> str | None:
    import torch

    if isinstance(result, numbers.Real) and not isinstance(result, bool):
        return None
    if isinstance(result, torch.Tensor) and result.dim() == 0 and not result.dtype.is_complex:
        return None
    return "a real number or a 0-dim tensor"


def _check_plan(rec: CheckKind, result: Any, args: tuple, kwargs: dict) -> str | None:
    from circuitry.checks import CheckPlan

    return None if isinstance(result, CheckPlan) else "a circuitry.checks.CheckPlan"


def _check_result(rec: CheckKind, result: Any, args: tuple, kwargs: dict) -> str | None:
    from circuitry.checks import CheckResult

    return None if isinstance(result, CheckResult) else "a circuitry.checks.CheckResult"


def _dataset_shape(rec: Dataset, result: Any, args: tuple, kwargs: dict) -> str | None:
    ok = (isinstance(result, tuple) and len(result) == 2
          and all(isinstance(n, int) and not isinstance(n, bool) for n in result))
    return None if ok else "a tuple (batch, positions) of integers"


RESULT_CHECKS: dict[tuple[type, str], Callable[[Any, Any, tuple, dict], str | None]] = {
    (Detector, "score"): _detector_score,
    (Dataset, "generate"): _dataset_generate,
    (ModelSource, "load"): _source_load,
    (ModelSource, "names"): _source_names,
    (Intervention, "build"): _intervention_build,
    (Metric, "compute"): _metric_compute,
    (CheckKind, "plan"): _check_plan,
    (CheckKind, "measure"): _check_result,
    (Dataset, "shape"): _dataset_shape,
}


def result_check(record: Any, field_name: str) -> Callable[[Any, tuple, dict], str | None] | None:
    """The check of what `record.<field_name>(*args, **kwargs)` returns, or None for fields
    without a declared return type.

    The check takes (result, args, kwargs) and returns None when the result is
    right, else "expected X, got Y".
    """
    for (cls, name), check in RESULT_CHECKS.items():
        if name == field_name and isinstance(record, cls):
            def checked(result: Any, args: tuple, kwargs: dict, check=check) -> str | None:
                expected = check(record, result, args, kwargs)
                return None if expected is None else f"expected {expected}, got {_describe(result)}"
            return checked
    return None


def result_problem(record: Any, field_name: str, result: Any, args: tuple = (),
                   kwargs: Mapping[str, Any] | None = None) -> str | None:
    """Why `result` is not what `record.<field_name>(*args, **kwargs)` must return, or None."""
    check = result_check(record, field_name)
    return None if check is None else check(result, tuple(args), dict(kwargs or {}))
