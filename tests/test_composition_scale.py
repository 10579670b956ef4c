"""Composition scores, pair lists, graph scores and projections computed in chunks: equal to independent
full computations, to the unchunked results, and (composition) in float32 for bfloat16 weights."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from conftest import random_model

from circuitry.errors import UsageError
from circuitry.graph import ResidualGraph, decompose
from circuitry.model import HookedTransformer
from circuitry.names import head_name
from circuitry.records import PairScores
from circuitry.scan import ScanResult, strongest_first

comp = importlib.import_module("circuitry_plugins.detectors.composition")

CONFIGS = {
    "plain": dict(n_layers=3),
    "LN": dict(n_layers=3, normalization="LN", d_mlp=16, attn_bias=True),
    "RMS-gqa": dict(n_layers=3, normalization="RMS", n_kv_heads=2, positional="rotary"),
    "mqa": dict(n_layers=4, normalization="LNPre", n_kv_heads=1),
}


def full_matrix_scores(model) -> dict[str, torch.Tensor]:
    """Scores from the d_model x d_model matrices of every head, in float64, from the raw parameters
    (ln1 weight folded by hand, centred for LayerNorm, key/value heads shared by their query heads)."""
    cfg = model.cfg
    L, H, rep = cfg.n_layers, cfg.n_heads, cfg.n_heads // cfg.kv_heads
    W: dict[str, list[list[torch.Tensor]]] = {"QK": [], "OV": []}
    def read(M, ln):
        M = M.detach().double()
        if getattr(ln, "w", None) is not None:
            M = ln.w.detach().double()[:, None] * M
        return M - M.mean(0, keepdim=True) if ln.kind in ("LN", "LNPre") else M

    for block in model.blocks:
        attn, ln = block.attn, block.ln1
        W["QK"].append([read(attn.W_Q[h], ln) @ read(attn.W_K[h // rep], ln).T for h in range(H)])
        W["OV"].append([read(attn.W_V[h // rep], ln) @ attn.W_O[h].detach().double() for h in range(H)])

    def score(A, B):
        n = A.norm() * B.norm()
        return 0.0 if n == 0 else float((A @ B).norm() / n)

    out = {k: torch.full((L, H, L, H), math.nan, dtype=torch.float64) for k in "QKV"}
    for l1 in range(L):
        for h1 in range(H):
            OV1 = W["OV"][l1][h1]
            for l2 in range(l1 + 1, L):
                for h2 in range(H):
                    QK = W["QK"][l2][h2]
                    out["Q"][l1, h1, l2, h2] = score(OV1, QK)
                    out["K"][l1, h1, l2, h2] = score(OV1, QK.T)
                    out["V"][l1, h1, l2, h2] = score(OV1, W["OV"][l2][h2])
    return out


def assert_scores_close(got: dict, want: dict, atol: float) -> None:
    for k in "QKV":
        assert torch.equal(got[k].isnan(), want[k].isnan()), k
        diff = (got[k].double() - want[k]).abs().nan_to_num()
        assert float(diff.max()) < atol, (k, float(diff.max()))


# ------------------------------------------------------------------ composition scores
@pytest.mark.parametrize("name", list(CONFIGS))
def test_scores_equal_full_matrix_products(name):
    model = random_model(seed=7, **CONFIGS[name])
    with torch.no_grad():  # an all-zero W_O and an all-zero key/value head: scores 0, not 0/0
        model.blocks[1].attn.W_O[0].zero_()
        model.blocks[1].attn.W_V[model.cfg.kv_heads - 1].zero_()
    want = full_matrix_scores(model)
    got = comp.composition_scores(model)
    assert all(s.dtype == torch.float32 and s.shape == (model.cfg.n_layers, 4, model.cfg.n_layers, 4)
               for s in got.values())
    assert_scores_close(got, want, 2e-6)
    assert (got["V"][1, 0, 2] == 0).all() and (got["Q"][1, 3, 2:] == 0).all() and (got["V"][0, :, 1, 3] == 0).all()
    assert (got["K"][0, 0, 1:] > 0.01).all()  # the others are real scores


@pytest.mark.parametrize("name", ["plain", "RMS-gqa", "mqa"])
def test_chunked_scores_equal_unchunked(name, monkeypatch):
    model = random_model(seed=3, **CONFIGS[name])
    whole = comp.composition_scores(model)
    n = model.cfg.n_layers * model.cfg.n_heads
    assert comp.block_sizes(model.cfg) == (n, n)  # one block under the default budget
    rep = model.cfg.n_heads // model.cfg.kv_heads
    smallest = comp.block_bytes(model.cfg, 1, rep)
    for budget in (smallest, 2 * smallest):
        monkeypatch.setenv("CIRCUITRY_MEMORY_BUDGET", str(budget))
        w, r = comp.block_sizes(model.cfg)
        assert w * r < n * n and r % rep == 0 and comp.block_bytes(model.cfg, w, r) <= budget
        chunked = comp.composition_scores(model)
        assert_scores_close(chunked, {k: v.double() for k, v in whole.items()}, 1e-6)
    monkeypatch.setenv("CIRCUITRY_MEMORY_BUDGET", str(smallest - 1))
    with pytest.raises(UsageError, match=r"composition scores \(one head against one key/value group of heads\) "
                                         r"would need .* over the memory budget"):
        comp.composition_scores(model)


def test_bfloat16_scores_are_computed_in_float32():
    """The same bfloat16 weights give the same scores as their float32 copy (the computation casts each
    chunk to float32: within 1e-6); against the float32 model they were rounded from, the scores differ
    by the rounding of the weights only (within 1e-3 here, where scores are about 0.2)."""
    cfg = random_model(seed=0, **CONFIGS["RMS-gqa"]).cfg
    exact = HookedTransformer(cfg, seed=11).eval()
    low = HookedTransformer(cfg, seed=11, dtype=torch.bfloat16).eval()
    assert low.W_Q.dtype == torch.bfloat16
    upcast = HookedTransformer(cfg, seed=None).eval()
    upcast.load_state_dict({k: v.float() for k, v in low.state_dict().items()})
    s_low, s_up, s_exact = (comp.composition_scores(m) for m in (low, upcast, exact))
    assert_scores_close(s_low, {k: v.double() for k, v in s_up.items()}, 1e-6)
    assert_scores_close(s_low, {k: v.double() for k, v in s_exact.items()}, 1e-3)
    assert max(float((s_low[k] - s_exact[k]).abs().nan_to_num().max()) for k in "QKV") > 1e-6  # rounded


def test_r_factor_preserves_norms_and_handles_rank_deficiency():
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(3, 40, 6, generator=gen)
    W[1] = 0  # zero head: the Cholesky factor does not exist, the QR's does
    W[2, :, 5] = W[2, :, 0]  # rank 5
    R = comp._r(W)
    X = torch.randn(6, 9, generator=gen)
    assert torch.allclose(torch.triu(R), R)
    for i in range(3):
        assert float((R[i] @ X).norm()) == pytest.approx(float((W[i] @ X).norm()), rel=1e-5, abs=1e-5)
    assert float(R[1].abs().max()) == 0.0


def test_random_baseline_does_not_depend_on_the_chunk(monkeypatch):
    one = comp.sample_baseline(48, 12, samples=40, chunk=40)
    assert comp.sample_baseline(48, 12, samples=40, chunk=7) == pytest.approx(one, rel=1e-6)
    monkeypatch.setenv("CIRCUITRY_MEMORY_BUDGET", str(3 * 12 * 4 * 48 * 12))  # three samples a chunk
    assert comp.baseline_chunk(48, 12) == 3
    assert comp.sample_baseline(48, 12, samples=40) == pytest.approx(one, rel=1e-6)
    # independent: the mean score of the same random factors from full d_model x d_model products
    gen = torch.Generator().manual_seed(0)
    f = [torch.randn(40, 48, 12, generator=gen).double() for _ in range(4)]
    W_A, W_B = f[0] @ f[1].mT, f[2] @ f[3].mT
    ref = ((W_A @ W_B).flatten(1).norm(dim=1) / (W_A.flatten(1).norm(dim=1) * W_B.flatten(1).norm(dim=1))).mean()
    assert one == pytest.approx(float(ref), rel=1e-5)


# ------------------------------------------------------------------ pair lists and the graph
def _pair_scores(L: int, H: int) -> PairScores:
    gen = torch.Generator().manual_seed(1)
    s = torch.rand(L, H, L, H, generator=gen).round(decimals=1)  # ties
    s[0, 1, 1, 2] = math.nan
    s[1, 0, 2, 3] = math.inf
    s[0, 0, 2, 0] = -0.0
    layer = torch.arange(L)
    s[~(layer[:, None, None, None] < layer[None, None, :, None]).expand(L, H, L, H)] = math.nan
    return PairScores({"K": s}, {"K": 0.25})


def test_pair_list_is_the_sorted_loop():
    L, H = 3, 4
    ps = _pair_scores(L, H)
    res = ScanResult("m", "d", {}, {"composition": ps}, {})
    s = ps.scores["K"]
    rows = [{"from": head_name(l1, h1), "to": head_name(l2, h2), "score": float(s[l1, h1, l2, h2]), "baseline": 0.25}
            for l1 in range(L) for h1 in range(H) for l2 in range(l1 + 1, L) for h2 in range(H)]
    want = strongest_first(rows)
    got = res.pair_list("composition", "K")
    assert len(got) == len(want) == 3 * H * H
    assert [(r["from"], r["to"]) for r in got] == [(r["from"], r["to"]) for r in want]
    assert [r["score"] for r in got][:-1] == [r["score"] for r in want][:-1] and math.isnan(got[-1]["score"])
    assert got[0]["score"] == math.inf and got[0]["from"] == "L1H0"
    assert res.pair_list("composition", "K", top=5) == got[:5]


def test_graph_composition_attributes_are_the_tensor_entries():
    L, H = 3, 4
    ps = _pair_scores(L, H)
    g = ResidualGraph(random_model(seed=0, n_layers=L), composition={"K": ps.scores["K"]})
    s = ps.scores["K"]
    n = 0
    for u, v, k, d in g.edges(keys=True, data=True):
        if k == "K" and g.nodes[u].get("kind") == "head":
            (l1, h1), (l2, h2) = (g.nodes[u]["layer"], g.nodes[u]["head"]), (g.nodes[v]["layer"], g.nodes[v]["head"])
            want = float(s[l1, h1, l2, h2])
            assert d["composition"] == want or (math.isnan(want) and math.isnan(d["composition"]))
            n += 1
        elif k in ("Q", "V"):
            assert "composition" not in d
    assert n == 3 * H * H


# ------------------------------------------------------------------ projections of some paths
@pytest.fixture(scope="module")
def mlp_dec():
    model = random_model(seed=4, n_layers=3, normalization="LN", d_mlp=16, attn_bias=True, n_kv_heads=2)
    tokens = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(2))
    return decompose(model, tokens)


SUBSET = ["L2H1", ("L0H3", "L2H1"), "remainder", "direct", ("L1H0", "L2H1"), "M1", ("L0H0", "L1H2"), "bias",
          "L0H2", ("L0H3", "L2H1")]


@pytest.mark.parametrize("target", ["correct", 7, (3, 5)])
def test_subset_projection_equals_the_full_one(mlp_dec, target, monkeypatch):
    full = mlp_dec.project(target)
    part = mlp_dec.project(target, paths=SUBSET)
    keys = list(dict.fromkeys(mlp_dec.parse(p) for p in SUBSET))
    assert part.paths == tuple(keys) and part.values.shape == (len(keys), 3, 9)  # the repeated path once
    for i, path in enumerate(keys):
        torch.testing.assert_close(part.values[i], full[path], atol=f32_atol_of(full), rtol=0)
        # and the term itself, projected by hand from its full-vocabulary logits
        term = mlp_dec.term(path)
        direction = _direction(mlp_dec, target, term.shape[-1])
        torch.testing.assert_close(part.values[i], (term * direction).sum(-1) * part.valid,
                                   atol=f32_atol_of(full) * 4, rtol=0)
    torch.testing.assert_close(part.total(), full.values.sum(0), atol=f32_atol_of(full) * 8, rtol=0)
    torch.testing.assert_close(part.total(), full.total(), atol=f32_atol_of(full) * 8, rtol=0)
    # virtual heads in chunks of one sender (the budget the whole projection needs)
    per_sender = 4 * (3 * 3 * 9 * 8 + 8 * 8 + 2 * 8 * 32)
    budget = 4 * (len(full.paths) + 1) * 3 * 9
    assert budget // per_sender == 1
    monkeypatch.setenv("CIRCUITRY_MEMORY_BUDGET", str(budget))
    torch.testing.assert_close(mlp_dec.project(target, paths=SUBSET).values, part.values, atol=1e-6, rtol=0)
    torch.testing.assert_close(mlp_dec.project(target).values, full.values, atol=1e-6, rtol=0)


def f32_atol_of(proj) -> float:
    return 64 * torch.finfo(torch.float32).eps * float(proj.values.abs().max())


def _direction(dec, target, V: int) -> torch.Tensor:
    if target == "correct":
        d = torch.zeros(*dec.tokens.shape, V)
        d[:, :-1].scatter_(-1, dec.tokens[:, 1:, None], 1.0)
        return d
    d = torch.zeros(V)
    if isinstance(target, tuple):
        d[target[0]], d[target[1]] = 1.0, -1.0
    else:
        d[target] = 1.0
    return d


def test_top_paths_streams_the_same_ranking(mlp_dec):
    mask = torch.zeros(3, 9, dtype=torch.bool)
    mask[:, 4:] = True
    for by in ("mean", "abs", "mean_abs"):
        want = mlp_dec.project("correct").top(6, mask=mask, by=by)
        got = mlp_dec.top_paths(6, target="correct", mask=mask, by=by)
        assert [s.path for s in got] == [s.path for s in want]
        for a, b in zip(got, want):
            assert a.mean == pytest.approx(b.mean, abs=1e-6) and a.mean_abs == pytest.approx(b.mean_abs, abs=1e-6)


def test_projection_over_the_budget_is_refused(mlp_dec, monkeypatch):
    n = len(mlp_dec.paths)
    monkeypatch.setenv("CIRCUITRY_MEMORY_BUDGET", str(4 * (n + 1) * 3 * 9 - 1))
    with pytest.raises(UsageError, match=rf"the projection of {n} terms on 3 x 9 tokens would need"):
        mlp_dec.project("correct")
    assert mlp_dec.project("correct", paths=["L0H1"]).values.shape == (1, 3, 9)  # a few paths still fit
    with pytest.raises(UsageError, match="must be a list of paths"):
        mlp_dec.project("correct", paths="L0H1")
    with pytest.raises(UsageError, match="no head L7H0"):
        mlp_dec.project("correct", paths=["L7H0"])


# ------------------------------------------------------------------ copying, one layer at a time
@pytest.mark.parametrize("overrides", [dict(n_kv_heads=2, normalization="LN"),
                                       dict(n_kv_heads=1, normalization="RMS", tied_embeddings=True)])
def test_copying_per_layer_equals_full_vocab_eigenvalues(overrides, monkeypatch):
    """Σλ/Σ|λ| of W_E W_V W_O W_U [vocab, vocab] per head (key/value heads shared, ln weights folded by
    hand), equal to the detector's, also with W_U W_E summed over vocabulary chunks of 3 tokens."""
    from circuitry.records import DetectorInput

    copying = importlib.import_module("circuitry_plugins.detectors.copying").copying
    model = random_model(seed=2, n_layers=2, **overrides)
    rep = model.cfg.n_heads // model.cfg.kv_heads
    centre = model.cfg.normalization == "LN"
    W_U = model.W_U.detach().double() * model.ln_final.w.detach().double()[:, None]
    W_U = W_U - W_U.mean(0, keepdim=True) if centre else W_U
    ref = torch.zeros(2, 4)
    for l in range(2):
        w = model.blocks[l].ln1.w.detach().double()
        for h in range(4):
            W_V = model.blocks[l].attn.W_V[h // rep].detach().double() * w[:, None]
            W_V = W_V - W_V.mean(0, keepdim=True) if centre else W_V
            full = model.W_E.detach().double() @ W_V @ model.blocks[l].attn.W_O[h].detach().double() @ W_U
            ev = torch.linalg.eigvals(full)
            ref[l, h] = ev.real.sum() / ev.abs().sum()
    got = copying(DetectorInput(model, None, None))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    monkeypatch.setenv("CIRCUITRY_MEMORY_BUDGET", str(3 * 2 * 8 * 32))  # 3 vocabulary rows a chunk
    torch.testing.assert_close(copying(DetectorInput(model, None, None)), got, atol=1e-6, rtol=0)
