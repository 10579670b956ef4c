"""The path decomposition: exact sums, terms checked by hand, projections, the loss ladder, bad paths."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import random_model

from circuitry.data import repeated_tokens
from circuitry.errors import UsageError
from circuitry.graph import decompose, parse_path

SEQ = 10


@pytest.fixture(scope="module")
def batch(shipped):
    cfg = shipped.cfg
    return repeated_tokens(cfg.d_vocab, cfg.bos_token_id, batch=16, seq_len=SEQ, n_repeats=2, seed=0)


@pytest.fixture(scope="module")
def dec(shipped, batch):
    return decompose(shipped, batch)


def plain_logits(model, tokens):
    with torch.no_grad():
        return model(tokens)


def sum_of_terms(d):
    total = None
    for _, logits in d.terms():
        total = logits if total is None else total + logits
    return total


# --------------------------------------------------------------- exact sums
def test_shipped_terms_sum_to_logits(shipped, batch, dec):
    # 1 direct + 8 heads + 16 pairs + bias + remainder
    assert len(dec.paths) == 1 + 8 + 16 + 2
    logits = plain_logits(shipped, batch.tokens)
    assert (sum_of_terms(dec) - logits).abs().max().item() < 1e-4
    assert (dec.total() - logits).abs().max().item() < 1e-4
    # two attention-only layers without biases: no paths of higher order, no bias
    assert dec.term("remainder").abs().max().item() == 0.0
    assert dec.term("bias").abs().max().item() == 0.0


@pytest.mark.parametrize("overrides", [
    dict(normalization="LN", d_mlp=64, attn_bias=True, mlp_bias=True, unembed_bias=True),
    dict(normalization="RMS", d_mlp=64, mlp_bias=True, unembed_bias=True),
    dict(normalization="LN", d_mlp=64, n_layers=3, parallel_attn_mlp=True, attn_bias=True, act_fn="gelu_new"),
    dict(normalization="LNPre", n_layers=3, positional="rotary", n_kv_heads=2, attn_bias=True),
    dict(normalization="RMS", d_mlp=48, gated_mlp=True, act_fn="silu", positional="none", n_layers=3),
], ids=["LN-mlp-biases", "RMS-mlp", "LN-parallel-3l", "LNPre-rotary-gqa", "RMS-gated-3l"])
def test_random_models_terms_sum_to_logits(overrides):
    model = random_model(seed=3, **overrides)
    tokens = torch.randint(0, model.cfg.d_vocab, (4, 13), generator=torch.Generator().manual_seed(0))
    d = decompose(model, tokens)
    logits = plain_logits(model, tokens)
    assert (sum_of_terms(d) - logits).abs().max().item() < 1e-4
    # the remainder and the bias term are real parts of the sum here, not zero
    assert d.term("remainder").abs().max().item() > 1e-2
    if overrides.get("attn_bias") or overrides.get("unembed_bias"):
        assert d.term("bias").abs().max().item() > 1e-2


def test_remainder_is_the_three_head_paths():
    """3 attention-only layers, no norm, no biases: remainder = sum of all L0 -> L1 -> L2 head chains."""
    model = random_model(seed=5, n_layers=3)
    tokens = torch.randint(0, 49, (3, 9), generator=torch.Generator().manual_seed(1))
    _, cache = model.run_with_cache(tokens)
    x0 = model.W_E[tokens] + model.W_pos[: tokens.shape[1]]
    ov = model.W_OV.detach()  # [layer, head, d_model, d_model]
    H = model.cfg.n_heads
    chains = torch.zeros_like(x0)
    with torch.no_grad():
        for h0 in range(H):
            y0 = cache["pattern", 0][:, h0] @ x0 @ ov[0, h0]
            for h1 in range(H):
                y1 = cache["pattern", 1][:, h1] @ y0 @ ov[1, h1]
                for h2 in range(H):
                    chains += cache["pattern", 2][:, h2] @ y1 @ ov[2, h2]
        expected = chains @ model.W_U
    d = decompose(model, tokens)
    assert (d.term("remainder") - expected).abs().max().item() < 1e-4
    assert expected.abs().max().item() > 1e-2


# -------------------------------------------------------- terms by hand
def test_single_and_virtual_head_by_hand(shipped, batch, dec):
    tokens = batch.tokens
    _, cache = shipped.run_with_cache(tokens)
    with torch.no_grad():
        x0 = shipped.W_E[tokens] + shipped.W_pos[: tokens.shape[1]]  # [batch, pos, d_model]
        A0, A1 = cache["pattern", 0], cache["pattern", 1]  # [batch, head, q, k]
        W_V, W_O, W_U = shipped.W_V, shipped.W_O, shipped.W_U
        single = A1[:, 3] @ x0 @ W_V[1, 3] @ W_O[1, 3] @ W_U
        virtual = A1[:, 3] @ (A0[:, 0] @ x0 @ W_V[0, 0] @ W_O[0, 0]) @ W_V[1, 3] @ W_O[1, 3] @ W_U
        layer0 = A0[:, 2] @ x0 @ W_V[0, 2] @ W_O[0, 2] @ W_U
    assert (dec.term(("L1H3",)) - single).abs().max().item() < 1e-4
    assert (dec.term(("L0H0", "L1H3")) - virtual).abs().max().item() < 1e-4
    assert (dec.term("L0H2") - layer0).abs().max().item() < 1e-4
    assert single.abs().max().item() > 1.0 and virtual.abs().max().item() > 0.1


def test_layernorm_head_term_by_hand():
    model = random_model(seed=7, normalization="LN", d_mlp=64, attn_bias=True, mlp_bias=True, unembed_bias=True)
    tokens = torch.randint(0, 49, (2, 11), generator=torch.Generator().manual_seed(2))
    _, cache = model.run_with_cache(tokens)
    with torch.no_grad():
        x0 = model.W_E[tokens] + model.W_pos[: tokens.shape[1]]
        ln1, lnf = model.blocks[1].ln1, model.ln_final

        def final(y):  # linear part of ln_final, then W_U
            return ((y - y.mean(-1, keepdim=True)) / cache["ln_final.hook_scale"] * lnf.w) @ model.W_U

        def head_out(layer, head, y):  # linear part of a head reading y as value input
            ln = model.blocks[layer].ln1
            xin = (y - y.mean(-1, keepdim=True)) / cache[f"blocks.{layer}.ln1.hook_scale"] * ln.w
            return cache["pattern", layer][:, head] @ xin @ model.W_V[layer, head] @ model.W_O[layer, head]

        single = final(head_out(1, 2, x0))
        virtual = final(head_out(1, 2, head_out(0, 1, x0)))
        mlp = final(cache["blocks.0.hook_mlp_out"])
        assert ln1.b.abs().max() > 0  # the norm bias is real and belongs to the bias term
    d = decompose(model, tokens)
    assert (d.term("L1H2") - single).abs().max().item() < 1e-4
    assert (d.term(("L0H1", "L1H2")) - virtual).abs().max().item() < 1e-4
    assert (d.term("M0") - mlp).abs().max().item() < 1e-4


# ---------------------------------------------------------- projections
def test_projection_matches_full_vocab_terms():
    model = random_model(seed=1, normalization="LN", d_mlp=64, attn_bias=True, mlp_bias=True,
                         unembed_bias=True, n_layers=3)
    V = model.cfg.d_vocab
    tokens = torch.randint(0, V, (3, 10), generator=torch.Generator().manual_seed(4))
    d = decompose(model, tokens)
    gen = torch.Generator().manual_seed(9)
    vec = torch.randn(V, generator=gen)
    per_pos_dirs = torch.randn(3, 10, V, generator=gen)
    per_pos_ids = torch.randint(0, V, (3, 10), generator=gen)
    correct = torch.zeros(3, 10, V)
    correct[:, :-1].scatter_(-1, tokens[:, 1:, None], 1.0)
    pair = torch.zeros(V)
    pair[5], pair[7] = 1.0, -1.0
    cases = [("correct", correct), (11, torch.nn.functional.one_hot(torch.tensor(11), V).float()),
             ((5, 7), pair), (vec, vec), (per_pos_dirs, per_pos_dirs),
             (per_pos_ids, torch.nn.functional.one_hot(per_pos_ids, V).float())]
    full = dict(d.terms())
    for target, direction in cases:
        proj = d.project(target)
        assert proj.values.shape == (len(d.paths), 3, 10)
        for path in d.paths:
            expected = (full[path] * direction).sum(-1)
            assert (proj[path] - expected).abs().max().item() < 1e-4, (target if isinstance(target, str) else
                                                                       type(target), path)
        assert (proj.total() - (d.logits * direction).sum(-1)).abs().max().item() < 1e-4
    assert not d.project("correct").valid[:, -1].any()


def test_top_path_goes_through_an_induction_head(shipped, batch, dec):
    _, cache = shipped.run_with_cache(batch.tokens)
    pattern = cache["pattern", 1]  # [batch, head, q, k]
    induction = pattern.diagonal(offset=1 - SEQ, dim1=-2, dim2=-1).mean((0, -1))  # [head]
    inductive = {f"L1H{h}" for h in range(4) if induction[h] >= 0.5}
    assert inductive  # the shipped model has induction heads
    top = dec.top_paths(3, target="correct", mask=batch.predictable)
    assert set(top[0].path) & inductive, (top, induction)
    assert top[0].mean > 1.0
    # mean over the masked positions, computed directly from the projection
    proj = dec.project("correct")
    m = batch.predictable & proj.valid
    assert abs(proj[top[0].path][m].mean().item() - top[0].mean) < 1e-5
    assert [s.mean for s in top] == sorted([s.mean for s in top], reverse=True)


# ------------------------------------------------------------ loss ladder
def test_loss_ladder_on_the_shipped_model(shipped, batch, dec):
    ladder = dec.loss_ladder(mask=batch.predictable)
    names = [s.name for s in ladder]
    assert names == ["direct", "+ heads", "+ virtual heads", "+ remainder (all)"]
    model_loss = shipped.loss(batch.tokens, per_token=True)[batch.predictable[:, :-1]].mean().item()
    assert abs(ladder[0].loss - math.log(64)) < 0.5
    assert abs(ladder[-1].loss - model_loss) < 1e-4
    assert ladder[1].loss < 1.0  # single heads do most of the copying
    assert ladder[2].loss < ladder[1].loss  # virtual heads help too in this toy model


def test_loss_ladder_has_an_mlp_rung():
    model = random_model(seed=2, normalization="LN", d_mlp=32)
    tokens = torch.randint(0, 49, (2, 8), generator=torch.Generator().manual_seed(0))
    d = decompose(model, tokens)
    ladder = d.loss_ladder()
    assert [s.name for s in ladder][-2:] == ["+ MLPs", "+ remainder (all)"]
    assert abs(ladder[-1].loss - model.loss(tokens).item()) < 1e-4


# ------------------------------------------------------------- bad input
@pytest.mark.parametrize("path, fragment", [
    ("L5H0", "L0H0..L1H3"),
    (("L1H0", "L0H1"), "earlier layer"),
    (("L0H0", "L0H1"), "earlier layer"),
    ("L0H9", "no head L0H9: it has heads L0H0..L1H3"),
    ("M0", "attention-only"),
    ("foo", "unknown path component 'foo'"),
    (("L0H0", "L1H0", "L1H1"), "three or more"),
    (("L0H0", "direct"), "must be two heads"),
    ((), "empty path"),
])
def test_bad_paths_are_clear_errors(dec, path, fragment):
    with pytest.raises(UsageError) as info:
        dec.term(path)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_path_strings_and_targets(dec):
    assert parse_path("L0H1 -> L1H2", dec.cfg) == ("L0H1", "L1H2")
    assert parse_path("L0H1>L1H2", dec.cfg) == ("L0H1", "L1H2")
    assert dec.project("correct")["L0H1 -> L1H2"].shape == (16, 21)
    for target, fragment in [(99, "0..64"), ((1, 70), "0..64"), ("wrong", "target must be"),
                             (torch.ones(3), "target tensor")]:
        with pytest.raises(UsageError) as info:
            dec.project(target)
        assert fragment in str(info.value)
    with pytest.raises(UsageError, match="by must be"):
        dec.project().top(3, by="median")
    with pytest.raises(UsageError, match="mask must have shape"):
        dec.loss_ladder(mask=torch.ones(2, 2, dtype=torch.bool))
