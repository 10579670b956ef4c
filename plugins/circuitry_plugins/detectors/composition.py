"""Q-, K- and V-composition scores (Elhage et al.) for every pair of heads in different layers.

comp(W_A, W_B) = ||W_A W_B||_F / (||W_A||_F ||W_B||_F), with the earlier head's
W_A = W_OV = W_V W_O and, for the later head, W_B = W_QK = W_Q W_K^T
(Q-composition), W_QK^T (K-composition) or its W_OV (V-composition); row
convention, normalisation weights folded in.

Nothing of size d_model x d_model is formed. Every factor pair is reduced to
d_head x d_head: with W_V = Q_V R_V (thin QR, Q_V orthonormal columns),
||W_V W_O X|| = ||R_V W_O X||, and likewise on the right, so each pair's score
is the Frobenius norm of one d_head x d_head product. R is computed as the
Cholesky factor of the Gram matrix W^T W formed in float64 (R^T R = W^T W is
all the norms need; the QR's R up to signs), which is many times faster than a
Householder QR of a tall matrix; a rank-deficient W falls back to the QR. The baseline is the mean
score of random Gaussian factors of the same shapes (about 1/sqrt(d_model)).

Memory: the scores are computed in blocks of (writer heads, reader heads),
each block one matrix product [writers x d_head, d_model] @ [d_model, readers x
d_head] in float32, whatever the model's dtype: only the weights of the heads of
a block are cast, so the peak does not grow with the number of layers (but for
the d_head x d_head factors R_V of every key/value head, kept for every block). Block
sizes follow `circuitry.budget.chunk_budget()`. With grouped-query attention a
key or value matrix enters the product once per key/value head; the per-head
factor (R of the head's W_Q or W_O^T) is applied afterwards to the d_head x
d_head products, so no key/value weight is copied per query head.

A zero matrix composes with nothing: when W_A or W_B is zero (an all-zero
head, as tracr pads layers with or pruning leaves behind; also W_V or W_O
alone zero) the score is defined as 0.0 rather than 0/0. Each factor is
divided by its own norm before the product is formed (a zero factor stays
zero), so scores are finite for finite weights and do not depend on the
heads' scale; the tensor entries with l1 >= l2 (no such edge) are NaN.

A model whose keys read only the embeddings (`ModelConfig.key_input`
"embeddings", `circuitry train --block-k-composition`): nothing an earlier
head writes reaches the keys of a later one, so every K score is 0.0 (the
path is structurally zero; the residual graph has no such K edge). Smeared
keys (`ModelConfig.smeared_keys`) read both positions through the same W_K,
so the K score keeps its formula and measures what the writer's output
means to the keys at either position.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from circuitry.budget import chunk_budget, require
from circuitry.records import PairScores
from circuitry_plugins.detectors.weights import head_weights, kv_group

KINDS = ("Q", "K", "V")
F32 = 4  # bytes of a float32


def _r(W: torch.Tensor) -> torch.Tensor:
    """R [..., d_head, d_head], upper triangular with R^T R = W^T W, of W [..., d_model, d_head] (the R of
    its thin QR up to signs): the Cholesky factor of the float64 Gram matrix, or the QR where W has
    deficient rank (a zero head). In W's dtype."""
    W64 = W.double()
    chol, info = torch.linalg.cholesky_ex(W64.mT @ W64)
    R = chol.mT
    singular = info != 0
    if bool(singular.any()):
        R[singular] = torch.linalg.qr(W64[singular], mode="r")[1]
    return R.to(W.dtype)


def writer_factors(W_V: torch.Tensor, W_O: torch.Tensor) -> torch.Tensor:
    """A = R_V W_O [..., d_head, d_model] with ||A X|| = ||W_V W_O X|| for every X."""
    return _r(W_V) @ W_O


def reader_factors(W_left: torch.Tensor, W_right: torch.Tensor) -> torch.Tensor:
    """C = W_left R_right^T [..., d_model, d_head] with ||X C|| = ||X W_left W_right^T||."""
    return W_left @ _r(W_right).transpose(-1, -2)


def _inverse_norm(norm: torch.Tensor) -> torch.Tensor:
    """1 / norm, and 0 where the norm is 0 (a zero matrix scores 0 with every partner)."""
    return torch.where(norm > 0, 1 / norm.clamp_min(torch.finfo(norm.dtype).tiny), torch.zeros_like(norm))


def unit(M: torch.Tensor) -> torch.Tensor:
    """M [..., a, b] divided by its Frobenius norm; a zero matrix stays zero (so its scores are 0)."""
    return M * _inverse_norm(M.flatten(-2).norm(dim=-1))[..., None, None]


def pair_scores(A: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """comp for every writer i and reader j: A [i, d_head, d_model], C [j, d_model, d_head] -> [i, j];
    0 where either factor is a zero matrix."""
    prod = torch.einsum("ied,jdf->ijef", unit(A), unit(C))
    return prod.flatten(-2).norm(dim=-1)


# ------------------------------------------------------------------ blocks
@dataclass(frozen=True)
class Readers:
    """The reading side of one kind for a block of reader heads (float32).

    core [d_model, n_core * d_head]: the reader matrices side by side (W_Q per query head, or W_K /
    W_V per key/value head); post [n, d_head, d_head] or None: the per-head right factor applied to
    the product with core matrix group[n] (None: already applied, core matrix i is head i's);
    scale [n]: 1 / ||W_B|| of each head (0 for a zero matrix).
    """

    core: torch.Tensor
    post: torch.Tensor | None
    group: torch.Tensor
    scale: torch.Tensor

    def tail(self, first: int) -> "Readers":
        """The readers from the block's head `first` on (the first head of a key/value group); views."""
        if first == 0:
            return self
        g = int(self.group[first])
        dh = self.core.shape[1] // (int(self.group[-1]) + 1)
        post = None if self.post is None else self.post[first:]
        return Readers(self.core[:, g * dh:], post, self.group[first:] - g, self.scale[first:])


def _pieces(start: int, stop: int, n_heads: int) -> list[tuple[int, int, int]]:
    """(layer, first head, end head) of each layer's part of the flat head range [start, stop)."""
    out = []
    i = start
    while i < stop:
        layer, h0 = divmod(i, n_heads)
        h1 = min(n_heads, h0 + stop - i)
        out.append((layer, h0, h1))
        i += h1 - h0
    return out


def value_factors(model, budget: int | None = None) -> list[torch.Tensor]:
    """R_V [kv_head, d_head, d_head] (float32) of every layer: computed once, used by every block; a few
    key/value heads at a time (W_V in float32 and float64, 12 bytes an entry)."""
    cfg = model.cfg
    per_head = 12 * cfg.d_model * cfg.d_head
    step = max(1, _chunk_limit(per_head, "composition scores (one head's W_V)", budget) // per_head)
    return [torch.cat([_r(head_weights(model, "W_V", layer, slice(g, g + step)))
                       for g in range(0, cfg.kv_heads, step)]) for layer in range(cfg.n_layers)]


def writer_block(model, start: int, stop: int, r_v: list[torch.Tensor]) -> torch.Tensor:
    """unit(R_V W_O) [n, d_head, d_model] (float32) of the flat heads [start, stop) (layer * n_heads + head);
    r_v: `value_factors(model)`."""
    rep = kv_group(model)
    parts = []
    for layer, h0, h1 in _pieces(start, stop, model.cfg.n_heads):
        R_V = r_v[layer][torch.arange(h0, h1) // rep]  # [n, d_head, d_head]
        parts.append(R_V @ head_weights(model, "W_O", layer, slice(h0, h1)))
    return unit(torch.cat(parts))


def reader_block(model, start: int, stop: int, r_v: list[torch.Tensor]) -> dict[str, Readers]:
    """The Q, K and V reading sides of the flat heads [start, stop), which cover whole key/value groups;
    r_v: `value_factors(model)`."""
    rep = kv_group(model)
    acc: dict[str, dict[str, list[torch.Tensor]]] = {
        k: {"core": [], "post": [], "norm": [], "group": []} for k in KINDS}
    n_core = {k: 0 for k in KINDS}
    for layer, h0, h1 in _pieces(start, stop, model.cfg.n_heads):
        g0, g1 = h0 // rep, (h1 - 1) // rep + 1
        grp = torch.arange(h0, h1) // rep - g0  # [n] the key/value head of each query head in this piece
        W_Q = head_weights(model, "W_Q", layer, slice(h0, h1))  # [n, d_model, d_head]
        W_K = head_weights(model, "W_K", layer, slice(g0, g1))  # [g, d_model, d_head]
        W_V = head_weights(model, "W_V", layer, slice(g0, g1))
        R_Q, R_K, R_V = _r(W_Q), _r(W_K), r_v[layer][g0:g1]
        R_OT = _r(head_weights(model, "W_O", layer, slice(h0, h1)).transpose(-1, -2))  # [n, d_head, d_head]
        # per head: W_B = core[group] right^T, ||W_B|| = ||R(core)[group] right^T|| (d_head x d_head)
        sides = {"Q": (W_Q, R_K[grp], R_Q, torch.arange(h1 - h0)), "K": (W_K, R_Q, R_K, grp),
                 "V": (W_V, R_OT, R_V, grp)}
        del W_Q, W_K, W_V
        for kind, (core, right, r_core, group) in sides.items():
            post = right.transpose(-1, -2)
            acc[kind]["norm"].append((r_core[group] @ post).flatten(-2).norm(dim=-1))
            acc[kind]["post"].append(post)
            acc[kind]["core"].append(core)
            acc[kind]["group"].append(group + n_core[kind])
            n_core[kind] += len(core)
    out = {}
    for kind, a in acc.items():
        core = torch.cat(a["core"])  # [n_core, d_model, d_head]
        post = torch.cat(a["post"])  # [n, d_head, d_head]
        group = torch.cat(a["group"])  # [n]
        per_head = len(core) == len(group)  # core matrix i is head i's
        if per_head:
            core = core @ post  # the right factor applied now, once per head
        layout = core.permute(1, 0, 2).reshape(core.shape[1], -1)  # [d_model, n_core * d_head]
        del core
        out[kind] = Readers(layout, None if per_head else post, group, _inverse_norm(torch.cat(a["norm"])))
    return out


def block_scores(A: torch.Tensor, readers: Readers) -> torch.Tensor:
    """Scores [writers, readers] of unit writer factors A [n_w, d_head, d_model] with one kind's readers."""
    n_w, dh, _ = A.shape
    prod = (A.reshape(n_w * dh, -1) @ readers.core).reshape(n_w, dh, -1, dh)  # [n_w, d_head, n_core, d_head]
    prod = prod.permute(0, 2, 1, 3)  # [n_w, n_core, d_head, d_head]
    if readers.post is not None:
        prod = prod[:, readers.group] @ readers.post  # [n_w, n_readers, d_head, d_head]
    return torch.linalg.vector_norm(prod, dim=(-2, -1)) * readers.scale


def block_bytes(cfg, n_writers: int, n_readers: int) -> int:
    """Working memory of one block of n_writers x n_readers heads (float32, with temporaries)."""
    d, dh = cfg.d_model, cfg.d_head
    return F32 * (6 * n_writers * d * dh + 10 * n_readers * d * dh + 3 * n_writers * n_readers * dh * dh)


def _chunk_limit(least: int, what: str, budget: int | None) -> int:
    """Bytes one chunk may use (`budget`, else `chunk_budget()`); a UsageError when `least` bytes, what
    the smallest chunk needs, are over it."""
    limit = chunk_budget() if budget is None else budget
    require(least, what, limit)
    return limit


def block_sizes(cfg, budget: int | None = None) -> tuple[int, int]:
    """(writer heads, reader heads) per block: as many as fit the chunk limit (`_chunk_limit`);
    reader blocks cover whole key/value groups."""
    rep = cfg.n_heads // cfg.kv_heads
    limit = _chunk_limit(block_bytes(cfg, 1, rep), "composition scores (one head against one key/value "
                                                   "group of heads)", budget)
    n = cfg.n_layers * cfg.n_heads
    w, r = n, n
    while block_bytes(cfg, w, r) > limit:
        if (w > 1 and 2 * w >= r) or r <= rep:  # halve the writers, unless the readers are many more
            w = (w + 1) // 2
        else:
            r = max(rep, (r // 2 + rep - 1) // rep * rep)
    return w, r


def composition_scores(model, budget: int | None = None) -> dict[str, torch.Tensor]:
    """kind -> [layer, head, layer, head] scores from (l1, h1) to (l2, h2); NaN unless l1 < l2
    (0 for a pair where either head's matrix is zero, and K scores 0 when the keys read only the embeddings).
    Float32, computed block by block (see the module docstring); `budget` (bytes) overrides the memory budget."""
    cfg = model.cfg
    L, H = cfg.n_layers, cfg.n_heads
    n = L * H
    w_size, r_size = block_sizes(cfg, budget)
    flat = {k: torch.full((n, n), float("nan")) for k in KINDS}  # [writer, reader] in flat head order
    with torch.inference_mode():
        r_v = value_factors(model, budget)
        for r0 in range(H, n, r_size):
            r1 = min(n, r0 + r_size)
            readers = reader_block(model, r0, r1, r_v)
            w_end = ((r1 - 1) // H) * H  # writers in layers before the block's last reader layer
            for w0 in range(0, w_end, w_size):
                w1 = min(w_end, w0 + w_size)
                A = writer_block(model, w0, w1, r_v)
                first = max(r0, (w0 // H + 1) * H)  # readers after the block's first writer layer
                for kind in KINDS:
                    flat[kind][w0:w1, first:r1] = block_scores(A, readers[kind].tail(first - r0)).cpu()
                del A
            del readers
    layer = torch.arange(n) // H
    later = layer[:, None] < layer[None, :]  # [writer, reader]: an edge exists
    if cfg.key_input == "embeddings":  # the keys of every reader (layer >= 1) read only the embeddings
        flat["K"] = torch.zeros_like(flat["K"])
    return {k: torch.where(later, s, torch.nan).reshape(L, H, L, H) for k, s in flat.items()}


# ---------------------------------------------------------------- baseline
def baseline_chunk(d_model: int, d_head: int, budget: int | None = None) -> int:
    """Samples per chunk of the random baseline (its factors and products in float32)."""
    per_sample = 12 * F32 * d_model * d_head
    return max(1, _chunk_limit(per_sample, "the random composition baseline (one sample)", budget) // per_sample)


def sample_baseline(d_model: int, d_head: int, samples: int = 200, seed: int = 0,
                    chunk: int | None = None) -> float:
    """Mean comp score of `samples` random rank-d_head factor pairs W_A = A_l A_r^T, W_B = B_l B_r^T.

    The four factors are drawn one after another from one generator, each [samples, d_model, d_head];
    they are processed `chunk` samples at a time (the generator's state is recorded at every chunk
    and restored), so the value does not depend on the chunk size."""
    chunk = chunk or baseline_chunk(d_model, d_head)
    gen = torch.Generator().manual_seed(seed)
    bounds = [(s, min(samples, s + chunk)) for s in range(0, samples, chunk)]
    states = []  # states[f][c]: where factor f's chunk c starts in the stream
    for _ in range(4):
        row = []
        for s0, s1 in bounds:
            row.append(gen.get_state())
            torch.randn(s1 - s0, d_model, d_head, generator=gen)  # advances the stream only
        states.append(row)
    scores = []
    for c, (s0, s1) in enumerate(bounds):
        f = []
        for row in states:
            gen.set_state(row[c])
            f.append(torch.randn(s1 - s0, d_model, d_head, generator=gen))
        A = writer_factors(f[0], f[1].transpose(-1, -2))  # W_A = A_l A_r^T
        C = reader_factors(f[2], f[3])  # W_B = B_l B_r^T
        del f
        scores.append((unit(A) @ unit(C)).flatten(-2).norm(dim=-1))
    return float(torch.cat(scores).mean())


@lru_cache(maxsize=16)
def random_baseline(d_model: int, d_head: int, samples: int = 200, seed: int = 0) -> float:
    """Mean comp score of random rank-d_head factors (`sample_baseline`), cached."""
    return sample_baseline(d_model, d_head, samples, seed)


def composition(inp) -> PairScores:
    model = inp.model
    scores = composition_scores(model)
    base = random_baseline(model.cfg.d_model, model.cfg.d_head)
    return PairScores(scores, {k: base for k in KINDS})
