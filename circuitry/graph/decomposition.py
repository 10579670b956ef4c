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

A projection onto a logit direction (`project`) never forms a [batch, pos,
d_vocab] tensor per term: the direction is pulled back through W_U and the
final norm into a readout vector g [batch, pos, d_model], and for virtual heads
further through W_O and W_V into d_head-sized factors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from circuitry.budget import require, run_bytes
from circuitry.errors import InputError, UsageError
from circuitry.graph.paths import Path, format_path, parse_path, path_kind
from circuitry.names import head_index, head_name, mlp_name

Target = str | int | tuple[int, int] | torch.Tensor  # what a projection explains (see Decomposition.project)


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
    """Every term projected on one logit direction.

    values [n_terms, batch, pos]: values[i] is the term `paths[i]` projected;
    valid [batch, pos]: positions where the target is defined (the last
    position has no next token for target "correct"; values there are 0).
    """

    paths: tuple[Path, ...]
    values: torch.Tensor
    valid: torch.Tensor
    target: str

    def __getitem__(self, path: Path | str) -> torch.Tensor:
        key = tuple(path) if not isinstance(path, str) else _loose(path)
        try:
            return self.values[self.paths.index(key)]
        except ValueError:
            raise UsageError(f"path {path!r} is not among the {len(self.paths)} projected terms") from None

    def total(self) -> torch.Tensor:
        """The projected logits [batch, pos]: the sum of every term."""
        return self.values.sum(0)

    def _mask(self, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            return self.valid
        mask = torch.as_tensor(mask, dtype=torch.bool, device=self.valid.device)
        if mask.shape != self.valid.shape:
            raise UsageError(f"mask must have shape {list(self.valid.shape)} [batch, pos], got {list(mask.shape)}")
        return mask & self.valid

    def mean(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of each term over the masked valid positions [n_terms]."""
        m = self._mask(mask)
        if not bool(m.any()):
            raise UsageError("no positions selected: the mask and the target's valid positions do not overlap")
        return self.values[:, m].mean(-1)

    def top(self, k: int = 10, mask: torch.Tensor | None = None, by: str = "mean") -> list[PathScore]:
        """The k terms with the largest mean (by="mean"), |mean| ("abs") or mean |value| ("mean_abs")."""
        if by not in ("mean", "abs", "mean_abs"):
            raise UsageError(f"top: by must be 'mean', 'abs' or 'mean_abs', got {by!r}")
        if k < 1:
            raise UsageError(f"top: k must be >= 1, got {k}")
        m = self._mask(mask)
        means = self.mean(m)
        mean_abs = self.values[:, m].abs().mean(-1)
        key = {"mean": means, "abs": means.abs(), "mean_abs": mean_abs}[by]
        order = torch.argsort(key, descending=True)[:k].tolist()
        return [PathScore(self.paths[i], path_kind(self.paths[i]), float(means[i]), float(mean_abs[i]))
                for i in order]


def _loose(text: str) -> Path:
    import re

    return tuple(p for p in re.split(r"\s*(?:->|>|,)\s*", text.strip()) if p)


def decomposition_bytes(cfg, batch: int, pos: int) -> int:
    """Bytes a decomposition of batch x pos tokens holds: a cached run, and every head's output
    [batch, pos, head, d_model] per layer while propagating (float32)."""
    return run_bytes(cfg, batch, pos) + 4 * int(batch) * int(pos) * cfg.n_layers * cfg.n_heads * cfg.d_model


class Decomposition:
    """The logits of one cached run as a sum of path terms (see the module docstring).

    Built by `decompose(model, tokens)`. `paths` lists every term; `term(path)`
    is one term's logits [batch, pos, d_vocab]; `project(target)` all terms on
    one logit direction; `top_paths(k)`; `loss_ladder(mask)`.
    """

    def __init__(self, model, tokens: torch.Tensor, cache=None, logits: torch.Tensor | None = None) -> None:
        cfg = model.cfg
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
        self._W_V = m.W_V.detach()  # [layer, head, d_model, d_head]
        self._W_O = m.W_O.detach()  # [layer, head, d_head, d_model]
        self._W_U = m.W_U.detach()  # [d_model, d_vocab]
        self._b_U = m.b_U.detach()  # [d_vocab]
        w1, b1 = zip(*(self._norm_parts(block.ln1) for block in m.blocks))
        self._w1 = torch.stack(w1)  # [layer, d_model]
        self._W_V_eff = self._W_V * self._w1[:, None, :, None]  # ln1.w folded in
        self._w_f, self._b_f = self._norm_parts(m.ln_final)
        # constant output of each attention layer [layer, d_model]
        bias_v = torch.einsum("ld,lhde->lhe", torch.stack(b1), self._W_V) + m.b_V.detach()
        self._beta = torch.einsum("lhe,lhed->ld", bias_v, self._W_O) + m.b_O.detach()
        self._W_O_c = self._W_O - self._W_O.mean(-1, keepdim=True) if self._centre else self._W_O
        self._n_layers = L

    def _c(self, y: torch.Tensor) -> torch.Tensor:
        return y - y.mean(-1, keepdim=True) if self._centre else y

    def _heads_z(self, layer: int, y: torch.Tensor) -> torch.Tensor:
        """z [batch, pos, head, d_head] of every head of `layer` reading y [batch, pos, d_model] as value input."""
        v = torch.einsum("bpd,hde->bphe", self._c(y) / self._s[layer], self._W_V_eff[layer])
        return torch.einsum("bhqk,bkhe->bqhe", self._A[layer], v)

    def _out(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """Summed output [batch, pos, d_model] of z [batch, pos, head, d_head]."""
        return torch.einsum("bqhe,hed->bqd", z, self._W_O[layer])

    def _propagate(self) -> None:
        """First-order z per layer, the summed virtual-head output, the remainder residual."""
        x0 = self._x0
        zero = torch.zeros_like(x0)
        s1, virtual, rest, mlps, bias = zero, zero, zero, zero, torch.zeros_like(x0[0, 0])
        self._z1: list[torch.Tensor] = []
        for layer in range(self._n_layers):
            z1 = self._heads_z(layer, x0)  # [batch, pos, head, d_head]
            self._z1.append(z1)
            second = self._out(layer, self._heads_z(layer, s1)) if layer else zero
            higher = virtual + rest + mlps + bias
            higher_out = self._out(layer, self._heads_z(layer, higher)) if layer else zero
            s1 = s1 + self._out(layer, z1)
            virtual = virtual + second
            rest = rest + higher_out
            bias = bias + self._beta[layer]
            if self._mlp:
                mlps = mlps + self._mlp[layer]
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
            if kind == "head":
                l, h = head_index(path[0])
                return self._z1[l][:, :, h] @ self._W_O[l, h]
            if kind == "virtual":
                (l1, h1), (l2, h2) = head_index(path[0]), head_index(path[1])
                y1 = self._z1[l1][:, :, h1] @ self._W_O[l1, h1]  # [batch, pos, d_model]
                v = (self._c(y1) / self._s[l2]) @ self._W_V_eff[l2, h2]  # [batch, pos, d_head]
                return (self._A[l2][:, h2] @ v) @ self._W_O[l2, h2]
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

    def project(self, target: Target = "correct") -> Projection:
        """Every term projected on a logit direction, as a `Projection` [n_terms, batch, pos].

        target: "correct" (the logit of the next token; the last position is
        not valid), a token id, a pair (a, b) for logit[a] - logit[b], a float
        tensor [d_vocab], token ids [batch, pos] or float directions [batch, pos, d_vocab].
        """
        u, bu, valid, desc = self._direction(target)
        cfg = self.cfg
        L, H = cfg.n_layers, cfg.n_heads
        with torch.inference_mode():
            # readout vector: U(y) . d = y . g with g = C(w_f * u) / s_f
            g = self._c(self._w_f * u) / self._s_f  # [batch, pos, d_model]
            dot = lambda y: (y * g).sum(-1)  # noqa: E731  [batch, pos]
            values: dict[Path, torch.Tensor] = {("direct",): dot(self._x0)}
            g_o = [torch.einsum("bpd,hed->bphe", g, self._W_O[l]) for l in range(L)]  # [b, p, head, d_head]
            for l in range(L):
                per_head = (self._z1[l] * g_o[l]).sum(-1)  # [batch, pos, head]
                for h in range(H):
                    values[(head_name(l, h),)] = per_head[..., h]
            pair_values = self._project_pairs(g_o)
            for l, mlp_out in enumerate(self._mlp):
                values[(mlp_name(l),)] = dot(mlp_out)
            # constants: ln_final.b . (W_U d) + b_U . d
            values[("bias",)] = dot(self._bias_resid.expand_as(g)) + (u * self._b_f).sum(-1) + bu
            values[("remainder",)] = dot(self._rest)
            values.update(pair_values)
            paths = tuple(self.paths)
            stacked = torch.stack([values[p] for p in paths])  # [n_terms, batch, pos]
        return Projection(paths, stacked, valid, desc)

    def _project_pairs(self, g_o: list[torch.Tensor]) -> dict[Path, torch.Tensor]:
        """Projected virtual heads without d_model- or d_vocab-sized tensors per pair.

        For reader head (l2, h2) and all earlier heads n at once:
        value[b, q, n] = sum_k A2[b, q, k] (z1[b, k, n] / s2[b, k]) M[n, h2] . g_o[b, q, h2]
        with M = C(W_O1) diag(w2) W_V2 [d_head, d_head].
        """
        cfg = self.cfg
        H, dh = cfg.n_heads, cfg.d_head
        out: dict[Path, torch.Tensor] = {}
        for l2 in range(1, cfg.n_layers):
            n1 = l2 * H
            z = torch.cat(self._z1[:l2], dim=2) / self._s[l2][..., None]  # [batch, pos, n1, d_head]
            b, p = z.shape[:2]
            z_flat = z.reshape(b, p, n1 * dh)
            w_o = self._W_O_c[:l2].reshape(n1, dh, -1)  # [n1, d_head, d_model]
            M = torch.einsum("nad,hde->hnae", w_o, self._W_V_eff[l2])  # [head2, n1, d_head, d_head]
            for h2 in range(H):
                r = torch.einsum("nae,bqe->bqna", M[h2], g_o[l2][:, :, h2])  # [batch, q, n1, d_head]
                y = (self._A[l2][:, h2] @ z_flat).reshape(b, p, n1, dh)  # [batch, q, n1, d_head]
                vals = (y * r).sum(-1)  # [batch, q, n1]
                for n in range(n1):
                    out[(head_name(n // H, n % H), head_name(l2, h2))] = vals[..., n]
        return out

    def top_paths(self, k: int = 10, target: Target = "correct", mask: torch.Tensor | None = None,
                  by: str = "mean") -> list[PathScore]:
        """The k strongest terms on a logit direction, averaged over the masked positions."""
        return self.project(target).top(k, mask=mask, by=by)

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
