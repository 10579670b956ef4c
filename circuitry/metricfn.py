"""Metrics as functions: the one signature every API that measures a run takes, and the resolver to it.

A metric is `fn(logits [batch, pos, d_vocab], batch, clean_logits=None) -> float or 0-d tensor` (a tensor
[batch] where the sweep engine allows it), the signature of the metric plugins (`circuitry.records.Metric`):
`batch` is what the metric reads besides the logits (a `TokenBatch`, a `ContrastiveBatch` with its answers
and read positions, or the run's tokens [batch, pos]), `clean_logits` the logits of the clean run the
metric compares with (`kl`). Wherever a metric is taken (`run_interventions`, `activation_patching`,
exact attribution, discovery, `cy.patch`) it may be given as a metric plugin's name (`logit_diff`, `loss`
...; `circuitry plugins` lists them), a `Metric` record, or such a function; `resolve_metric` turns each
into the function, checking its signature, and `metric_fn` binds one to a batch and the clean logits.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional, Union

from circuitry.errors import UsageError
from circuitry.records import Metric

if TYPE_CHECKING:
    import torch

# (logits, batch, clean_logits) -> value; torch-free at import, like the notebook surface that re-exports it
MetricFn = Callable[["torch.Tensor", Any, Optional["torch.Tensor"]], Any]
MetricLike = Union[str, Metric, MetricFn]  # a plugin's name, a record, or a function of that signature

SIGNATURE = "(logits [batch, pos, d_vocab], batch, clean_logits=None)"


def _old_form(n_positional: int) -> str:
    """A hint for a function of an earlier metric form (`n_positional` arguments it can take by position)."""
    if n_positional == 1:
        return "; the form fn(logits): add the parameters batch and clean_logits=None"
    if n_positional == 2:
        return ("; the old fn(logits, tokens) form: add a batch parameter (the tokens [batch, pos] are what "
                "run_interventions passes as the batch unless given one) and clean_logits=None")
    return ""


def check_signature(fn: Callable[..., Any]) -> None:
    """A UsageError unless `fn` can be called as fn(logits, batch, clean_logits); a function without a signature
    to read (a builtin) is trusted."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(None, None, None)
    except TypeError:
        params = sig.parameters.values()
        if any(p.kind is p.VAR_POSITIONAL for p in params):
            n = 3
        else:
            n = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
        name = getattr(fn, "__name__", type(fn).__name__)
        raise UsageError(f"the metric {name!r} takes ({_parameters(sig)}); metrics take {SIGNATURE}, the signature of "
                         f"the metric plugins{_old_form(n)}") from None


def _parameters(sig: inspect.Signature) -> str:
    """The parameter names of a signature, without defaults' values or annotations: "logits, tokens=..."."""
    out = []
    for p in sig.parameters.values():
        prefix = "*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else ""
        out.append(prefix + p.name + ("" if p.default is p.empty else "=..."))
    return ", ".join(out)


def resolve_metric(metric: MetricLike, manager: Any = None) -> MetricFn:
    """The function fn(logits, batch, clean_logits=None) of a metric: a plugin's name (looked up through
    `manager`, by default the plugin manager), a `Metric` record (its `compute`), or a function of that
    signature, checked."""
    if isinstance(metric, str):
        from circuitry.plugins import get_manager

        metric = (manager or get_manager()).get("circuitry_metrics", metric, "metric")
    compute = metric.compute if isinstance(metric, Metric) else metric
    if not callable(compute):
        raise UsageError(f"a metric is a metric plugin's name, a Metric record or a function fn{SIGNATURE}, "
                         f"got {type(metric).__name__}")
    check_signature(compute)
    return compute


def metric_fn(metric: MetricLike, batch: Any, clean_logits: torch.Tensor | None = None,
              manager: Any = None) -> Callable[[torch.Tensor], Any]:
    """`fn(logits [batch, pos, d_vocab])`: a metric (`resolve_metric`) bound to `batch` and the clean logits."""
    compute = resolve_metric(metric, manager)

    def bound(logits: torch.Tensor) -> Any:
        return compute(logits, batch, clean_logits)

    return bound
