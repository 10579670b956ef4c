"""How each intervention changes a run: replacement values, start stage, hooks.

A run can start part-way through the model because nothing before the first
changed component differs from the clean run. Start points are *stages* of the
residual stream: stage 2l is the residual entering block l (hook_resid_pre),
stage 2l+1 the residual entering the MLP of block l (hook_resid_mid, models
with sequential MLPs only), stage 2L the final residual (before ln_final).

Every atomic part (Ablation, EdgePatch, Patch) becomes an `Action`:
- `stage`: the earliest stage whose residual it changes;
- `start`: the change of the residual at `stage`, made on the starting
  residual when a run starts exactly there, instead of recomputing the layer.
  A component's output (a head's z, an attention or MLP output, a sender on
  a direct edge) adds its change, new output - clean output, at its positions
  (a head ablated in layer l changes the residual after that layer's
  attention by (z_new - z_clean) @ W_O[h]); a patched residual stream is set.
  None for changes inside a layer (q/k/v, their inputs, patterns): the run
  starts at the layer's input and hooks make them;
- `rank`: the order of one copy's starts and hooks, as a run meets them:
  components' changes (0), then sets of a block's output (1), then sets of
  the next block's input (2);
- `hooks`: the same change made inside a run that computes the component
  (used when the run starts earlier, and by the naive method);
- `always`: hooks needed whatever the start (Q/K/V inputs of a receiver,
  frozen patterns).
A modifier `fn(x, rows)` edits rows `rows` of a cloned activation (or of the
starting residual) in place. Actions are built when a pass needs them and
released after it (`Context.release`); `Context.stage` and
`Context.unchanged` validate and classify parts without building them.
Everything that needs the host to wait for the device (a mask's positions,
comparisons with the clean run) happens when a part is checked, before any
pass runs; building and applying actions only queues tensor operations.

`read_names` says which hook points of the clean run a sweep reads (a start
stage's residual stream, the clean outputs changes are measured against,
patterns to freeze), so that a clean run made for a sweep caches nothing more.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from circuitry.errors import UsageError
from circuitry.interventions.positions import fit_mask
from circuitry.interventions.records import (
    Ablation,
    CleanRun,
    EdgePatch,
    Intervention,
    Part,
    node_site,
    part_site,
    parts_of,
)
from circuitry.names import Site, check_site

Modifier = Callable[..., None]  # (activation, rows) -> None: changes the rows of the activation in place
RESID_SITES = ("resid_pre", "resid_mid", "resid_post")
OUTPUT_SITES = ("z", "attn_out", "mlp_out")  # a component's output: its change is added to the residual


@dataclass
class Action:
    stage: int
    start: Modifier | None = None  # applied to the starting residual [rows, pos, d_model] at `stage`
    rank: int = 0
    hooks: list[tuple[str, Modifier]] = field(default_factory=list)
    always: list[tuple[str, Modifier]] = field(default_factory=list)


def stage_layers(stage: int, n_layers: int) -> float:
    """Blocks a run starting at `stage` computes (a start at an MLP counts half a block)."""
    return n_layers - stage / 2


def site_stage(cfg, site: Site) -> int:
    """The earliest stage whose residual a change of `site` changes: a head's or attention's output changes the
    residual entering the MLP (sequential MLPs) or the next block; an MLP's output and a block's output the
    next block's input; anything read inside a block (q, k, v, their inputs, patterns, the block's input) that
    block's input."""
    l = site.layer
    sequential_mlp = not cfg.attn_only and not cfg.parallel_attn_mlp
    if site.kind in ("z", "attn_out"):
        return 2 * l + 1 if sequential_mlp else 2 * l + 2
    return 2 * l + {"resid_mid": 1, "resid_post": 2, "mlp_out": 2}.get(site.kind, 0)


def edge_stage(cfg, edge) -> int:
    """The stage where an edge's receiver reads: its layer's input (Q/K/V; a parallel MLP), its MLP's input
    (a sequential MLP), the final residual (direct)."""
    if edge.kind == "direct":
        return 2 * cfg.n_layers
    return 2 * edge.receiver.layer + (1 if edge.kind == "mlp_in" and not cfg.parallel_attn_mlp else 0)


def part_stage(cfg, part: Part) -> int:
    """The earliest stage `part` changes (validated against the model)."""
    if isinstance(part, EdgePatch):
        return edge_stage(cfg, part.edge.check(cfg))
    if isinstance(part, Ablation):
        part.node.check(cfg)
    return site_stage(cfg, check_site(part_site(part), cfg))


def stage_hook(cfg, stage: int) -> str:
    """The hook point holding the residual stream at `stage` (the last block's output for the final one)."""
    L = cfg.n_layers
    if stage == 2 * L:
        return f"blocks.{L - 1}.hook_resid_post"
    l, mid = divmod(stage, 2)
    return f"blocks.{l}.hook_resid_mid" if mid else f"blocks.{l}.hook_resid_pre"


def read_names(cfg, items: Iterable[Intervention]) -> list[str]:
    """The hook points of the clean run a sweep of `items` reads, in order, once each: the residual stream at
    each intervention's start stage, the clean value of every site a part replaces or sends from (what its
    change is measured against, and what mean and resample replacements without a reference average or draw
    from), and every attention pattern when an ablation preserves patterns."""
    names: list[str] = []
    patterns = False
    for it in items:
        parts = parts_of(it)
        names.append(stage_hook(cfg, min(part_stage(cfg, p) for p in parts)))
        for p in parts:
            site = node_site(p.edge.sender) if isinstance(p, EdgePatch) else part_site(p)
            assert site is not None
            names.append(check_site(site, cfg).hook)
            patterns = patterns or (isinstance(p, Ablation) and p.preserve_patterns)
    if patterns:
        names += [f"blocks.{l}.attn.hook_pattern" for l in range(cfg.n_layers)]
    return list(dict.fromkeys(names))


def _setter(idx: tuple, new: torch.Tensor, mask: torch.Tensor | None) -> Modifier:
    """Set x[rows, *idx] (a [rows, pos, ...] view) to `new` [rows or 1, pos, ...] at the mask's positions."""
    def set_(x: torch.Tensor, rows: slice) -> None:
        key = (rows, *idx)
        x[key] = new if mask is None else torch.where(mask[:, :, None], new, x[key])
    return set_


def _adder(delta: torch.Tensor, where: tuple[torch.Tensor, torch.Tensor] | None) -> Modifier:
    """Add `delta` to x[rows]: [rows or 1, pos, d_model], or [n, d_model] at the n (row, position) pairs `where`."""
    def add(x: torch.Tensor, rows: slice) -> None:
        if where is None:
            x[rows] += delta
        else:
            view = x[rows]
            view[where] += delta
    return add


class Context:
    """What interventions read, computed once per sweep: clean and reference activations, W_O, masks."""

    def __init__(self, model, clean: CleanRun, reference: CleanRun | None) -> None:
        self.model, self.cfg = model, model.cfg
        self.clean, self.reference = clean, reference
        self.batch, self.pos = clean.tokens.shape
        if reference is not None and reference.tokens.shape[1] < self.pos:
            raise UsageError(f"the reference batch has {reference.tokens.shape[1]} positions, fewer than "
                             f"the clean batch ({self.pos}); it needs at least as many")
        self._W_O: dict[int, torch.Tensor] = {}  # layer -> W_O [head, d_head, d_model]
        self._masks: dict[Part, torch.Tensor | None] = {}
        self._where: dict[Part, tuple[torch.Tensor, ...]] = {}  # a masked part -> its (rows, positions)
        self._new: dict[tuple[Site, str], torch.Tensor] = {}
        self._actions: dict[Part, Action] = {}
        self._checked: dict[Part, tuple[int, bool | None]] = {}  # part -> (stage, unchanged or None: not known)

    # ---------------------------------------------------------------- reads
    def W_O(self, layer: int) -> torch.Tensor:
        """The output weights of layer `layer`'s heads [head, d_head, d_model] (one layer's, not all stacked)."""
        if layer not in self._W_O:
            self._W_O[layer] = self.model.blocks[layer].attn.W_O.detach()
        return self._W_O[layer]

    @staticmethod
    def _act(run: CleanRun, name: str, what: str) -> torch.Tensor:
        if name not in run.cache:
            hint = {"clean": " (make it with clean_run(model, tokens, extra=patched_site_names(interventions)), "
                             "patterns=True for pattern-preserving ablations)",
                    "reference": " (make it with reference_run(model, tokens, interventions))"}.get(what, "")
            raise UsageError(f"the {what} run's cache lacks {name!r}{hint}")
        return run.cache[name]

    def clean_act(self, name: str) -> torch.Tensor:
        return self._act(self.clean, name, "clean")

    def stage_resid(self, stage: int) -> torch.Tensor:
        """The clean residual stream at `stage` [batch, pos, d_model]."""
        return self.clean_act(stage_hook(self.cfg, stage))

    def _hook_of(self, run: CleanRun, site: Site) -> str:
        """The hook a run's cache holds the site under (a block's output is also the next block's input)."""
        name = site.hook
        if site.kind == "resid_post" and name not in run.cache and site.layer < self.cfg.n_layers - 1:
            return f"blocks.{site.layer + 1}.hook_resid_pre"
        return name

    def site_value(self, run: CleanRun, site: Site, what: str) -> torch.Tensor:
        """The site's activation in `run`, first `pos` positions: [batch, pos, d_model] for a layer site, the
        head's slice [batch, pos, d_head or d_model] for a head site, its pattern [batch, q, k]."""
        act = self._act(run, self._hook_of(run, site), what)
        if site.kind == "pattern":
            return act[:, site.head, : self.pos, : self.pos]
        act = act[:, : self.pos]
        return act if site.head is None else act[:, :, site.head]

    def has_clean(self, site: Site) -> bool:
        return self._hook_of(self.clean, site) in self.clean.cache

    def clean_value(self, site: Site) -> torch.Tensor:
        """The site's clean activation; an attention output the cache lacks is the residual stream's change
        across it (equal up to float rounding)."""
        if site.kind == "attn_out" and not self.has_clean(site):
            l, cfg = site.layer, self.cfg
            pre = self.clean_act(f"blocks.{l}.hook_resid_pre")[:, : self.pos]
            if cfg.attn_only:
                return self.site_value(self.clean, Site("resid_post", l), "clean") - pre
            if not cfg.parallel_attn_mlp:
                return self.clean_act(f"blocks.{l}.hook_resid_mid")[:, : self.pos] - pre
            after = self.site_value(self.clean, Site("resid_post", l), "clean")
            return after - pre - self.clean_act(f"blocks.{l}.hook_mlp_out")[:, : self.pos]
        return self.site_value(self.clean, site, "clean")

    def _zeros(self, site: Site) -> torch.Tensor:
        cfg = self.cfg
        width = {"z": cfg.d_head, "q": cfg.d_head, "k": cfg.d_head, "v": cfg.d_head,
                 "pattern": self.pos}.get(site.kind, cfg.d_model)
        return torch.zeros(1, self.pos, width, dtype=self.clean.logits.dtype, device=self.clean.logits.device)

    def new_value(self, site: Site, method: str) -> torch.Tensor:
        """The replacement [batch or 1, pos, ...] of the site's activation under `method`."""
        key = (site, method)
        if key not in self._new:
            if method == "zero":
                new = self._zeros(site)
            elif method == "corrupted":
                ref = self.reference
                if ref is None:
                    raise UsageError(f"{site}: the method 'corrupted' needs a reference run, the paired prompts "
                                     f"(reference=...: the corrupted prompts for noising, the clean ones for "
                                     f"denoising)")
                if ref.tokens.shape[0] != self.batch:
                    raise UsageError(f"{site}: the method 'corrupted' pairs row i with reference row i, but the "
                                     f"reference has {ref.tokens.shape[0]} rows and the run {self.batch}")
                new = self.site_value(ref, site, "reference")
            else:
                src = self.reference or self.clean
                ref_act = self.site_value(src, site, "reference" if self.reference else "clean")
                if method == "mean":
                    new = ref_act.mean(0, keepdim=True)  # [1, pos, ...]: per position, over the batch
                else:  # resample: same positions, another sequence, never the row itself
                    idx = resample_rows(self.clean.tokens[:, : self.pos], src.tokens[:, : self.pos],
                                        start=0 if self.reference is not None else 1)
                    new = ref_act[idx]
            self._new[key] = new
        return self._new[key]

    def mask(self, part: Part) -> torch.Tensor | None:
        """The part's positions on the run's device [batch, pos] (None: every position), moved there once."""
        if part not in self._masks:
            self._masks[part] = fit_mask(part.at, self.batch, self.pos, self.clean.tokens.device, part.name)
        return self._masks[part]

    def output(self, site: Site, raw: torch.Tensor) -> torch.Tensor:
        """What a z / attn_out / mlp_out activation writes into the residual stream [..., d_model]."""
        if site.kind == "z":
            return raw @ self.W_O(site.layer)[site.head]
        return raw

    def _output_delta(self, site: Site, method: str, part: Part) -> tuple[torch.Tensor, tuple | None]:
        """(new - clean) output: [batch or 1, pos, d_model] for a part without a mask, else ([n, d_model],
        (rows, positions)) at the n True entries of its mask (found when the part was checked)."""
        new, clean = self.new_value(site, method), self.clean_value(site)
        where = self._where.get(part)
        if where is None:
            return self.output(site, new - clean), None
        new = new.expand_as(clean)
        return self.output(site, new[where] - clean[where]), where

    # ------------------------------------------------------------ classify
    def _check(self, part: Part) -> tuple[int, bool | None]:
        """(stage, unchanged): validates the part against the model, its positions and the runs."""
        if part not in self._checked:
            mask = self.mask(part)
            if mask is not None:
                self._where[part] = mask.nonzero(as_tuple=True)
            if isinstance(part, EdgePatch):
                edge = part.edge.check(self.cfg)
                site = node_site(edge.sender)
                stage = edge_stage(self.cfg, edge)
            else:
                if isinstance(part, Ablation):
                    part.node.check(self.cfg)
                    if part.preserve_patterns:
                        for l in range(self.cfg.n_layers):
                            self.clean_act(f"blocks.{l}.attn.hook_pattern")
                site = check_site(part_site(part), self.cfg)
                stage = site_stage(self.cfg, site)
            new = self.new_value(site, part.method)
            unchanged = None
            if self.has_clean(site):
                clean = self.clean_value(site)
                new = new.expand_as(clean)
                unchanged = torch.equal(new, clean) if mask is None else torch.equal(new[mask], clean[mask])
            self._checked[part] = (stage, unchanged)
        return self._checked[part]

    def stage(self, part: Part) -> int:
        """The earliest stage the part changes (validating it first)."""
        return self._check(part)[0]

    def unchanged(self, part: Part) -> bool:
        """True when the part provably changes nothing: every replacement equals the clean value it replaces,
        bit for bit, at every position it acts on (False when the clean run does not hold the site)."""
        return bool(self._check(part)[1])

    # -------------------------------------------------------------- actions
    def action(self, part: Part) -> Action:
        if part not in self._actions:
            self._check(part)
            self._actions[part] = self._build(part)
        return self._actions[part]

    def release(self) -> None:
        """Forget the built actions (their deltas); replacements and checks stay."""
        self._actions.clear()

    def _build(self, part: Part) -> Action:
        mask = self.mask(part)
        if isinstance(part, EdgePatch):
            return self._edge_action(part)
        site = check_site(part_site(part), self.cfg)
        act = self._site_action(site, part, mask)
        if isinstance(part, Ablation) and part.preserve_patterns:
            act.always = self._freeze_patterns()
        return act

    def _site_action(self, site: Site, part: Part, mask: torch.Tensor | None) -> Action:
        new = self.new_value(site, part.method)
        idx: tuple = () if site.head is None else ((site.head,) if site.kind == "pattern" else (slice(None), site.head))
        setter = _setter(idx, new, mask)
        hooks = [(site.hook, setter)]
        stage = site_stage(self.cfg, site)
        if site.kind in RESID_SITES:
            return Action(stage, setter, 1 if site.kind == "resid_post" else 2, hooks)
        if site.kind in OUTPUT_SITES:
            delta, where = self._output_delta(site, part.method, part)
            return Action(stage, _adder(delta, where), 0, hooks)
        return Action(stage, None, 0, hooks)  # inside the layer: q, k, v, their inputs, patterns

    def _edge_action(self, part: EdgePatch) -> Action:
        edge = part.edge.check(self.cfg)
        site = node_site(edge.sender)
        delta, where = self._output_delta(site, part.method, part)
        if edge.kind == "direct":
            L = self.cfg.n_layers
            add = _adder(delta, where)
            return Action(2 * L, add, 0, [(f"blocks.{L - 1}.hook_resid_post", add)])
        recv = edge.receiver
        assert recv is not None
        if edge.kind == "mlp_in":  # the MLP's own copy of its input [batch, pos, d_model]
            return Action(edge_stage(self.cfg, edge), None, 0, [], [(f"blocks.{recv.layer}.hook_mlp_in",
                                                                 _adder(delta, where))])
        name = f"blocks.{recv.layer}.attn.hook_{edge.kind.lower()}_input"  # [batch, pos, head, d_model]
        add_head = _adder(delta, where)

        def add_input(x: torch.Tensor, rows: slice, h=recv.head) -> None:
            head_in = x[:, :, h]  # [batch, pos, d_model], a view
            add_head(head_in, rows)

        return Action(2 * recv.layer, None, 0, [], [(name, add_input)])

    def _freeze_patterns(self) -> list[tuple[str, Modifier]]:
        out: list[tuple[str, Modifier]] = []
        for l in range(self.cfg.n_layers):
            name = f"blocks.{l}.attn.hook_pattern"
            clean = self.clean_act(name)  # [batch, head, q, k]

            def freeze(x: torch.Tensor, rows: slice, clean=clean) -> None:
                x[rows] = clean

            out.append((name, freeze))
        return out


def check_targets(cfg, parts: list[Part]) -> None:
    """A UsageError for the first part whose node, edge or site the model lacks (before anything runs)."""
    for part in parts:
        if isinstance(part, EdgePatch):
            part.edge.check(cfg)
        elif isinstance(part, Ablation):
            part.node.check(cfg)
        else:
            check_site(part.site, cfg)


def hook_specs(mods: dict[str, list[tuple[int, slice, Modifier]]]) -> list[tuple[str, Callable]]:
    """One hook per hook point: clone the activation once, apply every copy's modifier to its rows, by rank."""
    specs = []
    for name, items in mods.items():
        ordered = [(rows, fn) for _, rows, fn in sorted(items, key=lambda item: item[0])]

        def hook(x: torch.Tensor, hp, ordered=ordered) -> torch.Tensor:
            y = x.clone()
            for rows, fn in ordered:
                fn(y, rows)
            return y

        specs.append((name, hook))
    return specs


def collect(ctx: Context, parts_by_copy: list[tuple[slice, tuple[Part, ...]]], start_stage: int,
            resid: torch.Tensor | None) -> list[tuple[str, Callable]]:
    """Hooks for copies (rows, parts) of a run starting at `start_stage`.

    Parts whose start applies exactly at `start_stage` change `resid` (the
    starting residual, edited in place, by rank) instead of being hooked;
    resid=None (a run from the embedding) hooks everything.
    """
    mods: dict[str, list[tuple[int, slice, Modifier]]] = defaultdict(list)
    starts: list[tuple[int, slice, Modifier]] = []
    for rows, parts in parts_by_copy:
        for part in parts:
            act = ctx.action(part)
            if resid is not None and act.start is not None and act.stage == start_stage:
                starts.append((act.rank, rows, act.start))
            else:
                for name, fn in act.hooks:
                    mods[name].append((act.rank, rows, fn))
            for name, fn in act.always:
                mods[name].append((act.rank, rows, fn))
    for _, rows, fn in sorted(starts, key=lambda item: item[0]):
        fn(resid, rows)
    return hook_specs(mods)


def resample_rows(clean: torch.Tensor, reference: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Which reference row each clean row [batch, pos] takes in a resample ablation: row (i + start) mod n,
    or the next one after it whose tokens differ from clean row i, so that no row is "resampled" from
    itself (which would change nothing). A UsageError when every reference row equals clean row i."""
    n = reference.shape[0]
    idx = []
    for i in range(clean.shape[0]):
        for k in range(n):
            j = (i + start + k) % n
            if not torch.equal(clean[i], reference[j]):
                idx.append(j)
                break
        else:
            raise UsageError(f"resample ablation: every sequence of the reference data equals sequence {i} of "
                             f"the clean data, so resampling would change nothing; give reference data with "
                             f"other sequences (a spec's reference_data) or use mean ablation")
    return torch.tensor(idx, dtype=torch.long, device=reference.device)
