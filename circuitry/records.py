"""Typed, frozen records that plugins register through the `circuitry_*` hooks.

A plugin returns a list of these from a registration hook; the plugin manager
checks their types and that names are unique across plugins.
"""

from __future__ import annotations

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
    are converted to the default's type.
    """

    name: str
    description: str
    generate: Callable[..., TokenBatch]
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSource:
    """Converts a model reference into a canonical `HookedTransformer`.

    scheme: the prefix before ':' in references (`builtin:attn-only-2l`); the
    source with scheme "file" also takes plain paths.
    load(rest, device) receives the reference without its scheme.
    names(): the models this source can list (may be empty).
    """

    scheme: str
    description: str
    load: Callable[[str, Any], HookedTransformer]
    names: Callable[[], list[str]] = list


@dataclass(frozen=True)
class Intervention:
    """A way to change a run (zero / mean / resample ablation, edge patching ...).

    build(target, **params) returns an object understood by the intervention
    engine (see circuitry.interventions).
    """

    name: str
    description: str
    build: Callable[..., Any]
    targets: tuple[str, ...] = ("head", "mlp")
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Metric:
    """A number from a run: compute(logits [batch, pos, vocab], batch, clean_logits) -> float."""

    name: str
    description: str
    compute: Callable[..., float]
    lower_is_better: bool = True


@dataclass(frozen=True)
class Task:
    """A task names its data and its metric (used by discovery)."""

    name: str
    description: str
    dataset: str
    metric: str
    dataset_params: Mapping[str, Any] = field(default_factory=dict)


RECORD_HOOKS: dict[str, type] = {
    "circuitry_detectors": Detector,
    "circuitry_datasets": Dataset,
    "circuitry_model_sources": ModelSource,
    "circuitry_interventions": Intervention,
    "circuitry_metrics": Metric,
    "circuitry_tasks": Task,
}


def record_key(record: Any) -> str:
    return record.scheme if isinstance(record, ModelSource) else record.name
