"""Architectural perturbations of the induction circuit: keys that read only the embeddings (blocked
K-composition) and smeared keys. Forward passes against a hook-free computation written here, the config
round trip, `circuitry train` options, and what the graph, composition scores, checks, interventions,
attribution, decomposition and scan make of such models."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import REPO, f32_atol, random_model, small_config

from circuitry.attribution import Layout, attribute
from circuitry.cli import main
from circuitry.data import repeated_tokens
from circuitry.errors import ModelLoadError, UsageError
from circuitry.graph import ResidualGraph, decompose
from circuitry.interventions import Ablation, Edge, EdgePatch, Node, Patch, clean_run, run_interventions
from circuitry.model import HookedTransformer, ModelConfig, load_model_file, save_model
from circuitry.model.layers import SMEAR_INIT
from circuitry.names import Edge as GraphEdge
from circuitry.names import check_edge
from circuitry.scan import scan
from circuitry.tasks.build import build_batch
from circuitry.tasks.format import load_task

BLOCKED = dict(key_input="embeddings")
SMEARED = dict(smeared_keys=True)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _ln(x: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None, eps: float) -> torch.Tensor:
    x = x - x.mean(-1, keepdim=True)
    x = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return x if w is None else x * w + b


def hand_forward(model: HookedTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of an attention-only model (learned positions, LayerNorm or none, no GQA), written from the
    parameters alone: keys of layers >= 1 from ln1(embeddings) when key_input is "embeddings", and keys
    smeared over the previous position as sigmoid(a) k_j + (1 - sigmoid(a)) k_{j-1} when smeared_keys."""
    cfg = model.cfg
    p = dict(model.named_parameters())
    n = tokens.shape[1]
    x0 = p["embed.W_E"][tokens] + p["pos_embed.W_pos"][:n]
    resid = x0
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    for l in range(cfg.n_layers):
        pre = f"blocks.{l}."

        def norm(x, pre=pre):
            if cfg.normalization is None:
                return x
            return _ln(x, p.get(pre + "ln1.w"), p.get(pre + "ln1.b"), cfg.norm_eps)

        def bias(name, pre=pre):
            return p.get(pre + f"attn.b_{name}", torch.zeros(()))

        q = torch.einsum("bpd,hde->bphe", norm(resid), p[pre + "attn.W_Q"]) + bias("Q")
        key_in = x0 if (cfg.key_input == "embeddings" and l >= 1) else resid
        k = torch.einsum("bpd,hde->bphe", norm(key_in), p[pre + "attn.W_K"]) + bias("K")
        v = torch.einsum("bpd,hde->bphe", norm(resid), p[pre + "attn.W_V"]) + bias("V")
        if cfg.smeared_keys:
            s = torch.sigmoid(p[pre + "attn.smear_alpha"])  # [head]
            smeared = k.clone()
            for j in range(1, n):
                smeared[:, j] = s[:, None] * k[:, j] + (1 - s[:, None]) * k[:, j - 1]
            k = smeared
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(cfg.d_head)
        pattern = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
        resid = resid + torch.einsum("bqhe,hed->bqd", z, p[pre + "attn.W_O"]) + p.get(pre + "attn.b_O", 0.0)
    if cfg.normalization is not None:
        resid = _ln(resid, p.get("ln_final.w"), p.get("ln_final.b"), cfg.norm_eps)
    return resid @ p["unembed.W_U"]


def _model(seed: int = 0, **overrides) -> HookedTransformer:
    model = random_model(seed=seed, **{"n_layers": 3, **overrides})
    if model.cfg.smeared_keys:  # smears far from the start, different per head and layer
        with torch.no_grad():
            for block in model.blocks:
                block.attn.smear_alpha.copy_(torch.randn(model.cfg.n_heads) * 1.5)
    return model


def _tokens(model, batch: int = 3, seed: int = 1) -> torch.Tensor:
    return repeated_tokens(model.cfg.d_vocab, model.cfg.bos_token_id, batch=batch, seq_len=7, n_repeats=2,
                           seed=seed).tokens


# ------------------------------------------------------------------ forward passes
@pytest.mark.parametrize("variant", [BLOCKED, SMEARED, {**BLOCKED, **SMEARED}], ids=["blocked", "smeared", "both"])
@pytest.mark.parametrize("norm", [None, "LN"])
def test_forward_equals_a_hook_free_computation(variant, norm):
    model = _model(normalization=norm, attn_bias=norm is not None, **variant)
    tokens = _tokens(model)
    with torch.no_grad():
        got, want = model(tokens), hand_forward(model, tokens)
        plain = HookedTransformer(model.cfg.__class__(**{**model.cfg.to_dict(), "key_input": "residual",
                                                         "smeared_keys": False}), seed=None)
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if "smear" not in k})
        baseline = plain(tokens)
    assert (got - want).abs().max().item() < 1e-5
    assert (got - baseline).abs().max().item() > 1e-2  # the perturbation changes the model


def test_hook_points_of_the_perturbed_keys():
    model = _model(**BLOCKED, **SMEARED)
    tokens = _tokens(model, 2)
    _, cache = model.run_with_cache(tokens)
    embed = cache["hook_embed"] + cache["hook_pos_embed"]
    # hook_k_input of a layer >= 1 carries the embeddings; hook_k is its projection, hook_k_smeared the smear
    seen = {}
    model.run_with_hooks(tokens, [("blocks.2.attn.hook_k_input", lambda x, hook: seen.setdefault("k_in", x))])
    torch.testing.assert_close(seen["k_in"], embed[:, :, None].expand_as(seen["k_in"]))
    k, smeared = cache["blocks.2.attn.hook_k"], cache["blocks.2.attn.hook_k_smeared"]
    torch.testing.assert_close(k, torch.einsum("bpd,hde->bphe", embed, model.blocks[2].attn.W_K))
    s = torch.sigmoid(model.blocks[2].attn.smear_alpha)[None, None, :, None]
    torch.testing.assert_close(smeared[:, 1:], s * k[:, 1:] + (1 - s) * k[:, :-1])
    torch.testing.assert_close(smeared[:, 0], k[:, 0])
    from circuitry.model.hooks import get_act_name

    assert get_act_name("k_smeared", 1) == "blocks.1.attn.hook_k_smeared"


def test_blocked_keys_follow_a_patch_of_the_stream_entering_layer_0():
    """The keys read the stream entering block 0 as its hook_resid_pre leaves it."""
    model = _model(**BLOCKED)
    tokens = _tokens(model, 2)
    seen = {}

    def double(x, hook):
        return 2 * x

    model.run_with_hooks(tokens, [("blocks.0.hook_resid_pre", double),
                                  ("blocks.1.attn.hook_k_input", lambda x, hook: seen.setdefault("k", x))])
    _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(seen["k"][:, :, 0], 2 * cache["blocks.0.hook_resid_pre"])


def test_a_run_from_a_later_layer_equals_the_full_run():
    model = _model(**BLOCKED, **SMEARED)
    tokens = _tokens(model)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        late = model(tokens, start_at_layer=2, resid=cache["blocks.2.hook_resid_pre"])
        torch.testing.assert_close(late, model(tokens), atol=f32_atol(late), rtol=0)


# ------------------------------------------------------------------ config and files
def test_config_defaults_validation_and_round_trip(tmp_path):
    old = small_config().to_dict()
    del old["key_input"], old["smeared_keys"]
    cfg = ModelConfig.from_dict(old)  # a config written before these fields loads with today's behaviour
    assert cfg.key_input == "residual" and cfg.smeared_keys is False and not cfg.keys_read_embeddings(1)
    with pytest.raises(ModelLoadError, match=r"key_input must be one of \('residual', 'embeddings'\)"):
        small_config(key_input="embedding")
    with pytest.raises(ModelLoadError, match="smeared_keys must be true or false"):
        small_config(smeared_keys="yes")
    model = _model(**BLOCKED, **SMEARED)
    assert model.n_params() == model.cfg.n_params_estimate()
    save_model(model, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["key_input"] == "embeddings"
    back = load_model_file(tmp_path / "m")
    assert back.cfg == model.cfg
    tokens = _tokens(model)
    with torch.no_grad():
        assert torch.equal(back(tokens), model(tokens))
    fresh = HookedTransformer(small_config(**SMEARED), seed=3)
    assert torch.allclose(torch.sigmoid(fresh.blocks[1].attn.smear_alpha), torch.tensor(0.9))
    assert fresh.blocks[1].attn.smear_alpha[0].item() == pytest.approx(SMEAR_INIT)


def test_fold_layer_norm_keeps_the_perturbed_models():
    model = _model(normalization="LN", attn_bias=True, **BLOCKED, **SMEARED)
    tokens = _tokens(model)
    with torch.no_grad():
        before = model(tokens)
        after = model.fold_layer_norm()(tokens)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


@pytest.mark.parametrize("flag,field,value", [("--block-k-composition", "key_input", "embeddings"),
                                              ("--smeared-keys", "smeared_keys", True)])
def test_train_records_the_option_and_resume_keeps_it(tmp_path, flag, field, value):
    out = tmp_path / "run"
    assert main(["train", "--steps", "3", "--checkpoint-every", "2", "--out", str(out), flag]) == 0
    record = json.loads((out / "train.json").read_text())
    assert record["command"] == f"circuitry train --steps 3 --seed 0 --out {out} --checkpoint-every 2 {flag}"
    assert record["recipe"][flag[2:].replace("-", "_")] is True
    model = load_model_file(out)
    assert getattr(model.cfg, field) == value
    assert main(["train", "--resume", str(out), "--steps", "4"]) == 0
    again = json.loads((out / "train.json").read_text())
    assert again["recipe"][flag[2:].replace("-", "_")] is True and flag in again["command"]
    assert getattr(load_model_file(out).cfg, field) == value
    if field == "smeared_keys":  # trained: the smear moved from its start, without weight decay
        assert model.blocks[0].attn.smear_alpha.detach().ne(SMEAR_INIT).any()


def test_train_refuses_the_options_where_they_do_not_apply(tmp_path, capsys):
    assert main(["train", "--task", "ioi", "--smeared-keys", "--out", str(tmp_path / "i")]) == 2
    assert "--smeared-keys is an option of another task" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main(["train", "--steps", "2", "--checkpoint-every", "2", "--out", str(out)]) == 0
    assert main(["train", "--resume", str(out), "--steps", "4", "--block-k-composition"]) == 2
    assert "a resumed run keeps the recipe" in capsys.readouterr().err


# ------------------------------------------------------------------ downstream
def test_graph_has_no_k_edges_from_heads_into_blocked_keys():
    cfg = small_config(n_layers=3, **BLOCKED)
    g = ResidualGraph(cfg)
    k_edges = set(g.edges_of_kind("K"))
    assert {(s, r) for s, r in k_edges if r.startswith("L0")} == {(s, f"L0H{h}") for s in ("embed", "pos_embed")
                                                                  for h in range(4)}
    assert all(s in ("embed", "pos_embed") for s, _ in k_edges)
    assert len(k_edges) == 2 * 3 * 4
    assert ("L0H0", "L1H0") in set(g.edges_of_kind("Q")) and ("L0H0", "L1H0") in set(g.edges_of_kind("V"))
    plain = ResidualGraph(small_config(n_layers=3))
    assert len(plain.edges_of_kind("K")) == len(k_edges) + 4 * 4 * 2 + 4 * 4  # L0 -> L1, L2; L1 -> L2
    with pytest.raises(UsageError, match="keys of layer 1 read only the embeddings"):
        g.circuit(["L0H0", "L1H0"], edges=[("L0H0", "L1H0", "K")])


def test_composition_scores_and_checks_of_a_blocked_model():
    from circuitry_plugins.detectors.composition import composition_scores

    model = _model(**BLOCKED)
    plain = _model()  # the same weights, keys reading the residual stream
    s, p = composition_scores(model), composition_scores(plain)
    later = torch.isfinite(p["K"])
    assert torch.equal(s["K"][later], torch.zeros(int(later.sum())))  # structurally zero
    assert float(p["K"][later].min()) > 0.01
    for kind in "QV":
        torch.testing.assert_close(s[kind], p[kind], equal_nan=True)
    g = ResidualGraph(model, composition=s)
    assert g.edges["L0H1", "L2H3", "V"]["composition"] == pytest.approx(float(s["V"][0, 1, 2, 3]))
    with pytest.raises(UsageError, match=r"edge L0H0 -> L1H2 \(K\): the keys of layer 1 read only the embeddings"):
        check_edge("L0H0 -> L1H2 (K)", model.cfg)
    assert check_edge("embed -> L1H2 (K)", model.cfg).kind == "K"
    check_edge("L0H0 -> L1H2 (K)", plain.cfg)


def test_a_composition_check_of_a_blocked_edge_is_refused(tmp_path, capsys):
    model = _model(**BLOCKED)
    save_model(model, tmp_path / "m")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"""apiVersion: circuitry/v1
kind: CircuitSpec
metadata: {{name: blocked}}
model: {tmp_path / 'm'}
data: {{name: repeated, seq_len: 6, n_repeats: 2, batch: 2, seed: 1}}
circuit:
  nodes: {{L0H0: previous_token, L1H0: induction}}
  edges: ["L0H0 -> L1H0 (K)"]
checks:
  - id: k
    kind: composition
    expect: {{ratio_to_baseline: ">= 1"}}
""")
    assert main(["verify", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "L0H0 -> L1H0 (K)" in err and "read only the embeddings" in err and "s.yaml:" in err


def test_edge_patches_of_blocked_keys():
    model = _model(**BLOCKED)
    tokens, ref = _tokens(model, 3, seed=1), _tokens(model, 3, seed=2)
    clean = clean_run(model, tokens)
    with pytest.raises(UsageError, match=r"L0H1 -> L1H0 \(K\): the keys of layer 1 read only the embeddings"):
        run_interventions(model, clean, [EdgePatch(Edge(Node(0, 1), Node(1, 0), "K"))], reference=ref)
    # embed -> L1H0 (K) patched from the reference run means: that head's keys read the reference tokens' embeddings
    got = run_interventions(model, clean, [EdgePatch(Edge("embed", Node(1, 0), "K"), "corrupted")],
                            reference=ref).values[0]
    _, ref_cache = model.run_with_cache(ref)

    def swap(x, hook):
        x = x.clone()
        x[:, :, 0] = x[:, :, 0] - clean.cache["hook_embed"] + ref_cache["hook_embed"]
        return x

    with torch.no_grad():
        want = model.run_with_hooks(tokens, [("blocks.1.attn.hook_k_input", swap)])
    torch.testing.assert_close(got, want, atol=f32_atol(want), rtol=0)
    assert (want - clean.logits).abs().max() > 1e-3


@pytest.mark.parametrize("variant", [BLOCKED, SMEARED], ids=["blocked", "smeared"])
def test_batched_sweep_equals_the_naive_loop(variant):
    model = _model(**variant)
    tokens, ref = _tokens(model, 3, seed=1), _tokens(model, 3, seed=2)
    clean = clean_run(model, tokens)
    senders = [Node(0, 1), Node(1, 2)] + (["embed"] if variant is BLOCKED else [])
    items = [EdgePatch(Edge(s, Node(2, 1), kind), m) for s in senders for kind in "QKV" for m in ("zero", "corrupted")
             if not (variant is BLOCKED and kind == "K" and s != "embed")]
    items += [Ablation(Node(l, h), "mean") for l in range(3) for h in (0, 3)]
    items += [Patch(s, "corrupted") for s in ("L0.resid_pre", "L1.resid_pre", "L2.resid_pre", "L2H1.k", "L1H0.k_input",
                                                "L2H2.pattern")]
    naive = run_interventions(model, clean, items, reference=ref, method="naive")
    batched = run_interventions(model, clean, items, reference=ref)
    for name, a, b in zip(naive.names, naive.values, batched.values):
        torch.testing.assert_close(b, a, atol=f32_atol(a), rtol=0, msg=lambda m, name=name: f"{name}: {m}")


def test_attribution_of_a_blocked_model():
    cfg = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_vocab=65, n_ctx=64, bos_token_id=64, **BLOCKED)
    model = HookedTransformer(ModelConfig(**cfg), seed=5).eval()
    batch = build_batch(load_task(REPO / "specs/tasks/induction.yaml"), model).select(slice(0, 4))
    layout = Layout.of(model.cfg)
    k_edges = [e for e in layout.edges if e.kind == "K"]
    assert {e.sender for e in k_edges if e.receiver.startswith("L1")} == {"embed", "pos_embed"}
    res = attribute(model, batch, method="exact")
    # embed -> L1H2 (K), by hand: head 2's key input of layer 1 reads the corrupted prompts' token embeddings
    _, clean_cache = model.run_with_cache(batch.tokens)
    _, corr_cache = model.run_with_cache(batch.corrupted)

    def metric(logits):
        rows = torch.arange(logits.shape[0])[:, None]
        at = logits[rows, batch.read]
        return float((at.gather(-1, batch.answer[..., None])[..., 0] - at.gather(-1, batch.wrong).mean(-1)).mean())

    def swap(x, hook):
        x = x.clone()
        x[:, :, 2] += corr_cache["hook_embed"] - clean_cache["hook_embed"]
        return x

    with torch.no_grad():
        want = metric(model(batch.tokens)) - metric(model.run_with_hooks(batch.tokens,
                                                                          [("blocks.1.attn.hook_k_input", swap)]))
    got = float(res.edge_scores[layout.edge_index[GraphEdge("embed", "L1H2", "K")]])
    assert got == pytest.approx(want, abs=1e-4) and abs(want) > 1e-4
    eap = attribute(model, batch, method="eap")  # the gradient methods run on the same edge list
    assert eap.edge_scores.shape == res.edge_scores.shape
    normed = HookedTransformer(ModelConfig(**{**cfg, "normalization": "LN"}), seed=5)
    with pytest.raises(UsageError, match="keys read the embeddings through a norm"):
        attribute(normed, batch, method="eap")


@pytest.mark.parametrize("variant", [BLOCKED, SMEARED], ids=["blocked", "smeared"])
def test_decomposition_is_exact(variant):
    model = _model(normalization="LN", **variant)
    tokens = _tokens(model)
    d = decompose(model, tokens)
    with torch.no_grad():
        logits = model(tokens)
    assert (d.total() - logits).abs().max().item() < 1e-4


@pytest.mark.parametrize("variant", [BLOCKED, SMEARED], ids=["blocked", "smeared"])
def test_scan_runs(tmp_path, capsys, variant):
    model = _model(**variant)
    result = scan(model, repeated_tokens(model.cfg.d_vocab, model.cfg.bos_token_id, batch=2, seq_len=6,
                                         n_repeats=2, seed=0))
    k = result.pair_list("composition", "K")
    assert len(k) == 4 * 4 * 3
    assert all(r["score"] == 0.0 for r in k) == (variant is BLOCKED)
    save_model(model, tmp_path / "m")
    assert main(["scan", str(tmp_path / "m"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {h["head"] for h in doc["heads"]} >= {"L2H3"}
