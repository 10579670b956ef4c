"""What a patching sweep patches: the `what` kinds, and the grid of patches each makes on a model.

Layer kinds (one site per layer, [batch, pos, d_model]): `resid_pre`,
`resid_mid`, `resid_post` (the residual stream entering a block, between its
attention and MLP, leaving it), `attn_out`, `mlp_out`. Per position by
default: one patch per (layer, position), grid [layer, pos];
per_position=False patches every position of the layer at once, grid [layer].

Head kinds (one site per head): `heads` (the head's output z, what it writes
through W_O), `q`, `k`, `v` (its query, key and value vectors), `q_input`,
`k_input`, `v_input` (the residual stream it reads as query, key and value
input) and `pattern` (its attention pattern; the position is the query
position: the pattern rows of those queries are patched). Every position at
once by default, grid [layer, head]; per_position=True: one patch per (layer,
head, position), grid [layer, head, pos].

A per-position patch acts at the same position index in every prompt (an
`at` mask with one True column).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitry.errors import UsageError, did_you_mean
from circuitry.interventions import Patch
from circuitry.names import Site, check_site

LAYER_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
HEAD_KINDS = {"heads": "z", "q": "q", "k": "k", "v": "v", "q_input": "q_input", "k_input": "k_input",
              "v_input": "v_input", "pattern": "pattern"}  # what -> site kind
WHATS = (*LAYER_KINDS, *HEAD_KINDS)


@dataclass(frozen=True)
class Grid:
    """The patches of one sweep, in row-major order of `shape`; `dims` names the axes (layer, head, pos)."""

    what: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    patches: tuple[Patch, ...]

    @property
    def per_position(self) -> bool:
        return "pos" in self.dims


def site_kind(what: str) -> str:
    """The `circuitry.names` site kind a `what` patches; a UsageError naming the kinds for anything else."""
    if what in LAYER_KINDS:
        return what
    if what in HEAD_KINDS:
        return HEAD_KINDS[what]
    raise UsageError(f"activation patching: unknown what {what!r}{did_you_mean(str(what), WHATS)}; one of "
                     f"{', '.join(WHATS)}")


def make_grid(what: str, cfg, batch: int, pos: int, per_position: bool | None = None,
              method: str = "corrupted", device: torch.device | str = "cpu") -> Grid:
    """Every patch of a sweep of `what` on a model with config `cfg`, for runs of [batch, pos] tokens.

    per_position None: the kind's default (layer kinds per position, head kinds not). The position
    masks are made on `device` (the model's).
    """
    kind = site_kind(what)
    per_head = what in HEAD_KINDS
    if per_position is None:
        per_position = not per_head
    try:
        check_site(Site(kind, 0, 0 if per_head else None), cfg)
    except UsageError as exc:
        raise UsageError(f"activation patching of {what}: {exc}") from None
    columns = [torch.zeros(batch, pos, dtype=torch.bool, device=device) for _ in range(pos)] if per_position else []
    for p, col in enumerate(columns):
        col[:, p] = True
    ats: list[torch.Tensor | None] = list(columns) if per_position else [None]
    L, H = cfg.n_layers, cfg.n_heads
    sites = [Site(kind, l, h) for l in range(L) for h in range(H)] if per_head else [Site(kind, l) for l in range(L)]
    patches = tuple(Patch(site, method, at) for site in sites for at in ats)
    dims = ("layer", "head") if per_head else ("layer",)
    shape: tuple[int, ...] = (L, H) if per_head else (L,)
    if per_position:
        dims, shape = (*dims, "pos"), (*shape, pos)
    return Grid(what, dims, shape, patches)
