"""How each intervention changes a run: replacement values, start stage, hooks.

A run can start part-way through the model because nothing before the first
changed component differs from the clean run. Start points are *stages* of the
residual stream: stage 2l is the residual entering block l (hook_resid_pre),
stage 2l+1 the residual entering the MLP of block l (hook_resid_mid, models
with sequential MLPs only), stage 2L the final residual (before ln_final).

Every atomic part (Ablation, EdgePatch) becomes an `Action`:
- `stage`: the earliest stage whose residual it changes;
- `start_delta` [batch, pos, d_model]: for node ablations and direct edges,
  the change of the residual at `stage` (new output - clean output); when a
  run starts exactly there, it is added to the cached clean residual instead
  of recomputing the layer (a head ablated in layer l changes the residual
  after that layer's attention by (z_new - z_clean) @ W_O[h]);
- `hooks`: the same change made inside a run that computes the component
  (used when the run starts earlier, and by the naive method);
- `always`: hooks needed whatever the start (Q/K/V inputs of a receiver,
  frozen patterns).
A hook modifier `fn(x, rows)` edits rows `rows` of a cloned activation in place.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from circuitry.errors import UsageError
from circuitry.interventions.records import Ablation, CleanRun, EdgePatch, Part
from circuitry.interventions.targets import Node

Modifier = Callable[..., None]  # (activation, rows) -> None: changes the rows of the activation in place


@dataclass
class Action:
    stage: int
    start_delta: torch.Tensor | None = None  # [batch, pos, d_model] (or broadcastable)
    hooks: list[tuple[str, Modifier]] = field(default_factory=list)
    always: list[tuple[str, Modifier]] = field(default_factory=list)


def stage_layers(stage: int, n_layers: int) -> float:
    """Blocks a run starting at `stage` computes (a start at an MLP counts half a block)."""
    return n_layers - stage / 2


class Context:
    """What interventions read, computed once per sweep: clean and reference activations, W_O."""

    def __init__(self, model, clean: CleanRun, reference: CleanRun | None) -> None:
        self.model, self.cfg = model, model.cfg
        self.clean, self.reference = clean, reference
        self.batch, self.pos = clean.tokens.shape
        if reference is not None and reference.tokens.shape[1] < self.pos:
            raise UsageError(f"the reference batch has {reference.tokens.shape[1]} positions, fewer than "
                             f"the clean batch ({self.pos}); it needs at least as many")
        self._W_O: torch.Tensor | None = None
        self._new: dict[tuple[Node, str], torch.Tensor] = {}
        self._actions: dict[Part, Action] = {}

    # ---------------------------------------------------------------- reads
    @property
    def W_O(self) -> torch.Tensor:
        if self._W_O is None:
            self._W_O = self.model.W_O.detach()  # [layer, head, d_head, d_model]
        return self._W_O

    @staticmethod
    def _act(run: CleanRun, name: str, what: str) -> torch.Tensor:
        if name not in run.cache:
            hint = (" (make it with clean_run(model, tokens), patterns=True for pattern-preserving ablations)"
                    if what == "clean" else "")
            raise UsageError(f"the {what} run's cache lacks {name!r}{hint}")
        return run.cache[name]

    def clean_act(self, name: str) -> torch.Tensor:
        return self._act(self.clean, name, "clean")

    def stage_resid(self, stage: int) -> torch.Tensor:
        """The clean residual stream at `stage` [batch, pos, d_model]."""
        L = self.cfg.n_layers
        if stage == 2 * L:
            return self.clean_act(f"blocks.{L - 1}.hook_resid_post")
        l, mid = divmod(stage, 2)
        return self.clean_act(f"blocks.{l}.hook_resid_mid" if mid else f"blocks.{l}.hook_resid_pre")

    def _raw_name(self, node: Node) -> str:
        return f"blocks.{node.layer}.attn.hook_z" if node.is_head else f"blocks.{node.layer}.hook_mlp_out"

    def _raw(self, run: CleanRun, node: Node, what: str) -> torch.Tensor:
        """The node's raw activation: z_h [batch, pos, d_head] for a head, mlp_out [batch, pos, d_model]."""
        act = self._act(run, self._raw_name(node), what)[:, : self.pos]
        return act[:, :, node.head] if node.is_head else act

    def clean_raw(self, node: Node) -> torch.Tensor:
        return self._raw(self.clean, node, "clean")

    def new_raw(self, node: Node, method: str) -> torch.Tensor:
        """The replacement raw activation [batch or 1, pos, ...] of `node` under `method`."""
        key = (node, method)
        if key not in self._new:
            clean = self.clean_raw(node)
            if method == "zero":
                new = torch.zeros_like(clean[:1])
            else:
                src = self.reference or self.clean
                ref = self._raw(src, node, "reference" if self.reference else "clean")
                if method == "mean":
                    new = ref.mean(0, keepdim=True)  # [1, pos, ...]: per position, over the batch
                else:  # resample: same positions, another sequence, never the row itself
                    idx = resample_rows(self.clean.tokens[:, : self.pos], src.tokens[:, : self.pos],
                                        start=0 if self.reference is not None else 1)
                    new = ref[idx]
            self._new[key] = new
        return self._new[key]

    def output(self, node: Node, raw: torch.Tensor) -> torch.Tensor:
        """What the node writes into the residual stream given its raw activation [.., pos, d_model]."""
        if node.is_head:
            return raw @ self.W_O[node.layer, node.head]
        return raw

    def sender_delta(self, node: Node, method: str) -> torch.Tensor:
        """sender_new - sender_clean [batch, pos, d_model]."""
        return self.output(node, self.new_raw(node, method) - self.clean_raw(node))

    # -------------------------------------------------------------- actions
    def action(self, part: Part) -> Action:
        if part not in self._actions:
            self._actions[part] = self._build(part)
        return self._actions[part]

    def _build(self, part: Part) -> Action:
        cfg = self.cfg
        L = cfg.n_layers
        if isinstance(part, Ablation):
            node = part.node.check(cfg)
            new = self.new_raw(node, part.method)
            if node.is_head:
                sequential_mlp = not cfg.attn_only and not cfg.parallel_attn_mlp
                stage = 2 * node.layer + 1 if sequential_mlp else 2 * node.layer + 2
                h = node.head

                def set_z(x: torch.Tensor, rows: slice, h=h, new=new) -> None:
                    x[rows, :, h] = new

                hooks: list[tuple[str, Modifier]] = [(f"blocks.{node.layer}.attn.hook_z", set_z)]
            else:
                stage = 2 * node.layer + 2

                def set_out(x: torch.Tensor, rows: slice, new=new) -> None:
                    x[rows] = new

                hooks = [(f"blocks.{node.layer}.hook_mlp_out", set_out)]
            always = self._freeze_patterns() if part.preserve_patterns else []
            return Action(stage, self.sender_delta(node, part.method), hooks, always)
        if isinstance(part, EdgePatch):
            edge = part.edge.check(cfg)
            delta = self.sender_delta(edge.sender, part.method)
            if edge.kind == "direct":
                def add_final(x: torch.Tensor, rows: slice, delta=delta) -> None:
                    x[rows] += delta

                return Action(2 * L, delta, [(f"blocks.{L - 1}.hook_resid_post", add_final)])
            recv = edge.receiver
            assert recv is not None
            name = f"blocks.{recv.layer}.attn.hook_{edge.kind.lower()}_input"  # [batch, pos, head, d_model]

            def add_input(x: torch.Tensor, rows: slice, h=recv.head, delta=delta) -> None:
                x[rows, :, h] += delta

            return Action(2 * recv.layer, None, [], [(name, add_input)])
        raise UsageError(f"not an intervention part: {part!r}")

    def _freeze_patterns(self) -> list[tuple[str, Modifier]]:
        out: list[tuple[str, Modifier]] = []
        for l in range(self.cfg.n_layers):
            name = f"blocks.{l}.attn.hook_pattern"
            clean = self.clean_act(name)  # [batch, head, q, k]

            def freeze(x: torch.Tensor, rows: slice, clean=clean) -> None:
                x[rows] = clean

            out.append((name, freeze))
        return out


def hook_specs(mods: dict[str, list[tuple[slice, Modifier]]]) -> list[tuple[str, Callable]]:
    """One hook per hook point: clone the activation once, apply every copy's modifier to its rows."""
    specs = []
    for name, items in mods.items():
        def hook(x: torch.Tensor, hp, items=items) -> torch.Tensor:
            y = x.clone()
            for rows, fn in items:
                fn(y, rows)
            return y

        specs.append((name, hook))
    return specs


def collect(ctx: Context, parts_by_copy: list[tuple[slice, tuple[Part, ...]]], start_stage: int,
            resid: torch.Tensor | None) -> list[tuple[str, Callable]]:
    """Hooks for copies (rows, parts) of a run starting at `start_stage`.

    Parts whose start delta applies exactly at `start_stage` are added to
    `resid` (the starting residual, edited in place) instead of hooked;
    resid=None (a run from the embedding) hooks everything.
    """
    mods: dict[str, list[tuple[slice, Modifier]]] = defaultdict(list)
    for rows, parts in parts_by_copy:
        for part in parts:
            act = ctx.action(part)
            if resid is not None and act.start_delta is not None and act.stage == start_stage:
                resid[rows] += act.start_delta
            else:
                for name, fn in act.hooks:
                    mods[name].append((rows, fn))
            for name, fn in act.always:
                mods[name].append((rows, fn))
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
