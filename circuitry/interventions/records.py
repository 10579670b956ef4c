"""Records of the intervention API: what to change (Ablation, EdgePatch, Combined), the shared
clean run (CleanRun, made by `clean_run`) and the result of a sweep (SweepResult).

Replacement methods (`METHODS`), used for a node's output and for a sender's output on an edge:

- "zero": the output is zero. For a head that is z_h = 0, so z_h @ W_O[h] vanishes while the
  attention output bias b_O (shared by all heads) stays. For an MLP, hook_mlp_out = 0 (bias included).
- "mean": the output averaged over the reference batch, separately at every position
  ([pos, ...], broadcast over the batch): positions keep what is common to them (BOS, position
  embeddings) and lose what depends on the sequence. The reference needs at least as many
  positions as the clean tokens; only its first `pos` positions are used (causal models: a prefix
  runs the same). Without a reference, the clean batch itself is averaged.
- "resample": the output on another sequence, same positions: clean row i takes reference row
  i mod n_ref. Without a reference, row i takes clean row (i + 1) mod batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Union

import torch

from circuitry.errors import UsageError
from circuitry.interventions.targets import Edge, Node
from circuitry.model.hooks import ActivationCache

METHODS = ("zero", "mean", "resample")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise UsageError(f"replacement method must be one of {', '.join(METHODS)}, got {method!r}")


@dataclass(frozen=True)
class Ablation:
    """Replace a node's output (method "zero", "mean" or "resample") in every path it takes.

    preserve_patterns=True is the pattern-preserving ablation of Olsson et al.
    (2022): every attention pattern of the run is frozen to the clean run's,
    so the ablation reaches later heads only through their values (and MLPs).
    """

    node: Node
    method: str = "zero"
    preserve_patterns: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "node", Node.parse(self.node))
        _check_method(self.method)

    @property
    def name(self) -> str:
        frozen = " (patterns frozen)" if self.preserve_patterns else ""
        return f"{self.method}-ablate {self.node}{frozen}"


@dataclass(frozen=True)
class EdgePatch:
    """Path patching of one edge: the sender's output replaced only along that edge.

    Q/K/V edge: the receiving head's query/key/value input becomes
    (residual stream of the run) - sender_clean + sender_new, where sender
    output = z_h @ W_O[h] for a head, mlp_out for an MLP, and sender_clean
    comes from the clean run. With nothing else changed, the residual stream
    there is the clean one, so every other path stays clean.
    Direct edge: final residual += sender_new - sender_clean, before ln_final;
    the ln_final scale is recomputed from the patched residual, as in the
    model's own run (with no normalisation the logits change by exactly
    (sender_new - sender_clean) @ W_U).
    """

    edge: Edge
    method: str = "resample"

    def __post_init__(self) -> None:
        if not isinstance(self.edge, Edge):
            raise UsageError(f"EdgePatch needs an Edge, got {self.edge!r}")
        _check_method(self.method)

    @property
    def name(self) -> str:
        return f"{self.method}-patch {self.edge}"


Part = Union[Ablation, EdgePatch]


@dataclass(frozen=True)
class Combined:
    """Several ablations and edge patches applied together in one run."""

    parts: tuple[Part, ...]

    def __post_init__(self) -> None:
        parts = tuple(self.parts)
        if not parts:
            raise UsageError("Combined needs at least one intervention")
        for p in parts:
            if not isinstance(p, (Ablation, EdgePatch)):
                raise UsageError(f"Combined takes Ablation and EdgePatch parts, got {p!r}")
        nodes = [p.node for p in parts if isinstance(p, Ablation)]
        if len(set(nodes)) != len(nodes):
            raise UsageError("Combined: a node is ablated more than once")
        object.__setattr__(self, "parts", parts)

    @property
    def name(self) -> str:
        return " + ".join(p.name for p in self.parts)


Intervention = Union[Ablation, EdgePatch, Combined]


def parts_of(intervention: Intervention) -> tuple[Part, ...]:
    """The atomic parts of an intervention."""
    if isinstance(intervention, Combined):
        return intervention.parts
    if isinstance(intervention, (Ablation, EdgePatch)):
        return (intervention,)
    raise UsageError(f"not an intervention: {intervention!r} (use Ablation, EdgePatch or Combined)")


@dataclass(frozen=True, eq=False)
class CleanRun:
    """One unmodified run, shared by every intervention on the same tokens.

    tokens [batch, pos]; logits [batch, pos, d_vocab]; cache holds at least
    what interventions read: blocks.{l}.hook_resid_pre (and hook_resid_mid
    for models with sequential MLPs), the last block's hook_resid_post,
    attn.hook_z, hook_mlp_out, and attn.hook_pattern for pattern-preserving
    ablations. A full `model.run_with_cache(tokens)` cache works too.
    """

    tokens: torch.Tensor
    logits: torch.Tensor
    cache: ActivationCache


def clean_hook_names(model, patterns: bool = True) -> list[str]:
    """Hook names a CleanRun needs for `model` (patterns: also every attention pattern)."""
    cfg = model.cfg
    names = [f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
    for l in range(cfg.n_layers):
        names += [f"blocks.{l}.hook_resid_pre", f"blocks.{l}.attn.hook_z"]
        if not cfg.attn_only:
            names.append(f"blocks.{l}.hook_mlp_out")
            if not cfg.parallel_attn_mlp:
                names.append(f"blocks.{l}.hook_resid_mid")
        if patterns:
            names.append(f"blocks.{l}.attn.hook_pattern")
    return names


def clean_run(model, tokens: torch.Tensor, patterns: bool = True, extra: Iterable[str] = ()) -> CleanRun:
    """Run `model` once on tokens [batch, pos] and cache what interventions need.

    patterns=False leaves the attention patterns out of the cache (they are
    only needed for pattern-preserving ablations and cost batch*head*pos^2
    floats per layer). `extra` names more hook points to cache, for other
    analyses that share the run.
    """
    tokens = model.check_tokens(tokens)
    names = list(dict.fromkeys([*clean_hook_names(model, patterns), *extra]))
    with torch.inference_mode():
        logits, cache = model.run_with_cache(tokens, names=names)
    return CleanRun(tokens, logits, cache)


def reference_names(model) -> list[str]:
    """The hook points mean and resample ablations read from a reference run: every head's z and MLP output."""
    names = [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)]
    if not model.cfg.attn_only:
        names += [f"blocks.{l}.hook_mlp_out" for l in range(model.cfg.n_layers)]
    return names


def reference_run(model, tokens: torch.Tensor) -> CleanRun:
    """Run `model` on reference tokens [batch, pos], caching only what mean and resample ablations read."""
    tokens = model.check_tokens(tokens)
    with torch.inference_mode():
        logits, cache = model.run_with_cache(tokens, names=reference_names(model))
    return CleanRun(tokens, logits, cache)


@dataclass(frozen=True, eq=False)
class SweepResult:
    """Per-intervention results of `run_interventions`, in the order given.

    values[i]: the metric's value for intervention i (a 0-d tensor, or
    [batch] when the metric returns one value per sequence), or the logits
    [batch, pos, d_vocab] when no metric was given. n_passes: forward passes
    run. row_layers: rows x blocks computed over all passes (half a block for
    a run that starts at the MLP of a layer); the naive loop computes
    n_interventions x batch x n_layers.
    """

    interventions: tuple[Intervention, ...]
    values: tuple[torch.Tensor, ...]
    n_passes: int
    row_layers: float
    method: str
    names: tuple[str, ...] = field(default=())

    def stacked(self) -> torch.Tensor:
        """values stacked along a new first dimension [n_interventions, ...]."""
        return torch.stack(list(self.values))

    def as_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.values))


Metric = Callable[[torch.Tensor, torch.Tensor], "float | torch.Tensor"]


def as_interventions(items: Iterable[Intervention]) -> tuple[Intervention, ...]:
    items = tuple(items)
    for it in items:
        parts_of(it)
    return items
