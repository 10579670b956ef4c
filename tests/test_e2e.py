"""End-to-end circuits (`circuitry.e2e`, `circuitry e2e`): the chunked rankings against the materialised
vocab x vocab matrices, computed here from the weights of a model folded by `fold_layer_norm`."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch
from conftest import random_model

from circuitry import cli
from circuitry.budget import format_bytes
from circuitry.e2e import end_to_end
from circuitry.e2e.topk import chunk_rows
from circuitry.errors import UsageError
from circuitry.model import HookedTransformer
from circuitry.model.config import ModelConfig
from circuitry.scan import run_detectors, select_detectors

K = 5


def reference(model, layer: int, head: int) -> dict[str, torch.Tensor]:
    """QK [V, V], OV [V, V] and the positional QK [n_ctx, n_ctx] formed whole in float64 from a folded copy."""
    m = copy.deepcopy(model).fold_layer_norm().double()
    attn = m.blocks[layer].attn
    kv = head // (m.cfg.n_heads // m.cfg.kv_heads)
    W_Q, W_K, W_V, W_O = attn.W_Q[head], attn.W_K[kv], attn.W_V[kv], attn.W_O[head]
    out = {"QK": m.W_E @ W_Q @ W_K.T @ m.W_E.T, "OV": m.W_E @ W_V @ W_O @ m.W_U}
    if m.cfg.positional == "learned":
        out["POS"] = m.W_pos @ W_Q @ W_K.T @ m.W_pos.T
    return {k: v.detach() for k, v in out.items()}


@pytest.fixture
def small_chunks(monkeypatch):
    """A chunk budget of 2 KB: a few rows per chunk, so the merging of chunks is exercised."""
    monkeypatch.setattr("circuitry.e2e.topk.chunk_budget", lambda: 2000)


def tiny_ln():
    """A random LayerNorm model (random norm weights and biases) with grouped-query attention."""
    return random_model(seed=3, normalization="LN", n_kv_heads=2, d_vocab=40, n_ctx=24, bos_token_id=39)


@pytest.fixture(params=[("shipped", "L1H2"), ("shipped", "L0H0"), ("tiny_ln", "L1H3"), ("tiny_ln", "L0H1")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def case(request, shipped):
    name, head = request.param
    model = shipped if name == "shipped" else tiny_ln()
    layer, h = int(head[1]), int(head[3])
    return model, head, reference(model, layer, h)


def test_top_ov_and_qk_equal_the_materialised_matrices(case, small_chunks):
    model, head, ref = case
    e2e = end_to_end(model, head)
    for kind, rows, top in (("OV", e2e.ov_rows(K), e2e.top_ov(K)), ("QK", e2e.qk_rows(K), e2e.top_qk(K))):
        M = ref[kind]
        tol = 1e-5 * float(M.abs().max())
        want = torch.topk(M, K, dim=1)
        assert torch.equal(rows.indices, want.indices), kind
        assert torch.allclose(rows.values.double(), want.values, atol=tol), kind
        flat = torch.topk(M.reshape(-1), K)
        V = M.shape[1]
        assert [dataclasses.astuple(p)[:2] for p in top] == [(i // V, i % V) for i in flat.indices.tolist()], kind
        assert [p.value for p in top] == pytest.approx(flat.values.tolist(), abs=tol)


def test_skip_trigrams_equal_a_direct_search(case, small_chunks):
    model, head, ref = case
    QK, OV = ref["QK"], ref["OV"]
    keys = torch.topk(QK, K, dim=1).indices  # [V, K]
    outs = torch.topk(OV, K, dim=1).indices
    found = []
    for q in range(QK.shape[0]):
        for j in keys[q].tolist():
            for i in outs[j].tolist():
                qk, ov = float(QK[q, j]), float(OV[j, i])
                if qk > 0 and ov > 0:
                    found.append((qk * ov, q, j, i))
    found.sort(reverse=True)
    got = end_to_end(model, head).top_skip_trigrams(K)
    assert [(t.query, t.key, t.output) for t in got] == [f[1:] for f in found[:K]]
    assert [t.score for t in got] == pytest.approx([f[0] for f in found[:K]], rel=1e-4)
    assert all(t.score == pytest.approx(t.qk * t.ov, rel=1e-6) for t in got)


def test_copying_and_diagonal(case):
    model, head, ref = case
    e2e = end_to_end(model, head)
    ev = torch.linalg.eigvals(ref["OV"])
    assert e2e.copying_score == pytest.approx(float(ev.real.sum() / ev.abs().sum()), abs=1e-4)
    scores, _ = run_detectors(model, None, select_detectors(["copying"]))
    assert e2e.copying_score == pytest.approx(float(scores["copying"][e2e.layer, e2e.head]), abs=1e-6)
    ids = torch.arange(ref["OV"].shape[0])
    assert e2e.diagonal.top_of_row == pytest.approx(float((ref["OV"].argmax(1) == ids).double().mean()))
    assert e2e.diagonal.top_of_column == pytest.approx(float((ref["OV"].argmax(0) == ids).double().mean()))


def test_positional_preference_equals_a_direct_softmax(case, small_chunks):
    model, head, ref = case
    n = ref["POS"].shape[0]
    scores = (ref["POS"] / model.cfg.scale).masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), -math.inf)
    A = torch.softmax(scores, dim=-1)
    pos = end_to_end(model, head).positional
    prev = A.diagonal(-1)
    assert pos.previous_weight[0] is None
    assert list(pos.previous_weight[1:]) == pytest.approx(prev.tolist(), abs=1e-5)
    assert pos.mean_previous_weight == pytest.approx(float(prev.mean()), abs=1e-5)
    assert list(pos.argmax_offset) == (A.argmax(-1) - torch.arange(n)).tolist()


def test_shipped_model_heads(shipped):
    """The shipped model: induction heads in layer 1 copy; L0H0 prefers the previous position."""
    assert end_to_end(shipped, "L1H2").copying_score > 0.99
    assert end_to_end(shipped, "L1H2").diagonal.top_of_row > 0.8
    pos = end_to_end(shipped, "L0H0").positional
    assert pos.mean_previous_weight > 0.3
    assert pos.offset_counts()[0][0] == -1


def planted_copier() -> HookedTransformer:
    """16 tokens embedded as orthonormal rows (W_U = W_E^T); head L0H0's OV circuit is the identity plus
    noise, head L0H1 is random."""
    cfg = ModelConfig(n_layers=1, d_model=32, n_heads=2, d_head=16, d_vocab=16, n_ctx=8)
    model = HookedTransformer(cfg, seed=0)
    gen = torch.Generator().manual_seed(0)
    E = torch.linalg.qr(torch.randn(32, 32, generator=gen))[0][:16]  # [16, 32], orthonormal rows
    with torch.no_grad():
        model.embed.W_E.copy_(E)
        model.unembed.W_U.copy_(E.T)
        attn = model.blocks[0].attn
        attn.W_V[0].copy_(E.T + 0.02 * torch.randn(32, 16, generator=gen))
        attn.W_O[0].copy_(E + 0.02 * torch.randn(16, 32, generator=gen))
    return model


def test_planted_copying_head_scores_near_one():
    model = planted_copier()
    copier, other = end_to_end(model, "L0H0"), end_to_end(model, "L0H1")
    assert copier.copying_score > 0.98
    assert copier.diagonal.top_of_row == 1.0 and copier.diagonal.top_of_column == 1.0
    assert all(p.source == p.output for p in copier.top_ov(K))
    assert other.copying_score < 0.9 and other.diagonal.top_of_row < 0.5


def _main(monkeypatch, argv):
    monkeypatch.setattr(cli, "COMMANDS", {"e2e": "circuitry.cli.e2e"})
    return cli.main(argv)


def _strict(text: str):
    def bad(value):
        raise ValueError(f"non-strict JSON constant {value}")

    return json.loads(text, parse_constant=bad)


def test_cli_json_is_strict_and_matches_the_api(monkeypatch, capsys, shipped, tmp_path):
    html = tmp_path / "e2e.html"
    assert _main(monkeypatch, ["e2e", "builtin:attn-only-2l", "--head", "L1H2", "--top", "3", "--json",
                               "--html", str(html)]) == 0
    doc = _strict(capsys.readouterr().out)
    e2e = end_to_end(shipped, "L1H2")
    assert [(p["source"], p["output"]) for p in doc["ov"]["top_pairs"]] == [(p.source, p.output)
                                                                            for p in e2e.top_ov(3)]
    assert doc["copying"]["score"] == pytest.approx(e2e.copying_score)
    assert doc["positional"]["mean_previous_token_weight"] == pytest.approx(e2e.positional.mean_previous_weight)
    assert doc["ov"]["top_pairs"][0]["source_label"] == str(doc["ov"]["top_pairs"][0]["source"])
    assert len(doc["skip_trigrams"]) == 3 and doc["warnings"] == []
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert f'data-value="{doc["ov"]["top_pairs"][0]["value"]!r}"' in page


def test_cli_tables(monkeypatch, capsys):
    assert _main(monkeypatch, ["e2e", "builtin:attn-only-2l", "--head", "L0H0", "--top", "2"]) == 0
    text = capsys.readouterr().out
    for part in ("OV: top token pairs", "skip-trigrams", "copying score", "previous token"):
        assert part in text


def test_rotary_model_has_no_positional_matrix(monkeypatch, capsys):
    model = random_model(seed=1, positional="rotary", normalization="RMS")
    e2e = end_to_end(model, "L0H0")
    assert e2e.positional is None and "rotary" in e2e.positional_reason
    assert any("rotary" in n for n in e2e.notes) and any("RMS" in n for n in e2e.notes)
    from circuitry.e2e.document import document

    doc = _strict(json.dumps(document(e2e, 2), allow_nan=False))
    assert doc["positional"] is None and "rotary" in doc["positional_reason"]


def test_bad_head_is_located_with_a_suggestion(monkeypatch, capsys, shipped):
    assert _main(monkeypatch, ["e2e", "builtin:attn-only-2l", "--head", "L2H3"]) == 2
    err = capsys.readouterr().err
    assert "--head L2H3" in err and "did you mean 'L1H3'" in err and "Traceback" not in err
    with pytest.raises(UsageError, match=r"no head L0H7.*did you mean 'L0H"):
        end_to_end(shipped, "L0H7")
    assert _main(monkeypatch, ["e2e", "builtin:attn-only-2l", "--head", "L0H0", "--top", "0"]) == 2
    assert "--top 0" in capsys.readouterr().err


def test_memory_refusal_names_the_numbers(monkeypatch, shipped):
    monkeypatch.setenv("CIRCUITRY_MEMORY_BUDGET", "2KiB")
    cfg = shipped.cfg
    need = 4 * (4 * cfg.d_vocab * cfg.d_head + 2 * cfg.n_ctx * cfg.d_head + cfg.d_model * 4 * cfg.d_head)
    with pytest.raises(UsageError) as exc:
        end_to_end(shipped, "L0H1")
    assert f"would need {format_bytes(need)}, over the memory budget of 2.0 KiB" in str(exc.value)
    monkeypatch.setenv("CIRCUITRY_MEMORY_BUDGET", "500")
    with pytest.raises(UsageError, match=r"one row of the OV circuit \(65 entries, float32\) would need 520 B"):
        chunk_rows(65, "the OV circuit")


def test_not_a_model_is_refused():
    with pytest.raises(UsageError, match="token embedding W_E and an unembedding W_U"):
        end_to_end(object(), "L0H0")


def test_labels_come_from_the_tokenizer():
    from circuitry.e2e.document import document
    from circuitry.sources import load_model

    model = load_model("builtin:ioi-toy")
    doc = document(end_to_end(model, "L0H0"), 3)
    for pair in doc["ov"]["top_pairs"]:
        for role in ("source", "output"):
            assert pair[f"{role}_label"] == model.tokenizer.decode([pair[role]]).replace(" ", "·")
    assert any("LN weights folded in" in n for n in doc["notes"])


def test_docs_page_runs_and_its_numbers_hold(monkeypatch, shipped):
    from doc_pages import REPO, run_python_blocks

    monkeypatch.chdir(REPO)
    ns = run_python_blocks(REPO / "docs" / "e2e.md", "e2e_docs")
    assert ns["e2e"].top_ov(1)[0].source == ns["e2e"].top_ov(1)[0].output == 12  # "12 -> 12" on the page
    text = (REPO / "docs" / "e2e.md").read_text()
    pos = end_to_end(shipped, "L0H0").positional
    counts = dict(pos.offset_counts())
    assert f"mean weight of {pos.mean_previous_weight:.2f}" in text and f"{counts[-1]} of its 64 positions" in text
    later = [end_to_end(shipped, f"L1H{h}").positional.mean_previous_weight for h in range(4)]
    assert all(abs(w - 0.05) < 0.01 for w in later)
