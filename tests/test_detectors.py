"""Detectors: values checked against independent computations, and on real models."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import f32_atol, random_model

from circuitry.data import repeated_tokens
from circuitry.model import HookedTransformer
from circuitry.scan import scan


def _data(model, seed=1, seq_len=10, batch=32):
    return repeated_tokens(model.cfg.d_vocab, model.cfg.bos_token_id, batch=batch, seq_len=seq_len, seed=seed)


def _patterns(model, tokens):
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    return [cache[f"blocks.{l}.attn.hook_pattern"] for l in range(model.cfg.n_layers)]


def _loop_scores(model, tokens):
    """Reference scores with explicit Python loops over sequences and positions."""
    pats = _patterns(model, tokens)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    prev = torch.zeros(L, H)
    dup = torch.zeros(L, H)
    ind = torch.zeros(L, H)
    b, n = tokens.shape
    toks = tokens.tolist()
    for l in range(L):
        for h in range(H):
            p_sum, p_n, d_sum, i_sum, q_n = 0.0, 0, 0.0, 0.0, 0
            for s in range(b):
                A = pats[l][s, h]
                for i in range(1, n):
                    p_sum += float(A[i, i - 1])
                    p_n += 1
                    earlier = [j for j in range(i) if toks[s][j] == toks[s][i]]
                    if earlier:
                        q_n += 1
                        d_sum += sum(float(A[i, j]) for j in earlier)
                        i_sum += sum(float(A[i, j + 1]) for j in earlier)
            prev[l, h] = p_sum / p_n
            dup[l, h] = d_sum / q_n
            ind[l, h] = i_sum / q_n
    return prev, dup, ind


def test_attention_detectors_match_loops(shipped):
    batch = _data(shipped, batch=6)
    res = scan(shipped, batch, ["previous_token", "duplicate_token", "induction"])
    prev, dup, ind = _loop_scores(shipped, batch.tokens)
    torch.testing.assert_close(res.heads["previous_token"], prev, atol=1e-5, rtol=0)
    torch.testing.assert_close(res.heads["duplicate_token"], dup, atol=1e-5, rtol=0)
    torch.testing.assert_close(res.heads["induction"], ind, atol=1e-5, rtol=0)


def test_induction_equals_arena_diagonal_when_tokens_distinct(shipped):
    """With distinct tokens in each block, prefix matching is ARENA's pattern.diagonal(1 - L)
    restricted to the queries in the second copy (ARENA's mean also takes in the two queries
    before it, at positions L-1 and L of the first copy)."""
    L = 10
    gen = torch.Generator().manual_seed(3)
    block = torch.stack([torch.randperm(64, generator=gen)[:L] for _ in range(16)])
    tokens = torch.cat([torch.full((16, 1), 64), block, block], dim=1)
    from circuitry.data import TokenBatch

    batch = TokenBatch(tokens, torch.zeros_like(tokens, dtype=torch.bool), torch.zeros_like(tokens, dtype=torch.bool))
    res = scan(shipped, batch, ["induction"])
    pats = _patterns(shipped, tokens)
    for l in range(2):
        diag = pats[l].diagonal(offset=1 - L, dim1=-2, dim2=-1)  # queries L-1 .. 2L
        arena = diag[..., 2:].mean((0, 2))  # queries L+1 .. 2L: the second copy
        torch.testing.assert_close(res.heads["induction"][l], arena, atol=1e-5, rtol=0)


def test_shipped_model_heads(shipped):
    res = scan(shipped, _data(shipped))
    prev, ind = res.heads["previous_token"], res.heads["induction"]
    assert prev[0].max() >= 0.9
    assert ind[1].max() >= 0.5
    assert (ind[1] >= 0.5).sum() >= 2
    # the strongest K-composition edge runs from a previous-token head into an induction head
    K = res.pairs["composition"].scores["K"]
    base = res.pairs["composition"].baseline["K"]
    flat = torch.nan_to_num(K, nan=-1.0)
    l1, h1, l2, h2 = (int(x) for x in torch.unravel_index(flat.argmax(), flat.shape))
    assert prev[l1, h1] >= 0.9, (l1, h1)
    assert ind[l2, h2] >= 0.5, (l2, h2)
    assert K[l1, h1, l2, h2] / base >= 1.5
    # copying: the induction heads copy
    assert (res.heads["copying"][1][ind[1] >= 0.5] > 0.9).all()


def test_random_model_has_no_circuit():
    cfg = dict(d_model=64, n_heads=4, d_head=16, d_vocab=65, n_ctx=64, bos_token_id=64)
    model = HookedTransformer(__import__("conftest").small_config(**cfg), seed=123).eval()
    res = scan(model, _data(model))
    assert res.heads["previous_token"].max() < 0.5
    assert res.heads["induction"].max() < 0.5
    comp = res.pairs["composition"]
    for kind in "QKV":
        s = comp.scores[kind][0, :, 1, :]
        ratio = s / comp.baseline[kind]
        assert ((ratio > 0.8) & (ratio < 1.2)).all(), (kind, ratio)


def _full_comp(W_A, W_B):
    return (W_A @ W_B).norm() / (W_A.norm() * W_B.norm())


@pytest.mark.parametrize("overrides", [{}, {"normalization": "LN", "d_mlp": 64, "attn_bias": True}])
def test_composition_matches_full_products(overrides):
    from circuitry_plugins.detectors.weights import reading_weights

    model = random_model(seed=5, n_layers=3, **overrides)
    res = scan(model, None if False else _data(model), ["composition"])
    comp = res.pairs["composition"].scores
    w = {k: v.double() for k, v in reading_weights(model).items()}
    if overrides.get("normalization") == "LN":  # independent fold: LN weight times W, centred
        ln_w = [b.ln1.w.detach().double() for b in model.blocks]
        for k in ("W_Q", "W_K", "W_V"):
            raw = getattr(model, k).detach().double()
            folded = raw * torch.stack(ln_w)[:, None, :, None]
            want = folded - folded.mean(2, keepdim=True)  # w[k] was folded in float32
            torch.testing.assert_close(w[k], want, atol=f32_atol(want), rtol=0)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    for l1 in range(L):
        for h1 in range(H):
            W_OV1 = w["W_V"][l1, h1] @ w["W_O"][l1, h1]  # d_model x d_model
            for l2 in range(L):
                for h2 in range(H):
                    if l2 <= l1:
                        for k in "QKV":
                            assert math.isnan(comp[k][l1, h1, l2, h2])
                        continue
                    W_QK = w["W_Q"][l2, h2] @ w["W_K"][l2, h2].T
                    W_OV2 = w["W_V"][l2, h2] @ w["W_O"][l2, h2]
                    ref = {"Q": _full_comp(W_OV1, W_QK), "K": _full_comp(W_OV1, W_QK.T),
                           "V": _full_comp(W_OV1, W_OV2)}
                    for k in "QKV":
                        assert abs(float(comp[k][l1, h1, l2, h2]) - float(ref[k])) < 1e-5


def test_composition_baseline_is_about_inverse_sqrt_d_model():
    from circuitry_plugins.detectors.composition import random_baseline

    for d_model, d_head in ((64, 16), (128, 32)):
        assert abs(random_baseline(d_model, d_head) - 1 / math.sqrt(d_model)) < 0.05 / math.sqrt(d_model)


def test_copying_matches_full_vocab_eigenvalues(shipped):
    res = scan(shipped, None if False else _data(shipped), ["copying"])
    for l in range(2):
        for h in range(4):
            full = (shipped.W_E @ shipped.W_V[l, h] @ shipped.W_O[l, h] @ shipped.W_U).detach().double()
            eig = torch.linalg.eigvals(full)
            ref = eig.real.sum() / eig.abs().sum()
            assert abs(float(res.heads["copying"][l, h]) - float(ref)) < 1e-4


def test_copying_sign():
    """A head whose OV circuit is the identity on tokens copies (1); its negation suppresses (-1)."""
    model = random_model(seed=2, randomize_all=False, n_layers=1, n_heads=2, d_model=32, d_head=16)
    with torch.no_grad():
        # W_U = W_E^T-ish and W_V W_O = projection: the full OV circuit W_E W_V W_O W_U is PSD
        model.unembed.W_U.copy_(model.W_E.T)
        V = torch.linalg.qr(torch.randn(32, 16))[0]
        model.blocks[0].attn.W_V.copy_(torch.stack([V, V]))
        model.blocks[0].attn.W_O.copy_(torch.stack([V.T, -V.T]))
    res = scan(model, _data(model), ["copying"])
    assert res.heads["copying"][0, 0] > 0.999
    assert res.heads["copying"][0, 1] < -0.999


def test_zero_head_scores_are_defined():
    """An all-zero head: composition 0 with every partner, copying 0, attention scores those of uniform
    attention (finite), and the other heads' scores unchanged."""
    model = random_model(seed=3, randomize_all=False, n_layers=3, n_heads=3)
    before = scan(model, _data(model, seq_len=8, batch=4))
    with torch.no_grad():
        for name in ("W_Q", "W_K", "W_V", "W_O"):
            getattr(model.blocks[1].attn, name)[2].zero_()
    res = scan(model, _data(model, seq_len=8, batch=4))
    comp, old = res.pairs["composition"].scores, before.pairs["composition"].scores
    L, H = 3, 3
    for kind in "QKV":
        for l1, h1, l2, h2 in ((a, b, c, d) for a in range(L) for b in range(H)
                               for c in range(a + 1, L) for d in range(H)):
            if (l1, h1) == (1, 2) or (l2, h2) == (1, 2):
                assert comp[kind][l1, h1, l2, h2] == 0.0
            else:
                assert comp[kind][l1, h1, l2, h2] == pytest.approx(float(old[kind][l1, h1, l2, h2]), abs=1e-6)
    assert res.heads["copying"][1, 2] == 0.0
    n = 1 + 2 * 8  # BOS + two copies
    uniform_prev = sum(1 / (i + 1) for i in range(1, n)) / (n - 1)
    assert float(res.heads["previous_token"][1, 2]) == pytest.approx(uniform_prev, abs=1e-6)
    for name in ("duplicate_token", "induction"):
        assert torch.isfinite(res.heads[name]).all()


def test_composition_zero_factor_alone():
    """W_V = 0 alone (W_O non-zero) or W_Q = 0 alone makes the factor zero: score 0, not 0/0."""
    from circuitry_plugins.detectors.composition import pair_scores, unit

    A = torch.randn(2, 4, 16)
    A[1] = 0
    C = torch.randn(3, 16, 4)
    C[0] = 0
    s = pair_scores(A, C)
    assert torch.isfinite(s).all() and (s[1] == 0).all() and (s[:, 0] == 0).all()
    ref = (A[0] @ C[2]).norm() / (A[0].norm() * C[2].norm())
    assert float(s[0, 2]) == pytest.approx(float(ref), rel=1e-5)
    assert (unit(torch.zeros(3, 3)) == 0).all()
