"""One head's weights as the end-to-end circuits read them, and the low-rank factors of those circuits.

Normalisation weights are folded in with the transformation of
`circuitry.model.folding` (the one `fold_layer_norm` applies to a whole
model), here applied to the weights of one head only: ln1's weight into
W_Q, W_K, W_V (centred along d_model for LayerNorm), ln_final's weight into
W_U. Biases are left out (the end-to-end matrices are bilinear forms) and the
normalisation scale s(x) is ignored: it depends on the whole residual stream,
so the matrices are what the head computes up to a positive factor per token.

Weights the model applies on top of those (post-norm weights on a head's
output, QK-norm weights on queries and keys, the embedding scale) are folded
in the same way, their scales ignored as well; each such approximation is
named in `HeadWeights.notes`.

The factors (float32, on the device of the embedding):

    Q = W_E W_Q, K = W_E W_K, V = W_E W_V     [d_vocab, d_head]
    O = W_O W_U                               [d_head, d_vocab]
    QK circuit: Q @ K.T [query token, key token]; OV circuit: V @ O [source token, output token]

W_E and W_U are read one vocabulary chunk at a time (`circuitry.budget.chunk_budget`),
so a low-precision model is never cast whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitry.budget import chunk_budget
from circuitry.errors import UsageError
from circuitry.model.folding import _fold

F32 = 4  # bytes of a float32


@dataclass(frozen=True)
class HeadWeights:
    """W_Q, W_K, W_V [d_model, d_head] and W_O [d_head, d_model] of one head (float32), as it reads and
    writes the residual stream; notes: the approximations made."""

    W_Q: torch.Tensor
    W_K: torch.Tensor
    W_V: torch.Tensor
    W_O: torch.Tensor
    notes: tuple[str, ...]


def check_model(model) -> None:
    """A UsageError, with the reason, for a model whose end-to-end circuits are not defined: no token
    embedding W_E [d_vocab, d_model] and unembedding W_U [d_model, d_vocab] over the same vocabulary."""
    cfg = getattr(model, "cfg", None)
    try:
        W_E, W_U = model.W_E, model.W_U
    except AttributeError:
        W_E = W_U = None
    if cfg is None or not isinstance(W_E, torch.Tensor) or not isinstance(W_U, torch.Tensor):
        raise UsageError(f"end-to-end circuits need a model with a token embedding W_E and an unembedding W_U "
                         f"(a HookedTransformer); got {type(model).__name__}")
    V, d = cfg.d_vocab, cfg.d_model
    if tuple(W_E.shape) != (V, d) or tuple(W_U.shape) != (d, V):
        raise UsageError(f"end-to-end circuits need W_E [{V}, {d}] and W_U [{d}, {V}] over one vocabulary; "
                         f"the model has W_E {list(W_E.shape)} and W_U {list(W_U.shape)}")
    if W_E.is_meta or W_U.is_meta:
        raise UsageError("end-to-end circuits need the model's embedding and unembedding weights, and they are "
                         "not loaded (meta tensors)")


def _folded(W: torch.Tensor, norm, d_axis: int) -> torch.Tensor:
    """W with the weight of `norm` folded along `d_axis` (centred for LayerNorm), as fold_layer_norm does."""
    kind = getattr(norm, "kind", None)
    w = getattr(norm, "w", None)
    if kind is None or (w is None and kind not in ("LN", "LNPre")):
        return W
    state = {"W": W}
    ones = torch.ones(W.shape[d_axis], dtype=W.dtype, device=W.device)
    _fold(state, "W", "b", ones if w is None else w.detach().to(W.device, W.dtype), None,
          center=kind in ("LN", "LNPre"), d_axis=d_axis)
    return state["W"]


def _qk_norm_weight(norm, head: int, d_head: int) -> torch.Tensor | None:
    """The weight [d_head] a QK-norm applies to one (query or key/value) head's vector, or None."""
    if norm is None or getattr(norm, "w", None) is None:
        return None
    w = norm.w.detach().float()
    return w if norm.mode == "head" else w.view(-1, d_head)[head]


def head_weights(model, layer: int, head: int) -> HeadWeights:
    """The folded weights of head `head` of `layer` (see the module docstring)."""
    cfg = model.cfg
    block, attn = model.blocks[layer], model.blocks[layer].attn
    kv = head // (cfg.n_heads // cfg.kv_heads)  # the key/value head this query head reads through
    dev = model.W_E.device
    notes = []

    def read(name: str, index: int) -> torch.Tensor:
        W = getattr(attn, name).detach()[index].to(dev, torch.float32)  # [d_model, d_head]
        return _folded(W, block.ln1, d_axis=0)

    W_Q, W_K, W_V = read("W_Q", head), read("W_K", kv), read("W_V", kv)
    W_O = attn.W_O.detach()[head].to(dev, torch.float32)  # [d_head, d_model]
    if cfg.pre_norm_kind is not None:
        notes.append(f"{cfg.pre_norm_kind} weights folded in, the normalisation scale ignored (the matrices hold "
                     f"up to a positive factor per token)")
    if cfg.post_norms:
        W_O = _folded(W_O, block.ln1_post, d_axis=1)
        notes.append("the post-norm weight on the attention output folded into W_O, its scale ignored")
    q_w = _qk_norm_weight(getattr(attn, "q_norm", None), head, cfg.d_head)
    k_w = _qk_norm_weight(getattr(attn, "k_norm", None), kv, cfg.d_head)
    if q_w is not None and k_w is not None:
        W_Q, W_K = W_Q * q_w.to(dev), W_K * k_w.to(dev)
        notes.append("QK-norm weights folded into W_Q and W_K, the QK-norm scales ignored")
    if cfg.positional == "rotary":
        notes.append("rotary positions: the QK circuit is the one of a query and key at the same position "
                     "(no rotation)")
    if cfg.output_logits_soft_cap is not None:
        notes.append("the logit soft cap (monotone) is left out of the OV circuit")
    return HeadWeights(W_Q, W_K, W_V, W_O, tuple(notes))


def _vocab_step(model) -> int:
    """Vocabulary rows of W_E (or columns of W_U) per chunk: a float32 copy of the chunk and its product."""
    return max(1, chunk_budget() // (2 * F32 * model.cfg.d_model))


def embed_factors(model, readers: list[torch.Tensor]) -> list[torch.Tensor]:
    """W_E @ R [d_vocab, d_head] for each reader R [d_model, d_head] (the embedding scale applied), W_E read
    one chunk of the vocabulary at a time."""
    V, step = model.cfg.d_vocab, _vocab_step(model)
    scale = model.cfg.embed_scale or 1.0
    R = torch.cat(readers, dim=1)  # [d_model, n * d_head]
    out = torch.empty(V, R.shape[1], dtype=torch.float32, device=R.device)
    for v0 in range(0, V, step):
        rows = slice(v0, min(V, v0 + step))
        out[rows] = (model.W_E.detach()[rows].to(R.device, torch.float32) * scale) @ R
    return list(out.split([r.shape[1] for r in readers], dim=1))


def unembed_factor(model, W_O: torch.Tensor) -> torch.Tensor:
    """W_O @ W_U [d_head, d_vocab] with ln_final's weight folded into W_U, one chunk of the vocabulary at a time."""
    V, step = model.cfg.d_vocab, _vocab_step(model)
    out = torch.empty(W_O.shape[0], V, dtype=torch.float32, device=W_O.device)
    for v0 in range(0, V, step):
        cols = slice(v0, min(V, v0 + step))
        W_U = model.W_U.detach()[:, cols].to(W_O.device, torch.float32)  # [d_model, chunk]
        out[:, cols] = W_O @ _folded(W_U, model.ln_final, d_axis=0)
    return out


def position_factors(model, hw: HeadWeights) -> tuple[torch.Tensor, torch.Tensor] | str:
    """(W_pos W_Q, W_pos W_K) [n_ctx, d_head] each, or the reason there is no positional QK matrix."""
    positional = model.cfg.positional
    if positional != "learned":
        return (f"the model's positions are {positional}, not a learned position embedding W_pos: "
                "its positional QK is not a matrix of the weights")
    W_pos = model.W_pos.detach().to(hw.W_Q.device, torch.float32)  # [n_ctx, d_model]
    return W_pos @ hw.W_Q, W_pos @ hw.W_K
