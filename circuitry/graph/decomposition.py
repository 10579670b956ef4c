"""`decompose(model, tokens)`: the logits of one run split exactly into a sum over residual paths.

Freeze every attention pattern and every normalisation scale at the values
of the clean run. The model is then affine in its sources (the embeddings,
the MLP outputs, the bias vectors): a LayerNorm becomes the linear map
x -> (x - mean(x)) / scale * w plus the constant b. The logits split into

    ("direct",)         U(x0), x0 = W_E[tokens] + W_pos (the residual entering block 0)
    ("L1H2",)           U(T_{1,2}(x0)): head L1H2 whose value input is only x0
    ("L0H1", "L1H2")    U(T_{1,2}(T_{0,1}(x0))): the virtual head, pattern A2·A1, OV W_OV1 W_OV2
    ("M0",)             U(mlp_out_0): the MLP's cached output (b_out included), straight to the logits
    ("bias",)           U(sum of the attention layers' constant outputs) + ln_final.b @ W_U + b_U
    ("remainder",)      every other path: through three or more heads, from an MLP output or a
                        bias through later heads, from a second-order output through later heads

where T_{l,h}(y) = A_{l,h} (C(y) / s_l * w_l) W_V W_O is a head's linear map
on what it reads as value input (C centres along d_model when the norm is a
LayerNorm, s_l the frozen ln1 scale, w_l the ln1 weight; no norm: identity)
and U(y) = (C(y) / s_f * w_f) @ W_U is the frozen final norm and unembedding.
An attention layer's constant output is b_O + sum_h (ln1.b @ W_V + b_V) @ W_O
(attention rows sum to 1). The remainder is computed by propagating the
higher-order residual through every head, not as "logits minus the rest",
so that the sum of the terms matching the logits is a real check.
Keys enter only through the frozen patterns, so models whose keys read the
embeddings (`ModelConfig.key_input`) or are smeared (`ModelConfig.smeared_keys`)
decompose exactly as well: their terms are the same paths, through values.

A projection onto a logit direction (`project`) never forms a [batch, pos,
d_vocab] tensor per term: the direction is pulled back through W_U and the
final norm into a readout vector g [batch, pos, d_model], and for virtual heads
further through W_O and W_V into d_head-sized factors. It projects the paths
asked for (all by default, after checking the [n_terms, batch, pos] result
against the memory budget); virtual heads are computed per reader head for a
chunk of senders at a time, the chunk sized by `circuitry.budget.chunk_budget`.
`top_paths` ranks every term without holding the projected values: each chunk
is reduced to its means as it is computed. No weight is copied for the whole
model: each layer's weights are read (and key/value heads expanded) when used.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from circuitry.budget import chunk_budget, require, run_bytes
from circuitry.errors import InputError, UsageError
from circuitry.graph.paths import Path, format_path, parse_path, path_kind
from circuitry.names import head_index, head_name, mlp_name

Target = str | int | tuple[int, int] | torch.Tensor  # what a projection explains (see Decomposition.project)
F32 = 4  # bytes of a float32


@dataclass(frozen=True)
class PathScore:
    """One term's contribution to a projected logit: mean and mean |.| over the selected positions."""

    path: Path
    kind: str
    mean: float
    mean_abs: float

    @property
    def name(self) -> str:
        return format_path(self.path)


@dataclass(frozen=True)
class LadderStep:
    """Loss when the logits keep only the terms of `kinds` (cumulative rungs of the ladder)."""

    name: str
    kinds: tuple[str, ...]
    loss: float


@dataclass(frozen=True)
class Projection:
    """Terms projected on one logit direction (every term, or the paths asked for).

    values [n_terms, batch, pos]: values[i] is the term `paths[i]` projected;
    valid [batch, pos]: positions where the target is defined (the last
    position has no next token for target "correct"; values there are 0);
    full [batch, pos]: the projected sum of every term of the decomposition
    (the projected logits), also when only some terms were projected.
    """

    paths: tuple[Path, ...]
    values: torch.Tensor
    valid: torch.Tensor
    target: str
    full: torch.Tensor | None = None

    def __getitem__(self, path: Path | str) -> torch.Tensor:
        key = tuple(path) if not isinstance(path, str) else _loose(path)
        try:
            return self.values[self.paths.index(key)]
        except ValueError:
            raise UsageError(f"path {path!r} is not among the {len(self.paths)} projected terms") from None

    def total(self) -> torch.Tensor:
        """The projected logits [batch, pos]: the sum of every term of the decomposition."""
        return self.values.sum(0) if self.full is None else self.full

    def _mask(self, mask: torch.Tensor | None) -> torch.Tensor:
        return _positions(self.valid, mask)

    def mean(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of each term over the masked valid positions [n_terms]."""
        m = self._mask(mask)
        if not bool(m.any()):
            raise UsageError("no positions selected: the mask and the target's valid positions do not overlap")
        return self.values[:, m].mean(-1)

    def top(self, k: int = 10, mask: torch.Tensor | None = None, by: str = "mean") -> list[PathScore]:
        """The k terms with the largest mean (by="mean"), |mean| ("abs") or mean |value| ("mean_abs")."""
        _check_top(k, by)
        m = self._mask(mask)
        means = self.mean(m)
        return _ranked(self.paths, means, self.values[:, m].abs().mean(-1), k, by)


def _positions(valid: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The positions [batch, pos] a mean is taken over: the valid ones, within `mask` when given."""
    if mask is None:
        return valid
    mask = torch.as_tensor(mask, dtype=torch.bool, device=valid.device)
    if mask.shape != valid.shape:
        raise UsageError(f"mask must have shape {list(valid.shape)} [batch, pos], got {list(mask.shape)}")
    return mask & valid


def _check_top(k: int, by: str) -> None:
    if by not in ("mean", "abs", "mean_abs"):
        raise UsageError(f"top: by must be 'mean', 'abs' or 'mean_abs', got {by!r}")
    if k < 1:
        raise UsageError(f"top: k must be >= 1, got {k}")


def _ranked(paths: Sequence[Path], means: torch.Tensor, mean_abs: torch.Tensor, k: int, by: str) -> list[PathScore]:
    """The k paths with the largest mean (by="mean"), |mean| ("abs") or mean |value| ("mean_abs");
    means, mean_abs [n_terms]."""
    key = {"mean": means, "abs": means.abs(), "mean_abs": mean_abs}[by]
    order = torch.argsort(key, descending=True)[:k].tolist()
    return [PathScore(paths[i], path_kind(paths[i]), float(means[i]), float(mean_abs[i])) for i in order]


@dataclass(frozen=True)
class TermPlan:
    """Which terms a projection computes, and the row of each in its result.

    special: (row, path) of the direct, MLP, bias and remainder terms; heads, head_rows [n]: flat
    head indices (layer * n_heads + head) and rows of single-head terms; pairs: (reader, senders [n],
    rows [n]) per reader head (flat index) of the virtual heads sender -> reader.
    """

    paths: tuple[Path, ...]
    special: tuple[tuple[int, Path], ...]
    heads: torch.Tensor
    head_rows: torch.Tensor
    pairs: tuple[tuple[int, torch.Tensor, torch.Tensor], ...]


def _loose(text: str) -> Path:
    import re

    return tuple(p for p in re.split(r"\s*(?:->|>|,)\s*", text.strip()) if p)


def decomposition_refusal(cfg) -> str | None:
    """Why the logits of a model of `cfg` do not split exactly into path terms (None: they do). Frozen patterns
    make QK-norm and soft-capped scores irrelevant; a soft cap on the logits or norms on the blocks' outputs
    are nonlinear in every path at once."""
    if cfg.output_logits_soft_cap is not None:
        return (f"the model soft-caps its logits ({cfg.output_logits_soft_cap:g} * tanh(logits / "
                f"{cfg.output_logits_soft_cap:g})), which is not linear in the residual stream, so its logits do not "
                f"split into a sum of path terms; decompose refuses such models")
    if cfg.post_norms:
        return ("the model normalises the outputs of its attention layers and MLPs (post-norms ln1_post / ln2_post) "
                "by scales that depend on the whole output, so one head's contribution is not a separate term; "
                "decompose refuses such models")
    if not cfg.pre_norms and cfg.normalization is not None:
        return "the model has a final norm but no norms before its layers (pre_norms false); decompose refuses it"
    return None


def decomposition_bytes(cfg, batch: int, pos: int) -> int:
    """Bytes a decomposition of batch x pos tokens holds: a cached run (`run_bytes`), every head's
    first-order z [batch, pos, layer * head, d_head] and the residuals of the propagation (about
    8 x [batch, pos, d_model]), float32."""
    per_pos = cfg.n_layers * cfg.n_heads * cfg.d_head + 8 * cfg.d_model
    return run_bytes(cfg, batch, pos) + F32 * int(batch) * int(pos) * per_pos


class Decomposition:
    """The logits of one cached run as a sum of path terms (see the module docstring).

    Built by `decompose(model, tokens)`. `paths` lists every term; `term(path)`
    is one term's logits [batch, pos, d_vocab]; `project(target, paths)` some or
    all terms on one logit direction; `top_paths(k)`; `loss_ladder(mask)`.
    """

    def __init__(self, model, tokens: torch.Tensor, cache=None, logits: torch.Tensor | None = None) -> None:
        cfg = model.cfg
        refusal = decomposition_refusal(cfg)
        if refusal:
            raise UsageError(f"decompose: {refusal}")
        self.model, self.cfg = model, cfg
        self.tokens = model.check_tokens(tokens)  # [batch, pos]
        L = cfg.n_layers
        b, p = self.tokens.shape
        require(decomposition_bytes(cfg, b, p), f"the decomposition of {b} x {p} tokens")
        norm = cfg.normalization
        self._centre = norm in ("LN", "LNPre")
        names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.attn.hook_pattern" for l in range(L)]
        if norm is not None:
            names += [f"blocks.{l}.ln1.hook_scale" for l in range(L)] + ["ln_final.hook_scale"]
        if not cfg.attn_only:
            names += [f"blocks.{l}.hook_mlp_out" for l in range(L)]
        with torch.inference_mode():
            if cache is None or logits is None or not all(n in cache for n in names):
                logits, cache = model.run_with_cache(self.tokens, names=names)
            self.logits = logits  # [batch, pos, d_vocab]
            self._x0 = cache["blocks.0.hook_resid_pre"]  # [batch, pos, d_model]
            self._A = [cache[f"blocks.{l}.attn.hook_pattern"] for l in range(L)]  # [batch, head, q, k]
            one = torch.ones_like(self._x0[..., :1])
            self._s = [cache[f"blocks.{l}.ln1.hook_scale"] if norm else one for l in range(L)]  # [b, p, 1]
            self._s_f = cache["ln_final.hook_scale"] if norm else one  # [batch, pos, 1]
            self._mlp = [] if cfg.attn_only else [cache[f"blocks.{l}.hook_mlp_out"] for l in range(L)]
            self._weights()
            self._propagate()

    # ------------------------------------------------------------ internals
    def _norm_parts(self, ln) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.cfg.d_model
        w = getattr(ln, "w", None)
        b = getattr(ln, "b", None)
        dev, dt = self._x0.device, self._x0.dtype
        return (torch.ones(d, device=dev, dtype=dt) if w is None else w.detach(),
                torch.zeros(d, device=dev, dtype=dt) if b is None else b.detach())

    def _weights(self) -> None:
        m, L = self.model, self.cfg.n_layers
        self._n_layers = L
        self._rep = self.cfg.n_heads // self.cfg.kv_heads  # query heads per key/value head
        self._W_U = m.W_U.detach()  # [d_model, d_vocab]
        self._b_U = m.b_U.detach()  # [d_vocab]
        w1, b1 = zip(*(self._norm_parts(block.ln1) for block in m.blocks))
        self._w1 = torch.stack(w1)  # [layer, d_model]
        self._w_f, self._b_f = self._norm_parts(m.ln_final)
        b_V, b_O = m.b_V.detach(), m.b_O.detach()  # [layer, head, d_head], [layer, d_model]
        # constant output of each attention layer [layer, d_model]
        self._beta = torch.stack([
            torch.einsum("he,hed->d", torch.einsum("d,hde->he", b1[l], self._W_V(l)) + b_V[l], self._W_O(l)) + b_O[l]
            for l in range(L)])

    def _W_V(self, layer: int) -> torch.Tensor:
        """W_V [head, d_model, d_head] of one layer (key/value heads repeated for grouped-query attention)."""
        W = self.model.blocks[layer].attn.W_V.detach()
        return W.repeat_interleave(self._rep, 0) if self._rep > 1 else W

    def _W_V_eff(self, layer: int) -> torch.Tensor:
        """W_V [head, d_model, d_head] of one layer with ln1.w folded in."""
        return self._W_V(layer) * self._w1[layer][:, None]

    def _W_V_eff_head(self, layer: int, head: int) -> torch.Tensor:
        """W_V [d_model, d_head] of one head with ln1.w folded in."""
        return self.model.blocks[layer].attn.W_V.detach()[head // self._rep] * self._w1[layer][:, None]

    def _W_O(self, layer: int) -> torch.Tensor:
        """W_O [head, d_head, d_model] of one layer."""
        return self.model.blocks[layer].attn.W_O.detach()

    def _W_O_c_heads(self, heads: torch.Tensor) -> torch.Tensor:
        """W_O [n, d_head, d_model] of the flat heads `heads` (layer * n_heads + head), centred along d_model
        when the norms are LayerNorms (what a later head's ln1 reads of them)."""
        H = self.cfg.n_heads
        layers = heads // H
        W = torch.empty(len(heads), self.cfg.d_head, self.cfg.d_model, dtype=self._W_O(0).dtype,
                        device=self._x0.device)
        for layer in torch.unique(layers).tolist():
            sel = layers == layer
            W[sel] = self._W_O(layer)[heads[sel] - layer * H]
        return W - W.mean(-1, keepdim=True) if self._centre else W

    def _c(self, y: torch.Tensor) -> torch.Tensor:
        return y - y.mean(-1, keepdim=True) if self._centre else y

    def _heads_z(self, layer: int, y: torch.Tensor) -> torch.Tensor:
        """z [batch, pos, head, d_head] of every head of `layer` reading y [batch, pos, d_model] as value input."""
        v = torch.einsum("bpd,hde->bphe", self._c(y) / self._s[layer], self._W_V_eff(layer))
        return torch.einsum("bhqk,bkhe->bqhe", self._A[layer], v)

    def _out(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """Summed output [batch, pos, d_model] of z [batch, pos, head, d_head]."""
        return torch.einsum("bqhe,hed->bqd", z, self._W_O(layer))

    def _propagate(self) -> None:
        """First-order z per layer, the summed virtual-head output, the remainder residual."""
        x0 = self._x0
        H = self.cfg.n_heads
        zero = torch.zeros_like(x0)
        s1, virtual, rest, mlps, bias = zero, zero, zero, zero, torch.zeros_like(x0[0, 0])
        z_all: torch.Tensor | None = None
        for layer in range(self._n_layers):
            z1 = self._heads_z(layer, x0)  # [batch, pos, head, d_head]
            if z_all is None:
                z_all = z1.new_empty(*z1.shape[:2], self._n_layers * H, z1.shape[-1])
            z_all[:, :, layer * H:(layer + 1) * H] = z1
            second = self._out(layer, self._heads_z(layer, s1)) if layer else zero
            higher = virtual + rest + mlps + bias
            higher_out = self._out(layer, self._heads_z(layer, higher)) if layer else zero
            s1 = s1 + self._out(layer, z1)
            virtual = virtual + second
            rest = rest + higher_out
            bias = bias + self._beta[layer]
            if self._mlp:
                mlps = mlps + self._mlp[layer]
        assert z_all is not None  # a model has at least one layer
        self._first_z = z_all  # [batch, pos, layer * head, d_head]: every head's z reading x0 (first order)
        self._first_total = s1  # [batch, pos, d_model]
        self._virtual_total = virtual
        self._rest = rest
        self._bias_resid = bias  # [d_model]
        self._mlp_total = mlps

    def _unembed(self, y: torch.Tensor) -> torch.Tensor:
        """U(y) = (C(y) / s_f * w_f) @ W_U [batch, pos, d_vocab] (the linear part of the final norm)."""
        return (self._c(y) / self._s_f * self._w_f) @ self._W_U

    def _const_logits(self) -> torch.Tensor:
        return self._b_f @ self._W_U + self._b_U  # [d_vocab]

    # --------------------------------------------------------------- public
    @property
    def batch_size(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def paths(self) -> list[Path]:
        """Every term, in this order: direct, heads, virtual heads (by first head, then second), MLPs,
        bias, remainder."""
        if not hasattr(self, "_paths"):
            self._paths = self._all_paths()
        return list(self._paths)

    def _all_paths(self) -> list[Path]:
        cfg = self.cfg
        heads = [(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
        out: list[Path] = [("direct",)]
        out += [(head_name(l, h),) for l, h in heads]
        out += [(head_name(*a), head_name(*b)) for a in heads for b in heads if a[0] < b[0]]
        if not cfg.attn_only:
            out += [(mlp_name(l),) for l in range(cfg.n_layers)]
        return out + [("bias",), ("remainder",)]

    def parse(self, path: Path | str | Sequence[str]) -> Path:
        """A validated path (UsageError for a head, MLP or pair that the model does not have)."""
        return parse_path(path, self.cfg)

    def residual(self, path: Path | str) -> torch.Tensor:
        """The term's contribution to the final residual stream [batch, pos, d_model] (before ln_final).

        For ("bias",) this leaves out the constants ln_final.b @ W_U + b_U that
        `term` adds."""
        path = self.parse(path)
        kind = path_kind(path)
        with torch.inference_mode():
            if kind == "direct":
                return self._x0
            H = self.cfg.n_heads
            if kind == "head":
                l, h = head_index(path[0])
                return self._first_z[:, :, l * H + h] @ self._W_O(l)[h]
            if kind == "virtual":
                (l1, h1), (l2, h2) = head_index(path[0]), head_index(path[1])
                y1 = self._first_z[:, :, l1 * H + h1] @ self._W_O(l1)[h1]  # [batch, pos, d_model]
                v = (self._c(y1) / self._s[l2]) @ self._W_V_eff_head(l2, h2)  # [batch, pos, d_head]
                return (self._A[l2][:, h2] @ v) @ self._W_O(l2)[h2]
            if kind == "mlp":
                return self._mlp[int(path[0][1:])]
            if kind == "bias":
                return self._bias_resid.expand_as(self._x0)
            return self._rest

    def term(self, path: Path | str) -> torch.Tensor:
        """One term's logits [batch, pos, d_vocab]."""
        path = self.parse(path)
        with torch.inference_mode():
            out = self._unembed(self.residual(path))
            return out + self._const_logits() if path == ("bias",) else out

    def terms(self) -> Iterator[tuple[Path, torch.Tensor]]:
        """(path, logits [batch, pos, d_vocab]) for every term, one at a time."""
        for path in self.paths:
            yield path, self.term(path)

    def group_logits(self, kinds: Sequence[str]) -> torch.Tensor:
        """Summed logits [batch, pos, d_vocab] of every term of the given kinds
        (direct, head, virtual, mlp, bias, remainder), computed from summed residuals."""
        parts = {"direct": self._x0, "head": self._first_total, "virtual": self._virtual_total,
                 "mlp": self._mlp_total, "remainder": self._rest}
        bad = [k for k in kinds if k not in (*parts, "bias")]
        if bad:
            raise UsageError(f"unknown term kind {bad[0]!r}; valid: direct, head, virtual, mlp, bias, remainder")
        with torch.inference_mode():
            y = torch.zeros_like(self._x0)
            for k in kinds:
                if k == "bias":
                    y = y + self._bias_resid
                elif k != "mlp" or self._mlp:
                    y = y + parts[k]
            out = self._unembed(y)
            return out + self._const_logits() if "bias" in kinds else out

    def total(self) -> torch.Tensor:
        """The sum of every term [batch, pos, d_vocab]; equals `logits` to float precision."""
        return self.group_logits(("direct", "head", "virtual", "mlp", "bias", "remainder"))

    # ------------------------------------------------------------ projection
    def _direction(self, target) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
        """(u [batch, pos, d_model] = W_U @ direction, b [batch, pos] = b_U . direction, valid, description)."""
        b, p = self.tokens.shape
        V = self.cfg.d_vocab
        W_U, b_U = self._W_U, self._b_U
        valid = torch.ones(b, p, dtype=torch.bool, device=self.tokens.device)

        def check_id(t: int, what: str) -> int:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < V:
                raise UsageError(f"{what} {t!r} is not a token id of the model (0..{V - 1})")
            return t

        def per_token(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return W_U.T[ids], b_U[ids]

        if isinstance(target, str) and target == "correct":
            ids = torch.zeros_like(self.tokens)
            ids[:, :-1] = self.tokens[:, 1:]
            valid[:, -1] = False
            u, bu = per_token(ids)
            desc = "logit of the correct next token"
        elif isinstance(target, int) and not isinstance(target, bool):
            t = check_id(target, "target token")
            u, bu = W_U[:, t].expand(b, p, -1), b_U[t].expand(b, p)
            desc = f"logit of token {t}"
        elif isinstance(target, tuple) and len(target) == 2:
            a, c = (check_id(t, "target token") for t in target)
            u = (W_U[:, a] - W_U[:, c]).expand(b, p, -1)
            bu = (b_U[a] - b_U[c]).expand(b, p)
            desc = f"logit difference {a} - {c}"
        elif isinstance(target, torch.Tensor):
            tt = target.to(self.tokens.device)
            if tt.ndim == 1 and tt.shape[0] == V and tt.is_floating_point():
                tt = tt.to(W_U.dtype)
                u, bu = (W_U @ tt).expand(b, p, -1), (b_U @ tt).expand(b, p)
                desc = "projection on a vocabulary direction"
            elif tt.ndim == 2 and tuple(tt.shape) == (b, p) and not tt.is_floating_point():
                if tt.numel() and (int(tt.min()) < 0 or int(tt.max()) >= V):
                    raise InputError(f"target token ids must lie in 0..{V - 1}")
                u, bu = per_token(tt.long())
                desc = "logit of per-position target tokens"
            elif tt.ndim == 3 and tuple(tt.shape) == (b, p, V) and tt.is_floating_point():
                tt = tt.to(W_U.dtype)
                u, bu = tt @ W_U.T, tt @ b_U
                desc = "projection on per-position vocabulary directions"
            else:
                raise UsageError(f"target tensor must be a float vector [d_vocab={V}], token ids [batch={b}, "
                                 f"pos={p}] or float directions [{b}, {p}, {V}]; got {tt.dtype} {list(tt.shape)}")
        else:
            raise UsageError(f"target must be 'correct', a token id, a pair (a, b) of token ids for a logit "
                             f"difference, or a tensor; got {target!r}")
        u = u * valid[..., None]
        bu = bu * valid
        return u, bu, valid, desc

    def project(self, target: Target = "correct", paths: Iterable[Path | str] | None = None) -> Projection:
        """Terms projected on a logit direction, as a `Projection` [n_terms, batch, pos].

        target: "correct" (the logit of the next token; the last position is
        not valid), a token id, a pair (a, b) for logit[a] - logit[b], a float
        tensor [d_vocab], token ids [batch, pos] or float directions [batch, pos, d_vocab].
        paths: the terms to project, in that order (each once; `parse` says which
        are valid); None: every term, in the order of `paths`. The result's
        `total()` is the projected sum of every term either way. The values
        [n_terms, batch, pos] are checked against the memory budget first.
        """
        u, bu, valid, desc = self._direction(target)
        plan = self._plan(paths)
        b, p = self.tokens.shape
        n = len(plan.paths)
        require(F32 * (n + 1) * b * p, f"the projection of {n} terms on {b} x {p} tokens")
        with torch.inference_mode():
            g = self._readout(u)  # [batch, pos, d_model]
            values = g.new_empty(n, b, p)
            for rows, block in self._projected(plan, g, u, bu):
                values[rows] = block
            full = self._projected_total(g, u, bu)
        return Projection(plan.paths, values, valid, desc, full)

    def _readout(self, u: torch.Tensor) -> torch.Tensor:
        """g [batch, pos, d_model] with U(y) . d = y . g: the direction u = W_U d pulled back through the
        frozen final norm, g = C(w_f * u) / s_f."""
        return self._c(self._w_f * u) / self._s_f

    def _plan(self, paths: Iterable[Path | str] | None) -> TermPlan:
        """The terms of `paths` (None: every term) and where each goes in the result."""
        H = self.cfg.n_heads
        if paths is None:
            return self._plan_all()
        if isinstance(paths, str):
            raise UsageError(f"paths must be a list of paths, got the string {paths!r}; write [{paths!r}]")
        wanted = tuple(dict.fromkeys(self.parse(path) for path in paths))
        special: list[tuple[int, Path]] = []
        heads: list[tuple[int, int]] = []
        pairs: dict[int, list[tuple[int, int]]] = {}
        for row, path in enumerate(wanted):
            kind = path_kind(path)
            if kind == "head":
                l, h = head_index(path[0])
                heads.append((l * H + h, row))
            elif kind == "virtual":
                (l1, h1), (l2, h2) = head_index(path[0]), head_index(path[1])
                pairs.setdefault(l2 * H + h2, []).append((l1 * H + h1, row))
            else:
                special.append((row, path))
        head_t = torch.tensor(heads, dtype=torch.long).reshape(-1, 2)  # [n, 2]: head, row
        pair_t = []
        for reader, sender_rows in pairs.items():
            t = torch.tensor(sender_rows, dtype=torch.long)  # [n, 2]: sender, row
            pair_t.append((reader, t[:, 0], t[:, 1]))
        return TermPlan(wanted, tuple(special), head_t[:, 0], head_t[:, 1], tuple(pair_t))

    def _plan_all(self) -> TermPlan:
        """Every term, rows in the order of `paths`: direct, heads, virtual heads (by sender, then reader),
        MLPs, bias, remainder."""
        cfg = self.cfg
        L, H = cfg.n_layers, cfg.n_heads
        N = L * H
        layer = torch.arange(N) // H
        count = (L - 1 - layer) * H  # virtual heads of each sender
        start = 1 + N + count.cumsum(0) - count  # row of each sender's first virtual head
        pairs = []
        for reader in range(H, N):
            senders = torch.arange(reader // H * H)
            pairs.append((reader, senders, start[senders] + reader - (layer[senders] + 1) * H))
        row = 1 + N + int(count.sum())
        mlps = [] if cfg.attn_only else [(row + l, (mlp_name(l),)) for l in range(L)]
        row += len(mlps)
        special = ((0, ("direct",)), *mlps, (row, ("bias",)), (row + 1, ("remainder",)))
        heads = torch.arange(N)
        return TermPlan(tuple(self.paths), special, heads, heads + 1, tuple(pairs))

    def _projected(self, plan: TermPlan, g: torch.Tensor, u: torch.Tensor,
                   bu: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(rows, values [n, batch, pos]) of every term of `plan`, a chunk at a time."""
        H = self.cfg.n_heads
        dot = lambda y: (y * g).sum(-1)  # noqa: E731  [batch, pos]
        for row, path in plan.special:
            kind = path_kind(path)
            if kind == "direct":
                v = dot(self._x0)
            elif kind == "mlp":
                v = dot(self._mlp[int(path[0][1:])])
            elif kind == "bias":  # constants: ln_final.b . (W_U d) + b_U . d
                v = dot(self._bias_resid.expand_as(g)) + (u * self._b_f).sum(-1) + bu
            else:
                v = dot(self._rest)
            yield torch.tensor([row]), v[None]
        layers = plan.heads // H
        for layer in torch.unique(layers).tolist():
            sel = layers == layer
            idx = plan.heads[sel]
            g_o = torch.einsum("bpd,hed->bphe", g, self._W_O(layer)[idx - layer * H])  # [batch, pos, n, d_head]
            yield plan.head_rows[sel], (self._first_z[:, :, idx] * g_o).sum(-1).permute(2, 0, 1)
        for reader, senders, rows in plan.pairs:
            for part, vals in self._pair_values(reader, senders, g):
                yield rows[part], vals

    def _pair_values(self, reader: int, senders: torch.Tensor,
                     g: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
        """Projected virtual heads sender -> reader (flat head indices) without d_model- or d_vocab-sized
        tensors per pair, a chunk of senders at a time: (the chunk's part of `senders`, values [n, batch, q]).

        value[b, q, n] = sum_k A2[b, q, k] (z1[b, k, n] / s2[b, k]) M[n] . g_o[b, q]
        with M[n] = C(W_O[n]) diag(w2) W_V2 [d_head, d_head] and g_o = g W_O2^T [batch, q, d_head].
        """
        cfg = self.cfg
        dh = cfg.d_head
        l2, h2 = divmod(reader, cfg.n_heads)
        b, p = self.tokens.shape
        per_sender = F32 * (3 * b * p * dh + dh * dh + 2 * dh * cfg.d_model)
        limit = chunk_budget()
        require(per_sender, f"the projection of one virtual head on {b} x {p} tokens", limit)
        step = max(1, limit // per_sender)
        g_o = g @ self._W_O(l2)[h2].T  # [batch, q, d_head]
        W_V2 = self._W_V_eff_head(l2, h2)  # [d_model, d_head]
        A2 = self._A[l2][:, h2]  # [batch, q, k]
        s2 = self._s[l2][..., None]  # [batch, k, 1, 1]
        for c0 in range(0, len(senders), step):
            idx = senders[c0:c0 + step]
            z = self._first_z[:, :, idx] / s2  # [batch, k, n, d_head]
            y = (A2 @ z.reshape(b, p, -1)).reshape(b, p, len(idx), dh)  # [batch, q, n, d_head]
            M = self._W_O_c_heads(idx) @ W_V2  # [n, d_head, d_head]
            r = torch.einsum("nae,bqe->bqna", M, g_o)  # [batch, q, n, d_head]
            yield slice(c0, c0 + len(idx)), (y * r).sum(-1).permute(2, 0, 1)

    def _projected_total(self, g: torch.Tensor, u: torch.Tensor, bu: torch.Tensor) -> torch.Tensor:
        """The projected sum of every term [batch, pos], from the summed residuals."""
        y = self._x0 + self._first_total + self._virtual_total + self._rest + self._bias_resid
        if self._mlp:
            y = y + self._mlp_total
        return (y * g).sum(-1) + (u * self._b_f).sum(-1) + bu

    def top_paths(self, k: int = 10, target: Target = "correct", mask: torch.Tensor | None = None,
                  by: str = "mean") -> list[PathScore]:
        """The k strongest terms on a logit direction, averaged over the masked valid positions.

        Equal to `project(target).top(k, mask, by)`, but every term is reduced to its mean and mean |.|
        chunk by chunk as it is projected, so no [n_terms, batch, pos] tensor is held."""
        _check_top(k, by)
        u, bu, valid, _ = self._direction(target)
        m = _positions(valid, mask)
        if not bool(m.any()):
            raise UsageError("no positions selected: the mask and the target's valid positions do not overlap")
        plan = self._plan_all()
        n = len(plan.paths)
        with torch.inference_mode():
            g = self._readout(u)
            means = g.new_empty(n)
            mean_abs = g.new_empty(n)
            for rows, block in self._projected(plan, g, u, bu):
                sel = block[:, m]  # [n, selected positions]
                means[rows] = sel.mean(-1)
                mean_abs[rows] = sel.abs().mean(-1)
        return _ranked(plan.paths, means, mean_abs, k, by)

    # ------------------------------------------------------------------ loss
    def _prediction_mask(self, mask: torch.Tensor | None) -> torch.Tensor:
        b, p = self.tokens.shape
        if mask is None:
            m = torch.ones(b, p, dtype=torch.bool, device=self.tokens.device)
        else:
            m = torch.as_tensor(mask, dtype=torch.bool, device=self.tokens.device)
            if tuple(m.shape) != (b, p):
                raise UsageError(f"mask must have shape [batch={b}, pos={p}], got {list(m.shape)}")
        m = m[:, :-1]  # position i predicts token i+1
        if not bool(m.any()):
            raise UsageError("the mask selects no position that has a next token")
        return m

    def loss(self, logits: torch.Tensor, mask: torch.Tensor | None = None) -> float:
        """Next-token cross-entropy of logits [batch, pos, d_vocab] on the masked positions
        (mask [batch, pos]: True at i to score the prediction of token i+1, like TokenBatch.predictable)."""
        m = self._prediction_mask(mask)
        lp = F.log_softmax(logits[:, :-1].float(), dim=-1)
        nll = -lp.gather(-1, self.tokens[:, 1:, None])[..., 0]
        return float(nll[m].mean())

    def loss_ladder(self, mask: torch.Tensor | None = None) -> list[LadderStep]:
        """Loss keeping only: the direct path (with the bias term), + single heads, + virtual heads,
        + MLPs (models with MLPs), + the remainder (= the model's loss)."""
        rungs = [("direct", ("direct", "bias")), ("+ heads", ("head",)), ("+ virtual heads", ("virtual",))]
        if not self.cfg.attn_only:
            rungs.append(("+ MLPs", ("mlp",)))
        rungs.append(("+ remainder (all)", ("remainder",)))
        kinds: tuple[str, ...] = ()
        out = []
        for name, add in rungs:
            kinds = kinds + add
            out.append(LadderStep(name, kinds, self.loss(self.group_logits(kinds), mask)))
        return out


def decompose(model, tokens, cache=None, logits: torch.Tensor | None = None) -> Decomposition:
    """Split the logits of `model` on `tokens` ([batch, pos] ids or a TokenBatch) into path terms.

    A clean run's `cache` and `logits` on the same tokens are reused when the cache holds
    what the decomposition reads (resid_pre of block 0, patterns, norm scales, MLP outputs);
    otherwise one cached run is made here.
    """
    tokens = getattr(tokens, "tokens", tokens)
    return Decomposition(model, tokens, cache, logits)
