"""The canonical transformer's logits against an independent plain-torch computation.

`reference_forward` re-implements the forward pass with einsums on the state
dict (float64, one head at a time, rotary written per rotation pair), without
calling any of the model's modules. Other test files import it.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import f32_atol, random_model

ATOL64 = 1e-10  # a float64 model against the float64 reference: float64 rounding only
ATOL = 1e-5  # rotary models: their cos/sin tables are float32 in any dtype (float32 rounding of the angles)


def _act(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "gelu":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    if name == "gelu_new":
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if name == "relu":
        return x.clamp(min=0)
    if name == "silu":
        return x / (1.0 + torch.exp(-x))
    raise AssertionError(name)


def _norm(cfg, sd: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    """x [..., d_model] through the norm `prefix` (ln1, ln2, ln_final) as its formula defines it."""
    kind = cfg.normalization
    if kind is None:
        return x
    if kind in ("LN", "LNPre"):
        x = x - x.mean(-1, keepdim=True)
    x = x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.norm_eps)
    if kind in ("LN", "RMS"):
        x = x * sd[prefix + ".w"]
    if kind == "LN":
        x = x + sd[prefix + ".b"]
    return x


def _rotate(cfg, x: torch.Tensor) -> torch.Tensor:
    """Rotary positions on x [batch, pos, d_head]: pair (j, j + rd/2) rotated by pos * base^(-2j/rd)."""
    rd = cfg.rotary_dim or cfg.d_head
    half = rd // 2
    out = x.clone()
    pos = torch.arange(x.shape[1], dtype=torch.float64)
    for j in range(half):
        theta = pos / cfg.rotary_base ** (2 * j / rd)  # [pos]
        c, s = torch.cos(theta)[None], torch.sin(theta)[None]
        a, b = x[..., j], x[..., j + half]
        out[..., j] = a * c - b * s
        out[..., j + half] = b * c + a * s
    return out


def reference_forward(model, tokens: torch.Tensor, head_inputs: dict | None = None) -> torch.Tensor:
    """Logits [batch, pos, d_vocab] (float64) computed from model.state_dict() alone.

    head_inputs maps (layer, "q" | "k" | "v", head) to a residual stream
    [batch, pos, d_model] that this head reads (before ln1) instead of the
    real one.
    """
    cfg = model.cfg
    sd = {k: v.detach().double() for k, v in model.state_dict().items()}
    head_inputs = {k: v.double() for k, v in (head_inputs or {}).items()}
    batch, n = tokens.shape
    x = sd["embed.W_E"][tokens]  # [batch, pos, d_model]
    if cfg.positional == "learned":
        x = x + sd["pos_embed.W_pos"][:n]
    scale = cfg.attn_scale if cfg.attn_scale is not None else math.sqrt(cfg.d_head)
    n_kv = cfg.n_kv_heads or cfg.n_heads
    future = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)  # [q, k]: k > q
    for l in range(cfg.n_layers):
        p = f"blocks.{l}."
        attn = torch.zeros_like(x)
        for h in range(cfg.n_heads):
            g = h // (cfg.n_heads // n_kv)  # the key/value head that query head h shares

            def proj(kind: str, idx: int) -> torch.Tensor:
                resid = head_inputs.get((l, kind, h), x)
                W = sd[f"{p}attn.W_{kind.upper()}"][idx]  # [d_model, d_head]
                out = torch.einsum("bpd,de->bpe", _norm(cfg, sd, p + "ln1", resid), W)
                b = sd.get(f"{p}attn.b_{kind.upper()}")
                return out if b is None else out + b[idx]

            q, k, v = proj("q", h), proj("k", g), proj("v", g)  # [batch, pos, d_head]
            if cfg.positional == "rotary":
                q, k = _rotate(cfg, q), _rotate(cfg, k)
            scores = torch.einsum("bqe,bke->bqk", q, k) / scale
            scores = scores.masked_fill(future, float("-inf"))
            pattern = torch.exp(scores - scores.amax(-1, keepdim=True))
            pattern = pattern / pattern.sum(-1, keepdim=True)
            z = torch.einsum("bqk,bke->bqe", pattern, v)
            attn = attn + torch.einsum("bqe,ed->bqd", z, sd[f"{p}attn.W_O"][h])
        if f"{p}attn.b_O" in sd:
            attn = attn + sd[f"{p}attn.b_O"]

        def mlp(resid: torch.Tensor) -> torch.Tensor:
            hid = _norm(cfg, sd, p + "ln2", resid)
            pre = hid @ sd[f"{p}mlp.W_in"]
            if f"{p}mlp.b_in" in sd:
                pre = pre + sd[f"{p}mlp.b_in"]
            post = _act(cfg.act_fn, hid @ sd[f"{p}mlp.W_gate"]) * pre if cfg.gated_mlp else _act(cfg.act_fn, pre)
            out = post @ sd[f"{p}mlp.W_out"]
            return out + sd[f"{p}mlp.b_out"] if f"{p}mlp.b_out" in sd else out

        if cfg.d_mlp is None:
            x = x + attn
        elif cfg.parallel_attn_mlp:
            x = x + attn + mlp(x)
        else:
            x = x + attn
            x = x + mlp(x)
    W_U = sd["embed.W_E"].T if cfg.tied_embeddings else sd["unembed.W_U"]
    logits = _norm(cfg, sd, "ln_final", x) @ W_U
    return logits + sd["unembed.b_U"] if "unembed.b_U" in sd else logits


CONFIGS = {
    "attn-only, no norm (like the shipped model)": dict(),
    "LayerNorm, GELU MLP, all biases": dict(normalization="LN", d_mlp=48, act_fn="gelu", attn_bias=True,
                                             mlp_bias=True, unembed_bias=True),
    "RMSNorm, partial rotary, gated SiLU, GQA 4/2": dict(normalization="RMS", positional="rotary", rotary_dim=4,
                                                         d_mlp=48, gated_mlp=True, act_fn="silu", n_kv_heads=2),
    "parallel attn+MLP, tied embeddings, gelu_new": dict(normalization="LN", parallel_attn_mlp=True,
                                                         tied_embeddings=True, d_mlp=40, act_fn="gelu_new",
                                                         attn_bias=True, attn_out_bias=False),
    "full rotary, no positions, relu, GQA, 3 layers, attn_scale": dict(
        n_layers=3, normalization="RMS", positional="rotary", d_mlp=24, act_fn="relu", n_kv_heads=2,
        attn_bias=True, mlp_bias=True, attn_scale=2.5),
    "learned positions, LN, attention only, biases": dict(normalization="LN", attn_bias=True, unembed_bias=True),
}


def _tokens(model, batch: int = 3, n: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, model.cfg.d_vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


def _check_against_reference(model, tokens) -> None:
    """The model's logits against the float64 reference: in float32 to float32 rounding of their size,
    and from a float64 copy of the model to ATOL64."""
    with torch.no_grad():
        got = model(tokens)
        got64 = copy.deepcopy(model).double()(tokens)
    want = reference_forward(model, tokens)
    assert got.shape == want.shape and got.dtype == torch.float32 and got64.dtype == torch.float64
    assert want.abs().max() > 1.0  # logits of a real size, so the tolerances mean something
    torch.testing.assert_close(got.double(), want, atol=f32_atol(want), rtol=0)
    torch.testing.assert_close(got64, want, atol=ATOL64 if model.cfg.positional != "rotary" else ATOL, rtol=0)


@pytest.mark.parametrize("overrides", list(CONFIGS.values()), ids=list(CONFIGS))
def test_logits_match_reference(overrides):
    model = random_model(seed=3, **overrides)
    tokens = _tokens(model)
    assert model(tokens).shape == (3, 12, model.cfg.d_vocab)
    _check_against_reference(model, tokens)


def test_reference_is_sensitive():
    """The reference itself must notice a changed weight (guards against a vacuous comparison)."""
    model = random_model(seed=3, **CONFIGS["RMSNorm, partial rotary, gated SiLU, GQA 4/2"])
    tokens = _tokens(model)
    with torch.no_grad():
        before = model(tokens).double()
        model.blocks[1].attn.W_K[1, 0, 0] += 0.05  # kv head 1 serves query heads 2 and 3
    assert (reference_forward(model, tokens) - before).abs().max() > 1e-4


def test_shipped_logits_match_reference(shipped):
    _check_against_reference(shipped, _tokens(shipped, batch=4, n=21, seed=5))


def test_rotary_is_relative():
    """With rotary positions and no learned ones, scores depend only on relative position:
    a sequence shifted right behind a prefix gives the same layer-0 pattern on its own span (no norm)."""
    model = random_model(seed=4, positional="rotary", rotary_dim=6, randomize_all=False)
    tokens = _tokens(model, batch=2, n=8)
    with torch.no_grad():
        _, c1 = model.run_with_cache(tokens, names=["blocks.0.attn.hook_attn_scores"])
        _, c2 = model.run_with_cache(torch.cat([tokens[:, :3], tokens], 1), names=["blocks.0.attn.hook_attn_scores"])
    s1, s2 = c1["blocks.0.attn.hook_attn_scores"], c2["blocks.0.attn.hook_attn_scores"][:, :, 3:, 3:]
    mask = torch.ones(8, 8, dtype=torch.bool).tril()
    torch.testing.assert_close(s1[..., mask], s2[..., mask], atol=1e-5, rtol=1e-5)


def test_stacked_weights_follow_state_dict():
    model = random_model(seed=1, n_kv_heads=2, d_mlp=16, attn_bias=True)
    sd = model.state_dict()
    for l in range(2):
        for h in range(4):
            g = h // 2
            assert torch.equal(model.W_Q[l, h], sd[f"blocks.{l}.attn.W_Q"][h])
            assert torch.equal(model.W_K[l, h], sd[f"blocks.{l}.attn.W_K"][g])
            assert torch.equal(model.b_V[l, h], sd[f"blocks.{l}.attn.b_V"][g])
            ov = torch.einsum("de,ef->df", sd[f"blocks.{l}.attn.W_V"][g], sd[f"blocks.{l}.attn.W_O"][h])
            torch.testing.assert_close(model.W_OV[l, h], ov)
    assert model.W_in.shape == (2, 32, 16)
    # n_params from the shapes: W_E, W_pos, W_U, b_Q/K/V, b_O; per layer Q, O (4 heads) K, V (2 heads), MLP
    d, dh, v, m = 32, 8, 50, 16
    per_layer = 2 * 4 * d * dh + 2 * 2 * d * dh + (4 + 2 + 2) * dh + d + 2 * d * m
    assert model.n_params() == v * d + 32 * d + d * v + 2 * per_layer


def test_split_forward_and_loss():
    model = random_model(seed=2, normalization="LN", d_mlp=16)
    tokens = _tokens(model, batch=2, n=10)
    with torch.no_grad():
        full = model(tokens)
        mid = model(tokens, stop_at_layer=1)  # [batch, pos, d_model]
        resumed = model(tokens, start_at_layer=1, resid=mid)
        per_token = model.loss(tokens, per_token=True)
    assert mid.shape == (2, 10, 32)
    # the same layer on the same input: equal up to float32 rounding of another kernel at most
    torch.testing.assert_close(resumed, full, atol=f32_atol(full), rtol=0)
    lp = torch.log_softmax(full.double(), -1)
    want = -torch.stack([lp[b, i, tokens[b, i + 1]] for b in range(2) for i in range(9)]).view(2, 9)
    torch.testing.assert_close(per_token.double(), want, atol=f32_atol(full), rtol=0)
