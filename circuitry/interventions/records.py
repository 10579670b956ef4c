"""Records of the intervention API: what to change (Ablation, EdgePatch, Patch, Combined), the shared
clean run (CleanRun, made by `clean_run`) and the result of a sweep (SweepResult).

Replacement methods (`METHODS`), used for a node's output, a sender's output on an edge and a patched
activation site:

- "zero": the output is zero. For a head that is z_h = 0, so z_h @ W_O[h] vanishes while the
  attention output bias b_O (shared by all heads) stays. For an MLP, hook_mlp_out = 0 (bias included).
- "mean": the output averaged over the reference batch, separately at every position
  ([pos, ...], broadcast over the batch): positions keep what is common to them (BOS, position
  embeddings) and lose what depends on the sequence. The reference needs at least as many
  positions as the clean tokens; only its first `pos` positions are used (causal models: a prefix
  runs the same). Without a reference, the clean batch itself is averaged.
- "resample": the output on another sequence, same positions: clean row i takes reference row
  i mod n_ref (never a row with the same tokens as clean row i). Without a reference, row i takes
  clean row (i + 1) mod batch.
- "corrupted": the output on the paired run, row-aligned: row i of the run takes row i of the
  reference run (which must have the same number of rows). Noising patches the corrupted prompts'
  activations into the clean run (reference = corrupted prompts); denoising the other way round.

Every intervention takes `at`: None (every position) or a bool mask [batch, pos] of the positions it
changes (see `circuitry.interventions.positions`); outside `at` the run is untouched.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Union

import torch

from circuitry.errors import UsageError
from circuitry.interventions.positions import AtKey, at_key, at_label, check_at
from circuitry.interventions.targets import Edge, Node, Stream
from circuitry.model.hooks import ActivationCache
from circuitry.names import Site, parse_site

METHODS = ("zero", "mean", "resample", "corrupted")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise UsageError(f"replacement method must be one of {', '.join(METHODS)}, got {method!r}")


def node_site(node) -> Site:
    """The activation a node ablation replaces (what a sender writes): a head's z, an MLP's output, an
    embedding."""
    if isinstance(node, Stream):
        return Site(node.name, 0)
    return Site("z", node.layer, node.head) if node.is_head else Site("mlp_out", node.layer)


@dataclass(frozen=True)
class Ablation:
    """Replace a node's output (method "zero", "mean", "resample" or "corrupted") in every path it takes,
    at the positions `at` (None: every position).

    preserve_patterns=True is the pattern-preserving ablation of Olsson et al.
    (2022): every attention pattern of the run is frozen to the clean run's,
    so the ablation reaches later heads only through their values (and MLPs).
    """

    node: Node
    method: str = "zero"
    preserve_patterns: bool = False
    at: torch.Tensor | None = field(default=None, compare=False, repr=False)
    at_key: AtKey | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "node", Node.parse(self.node))
        _check_method(self.method)
        object.__setattr__(self, "at_key", at_key(check_at(self.at)))

    @property
    def name(self) -> str:
        frozen = " (patterns frozen)" if self.preserve_patterns else ""
        return f"{self.method}-ablate {self.node}{at_label(self.at)}{frozen}"


@dataclass(frozen=True)
class EdgePatch:
    """Path patching of one edge: the sender's output replaced only along that edge, at positions `at`.

    Q/K/V edge: the receiving head's query/key/value input becomes
    (residual stream of the run) - sender_clean + sender_new, where sender
    output = z_h @ W_O[h] for a head, mlp_out for an MLP, and sender_clean
    comes from the clean run. With nothing else changed, the residual stream
    there is the clean one, so every other path stays clean.
    Direct edge: final residual += sender_new - sender_clean, before ln_final;
    the ln_final scale is recomputed from the patched residual, as in the
    model's own run (with no normalisation the logits change by exactly
    (sender_new - sender_clean) @ W_U).
    `at` selects the positions of the sender's output that are replaced (the
    positions of the receiver's input that change).
    """

    edge: Edge
    method: str = "resample"
    at: torch.Tensor | None = field(default=None, compare=False, repr=False)
    at_key: AtKey | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.edge, Edge):
            raise UsageError(f"EdgePatch needs an Edge, got {self.edge!r}")
        _check_method(self.method)
        object.__setattr__(self, "at_key", at_key(check_at(self.at)))

    @property
    def name(self) -> str:
        return f"{self.method}-patch {self.edge}{at_label(self.at)}"


@dataclass(frozen=True)
class Patch:
    """Replace the activation at one site (`circuitry.names.Site`: `L1.resid_pre`, `L0.attn_out`, `M0`,
    `L1H3` (its z), `L1H3.q` / `.k` / `.v`, `L1H3.q_input` ..., `L1H3.pattern`) at the positions `at`.

    The replacement comes from `method` (default "corrupted": the paired run's activation, row-aligned).
    Positions index the site's sequence axis; for a pattern [batch, head, q, k] that is the query
    position (the pattern rows of the queries at `at` are replaced). A head site changes only that
    head's slice; a layer site the whole d_model vector at each position in `at`.
    """

    site: Site
    method: str = "corrupted"
    at: torch.Tensor | None = field(default=None, compare=False, repr=False)
    at_key: AtKey | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "site", parse_site(self.site))
        _check_method(self.method)
        object.__setattr__(self, "at_key", at_key(check_at(self.at)))

    @property
    def name(self) -> str:
        return f"{self.method}-patch {self.site}{at_label(self.at)}"


Part = Union[Ablation, EdgePatch, Patch]


def part_site(part: Part) -> Site | None:
    """The activation a part replaces as a whole (None for an edge patch, which adds to a reader's input)."""
    if isinstance(part, Ablation):
        return node_site(part.node)
    return part.site if isinstance(part, Patch) else None


@dataclass(frozen=True)
class Combined:
    """Several ablations, edge patches and site patches applied together in one run.

    Refused: a site replaced twice (a node ablation replaces its z or MLP output), and a layer's
    attention output together with one of its heads' outputs (the layer's replacement would hide or
    double the head's: the batched and the naive runs would disagree).
    """

    parts: tuple[Part, ...]

    def __post_init__(self) -> None:
        parts = tuple(self.parts)
        if not parts:
            raise UsageError("Combined needs at least one intervention")
        for p in parts:
            if not isinstance(p, (Ablation, EdgePatch, Patch)):
                raise UsageError(f"Combined takes Ablation, EdgePatch and Patch parts, got {p!r}")
        sites = [s for s in map(part_site, parts) if s is not None]
        if len(set(sites)) != len(sites):
            again = next(s for s in sites if sites.count(s) > 1)
            what = "a node is ablated" if all(isinstance(p, Ablation) for p in parts) else f"{again} is replaced"
            raise UsageError(f"Combined: {what} more than once")
        layers = {s.layer for s in sites if s.kind == "attn_out"}
        clash = [s for s in sites if s.kind == "z" and s.layer in layers]
        if clash:
            raise UsageError(f"Combined: L{clash[0].layer}.attn_out is replaced as a whole, so it cannot be "
                             f"combined with a change of {clash[0]} (a head of its layer)")
        object.__setattr__(self, "parts", parts)

    @property
    def name(self) -> str:
        return " + ".join(p.name for p in self.parts)


Intervention = Union[Ablation, EdgePatch, Patch, Combined]


def parts_of(intervention: Intervention) -> tuple[Part, ...]:
    """The atomic parts of an intervention."""
    if isinstance(intervention, Combined):
        return intervention.parts
    if isinstance(intervention, (Ablation, EdgePatch, Patch)):
        return (intervention,)
    raise UsageError(f"not an intervention: {intervention!r} (use Ablation, EdgePatch, Patch or Combined)")


@dataclass(frozen=True, eq=False)
class CleanRun:
    """One unmodified run, shared by every intervention on the same tokens.

    tokens [batch, pos]; logits [batch, pos, d_vocab]; cache holds at least
    what interventions read: blocks.{l}.hook_resid_pre (and hook_resid_mid
    for models with sequential MLPs), the last block's hook_resid_post,
    attn.hook_z, hook_mlp_out, and attn.hook_pattern for pattern-preserving
    ablations; for `Patch` parts, the hooks of their sites
    (`patched_site_names`: an attention output's clean value gives its
    change; the others let a sweep recognise patches that change nothing).
    A full `model.run_with_cache(tokens)` cache works too.
    """

    tokens: torch.Tensor
    logits: torch.Tensor
    cache: ActivationCache


def clean_hook_names(model, patterns: bool = True) -> list[str]:
    """Hook names a CleanRun needs for `model` (patterns: also every attention pattern)."""
    cfg = model.cfg
    names = [f"blocks.{cfg.n_layers - 1}.hook_resid_post", "hook_embed"]  # the embeddings: edges send from them
    if cfg.positional == "learned":
        names.append("hook_pos_embed")
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


def read_sites(items: Iterable[Intervention]) -> list[Site]:
    """The sites whose values the replacements of `items` read (zero reads nothing), in order, once each."""
    sites: list[Site] = []
    for it in items:
        for part in parts_of(it):
            if part.method == "zero":
                continue
            site = part_site(part) if not isinstance(part, EdgePatch) else node_site(part.edge.sender)
            if site is not None and site not in sites:
                sites.append(site)
    return sites


def patched_site_names(items: Iterable[Intervention]) -> list[str]:
    """Hook points of the sites `Patch` parts replace: what a clean run caches beyond `clean_hook_names` for them
    (an attention output's clean value gives its change; the others let unchanged patches be recognised, and
    mean and resample without a reference read them), and the embeddings edge patches send from."""
    names = [p.site.hook for it in items for p in parts_of(it) if isinstance(p, Patch)]
    names += [node_site(p.edge.sender).hook for it in items for p in parts_of(it)
              if isinstance(p, EdgePatch) and isinstance(p.edge.sender, Stream)]  # an embedding's clean value
    return list(dict.fromkeys(names))


def reference_names(model, interventions: Iterable[Intervention] | None = None) -> list[str]:
    """The hook points replacements read from a reference run.

    None: what ablations and edge patches of any node read (every head's z and MLP output). Given
    interventions: exactly the hooks of the sites their replacements read (a node's z or MLP output,
    a patched site's own hook), nothing for zero replacements.
    """
    if interventions is not None:
        return list(dict.fromkeys(site.hook for site in read_sites(interventions)))
    names = [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)]
    if not model.cfg.attn_only:
        names += [f"blocks.{l}.hook_mlp_out" for l in range(model.cfg.n_layers)]
    return names


def reference_run(model, tokens: torch.Tensor, interventions: Iterable[Intervention] | None = None) -> CleanRun:
    """Run `model` on reference tokens [batch, pos], caching only what replacements read: by default what
    node ablations and edge patches read; given `interventions`, what those read (`reference_names`)."""
    tokens = model.check_tokens(tokens)
    names = reference_names(model, None if interventions is None else tuple(interventions))
    with torch.inference_mode():
        logits, cache = model.run_with_cache(tokens, names=names)
    return CleanRun(tokens, logits, cache)


@dataclass(frozen=True, eq=False)
class SweepResult:
    """Per-intervention results of `run_interventions`, in the order given.

    values[i]: the metric's value for intervention i (a 0-d tensor, or
    [batch] when the metric returns one value per sequence), or the logits
    [batch, pos, d_vocab] when no metric was given. n_passes: forward passes
    run. row_layers: rows x blocks computed over all passes (half a block for
    a run that starts at the MLP of a layer); the naive loop computes
    n_interventions x batch x n_layers. n_unchanged: interventions of a
    batched sweep that change nothing (every replacement equals the clean
    activation it replaces, bit for bit); they are not run, their value is
    the clean run's.
    """

    interventions: tuple[Intervention, ...]
    values: tuple[torch.Tensor, ...]
    n_passes: int
    row_layers: float
    method: str
    names: tuple[str, ...] = field(default=())
    n_unchanged: int = 0

    def stacked(self) -> torch.Tensor:
        """values stacked along a new first dimension [n_interventions, ...]."""
        return torch.stack(list(self.values))

    def as_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.values))


def as_interventions(items: Iterable[Intervention]) -> tuple[Intervention, ...]:
    items = tuple(items)
    for it in items:
        parts_of(it)
    return items
