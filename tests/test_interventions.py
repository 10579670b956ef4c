"""Tests of circuitry.interventions: ablations, path patching, frozen patterns, batched sweeps.

Expected values come from hand-written hooks, closed forms of the no-norm
attention-only model (logits are linear in the residual once patterns are
fixed), and the naive one-pass-per-intervention loop; the induction-circuit
effects are measured on the shipped model.
"""

from __future__ import annotations

import pytest
import torch
from conftest import f32_atol, random_model

from circuitry.data import repeated_tokens
from circuitry.errors import UsageError
from circuitry.interventions import (
    Ablation,
    Combined,
    Edge,
    EdgePatch,
    Node,
    Patch,
    all_heads,
    all_mlps,
    clean_run,
    intervention_hooks,
    run_interventions,
)

LN_MLP = dict(normalization="LN", d_mlp=64, attn_bias=True, mlp_bias=True)
PARALLEL_GQA = dict(n_layers=3, normalization="RMS", d_mlp=48, parallel_attn_mlp=True, n_kv_heads=2,
                    positional="rotary", attn_bias=True, mlp_bias=True)
INDUCTION_HEADS = ("L1H0", "L1H1", "L1H3")


def _tokens(model, batch: int, seed: int) -> torch.Tensor:
    bos = model.cfg.bos_token_id
    return repeated_tokens(model.cfg.d_vocab, bos, batch=batch, seq_len=7, n_repeats=2, seed=seed).tokens


def _zero_head_hook(h: int):
    def hook(z, hp):
        z = z.clone()
        z[:, :, h] = 0.0
        return z
    return hook


def _run(model, tokens, hooks):
    with torch.inference_mode():
        return model.run_with_hooks(tokens, hooks)


def _cache(model, tokens, hooks=()):
    with torch.inference_mode():
        return model.run_with_cache(tokens, hooks=list(hooks))[1]


@pytest.fixture(scope="module")
def ln_model():
    return random_model(seed=3, **LN_MLP)


@pytest.fixture(scope="module")
def ln_model64():
    return random_model(seed=3, **LN_MLP).double()


# ------------------------------------------------------------------ targets
def test_node_and_edge_names(shipped):
    assert Node.parse("L0H1") == Node(0, 1) and Node.parse("M3") == Node(3)
    assert [n.name for n in all_heads(shipped.cfg)][:5] == ["L0H0", "L0H1", "L0H2", "L0H3", "L1H0"]
    assert all_mlps(shipped.cfg) == []
    e = Edge("L0H0", "L1H2", "K")
    assert e.receiver == Node(1, 2) and e.name == "L0H0 -> L1H2 (K)"
    assert Edge("M0", "logits", "direct").name == "M0 -> logits (direct)"
    bad = [lambda: Node.parse("L0X1"), lambda: Edge("L1H0", "L1H2", "K"), lambda: Edge("L0H0", "L1H0", "O"),
           lambda: Edge("L0H0", "L1H0", "direct"), lambda: Edge("L0H0", "logits", "V"),
           lambda: Edge("L0H0", "M1", "Q"), lambda: Node.parse("L9H9").check(shipped.cfg),
           lambda: Node.parse("M0").check(shipped.cfg), lambda: Ablation("L0H0", "median"),
           lambda: Combined((Ablation("L0H0"), Ablation("L0H0", "mean"))), lambda: Combined(())]
    for make in bad:
        with pytest.raises(UsageError):
            make()


# ------------------------------------------------------- node ablations
@pytest.mark.parametrize("which", ["shipped", "ln"])
def test_zero_ablation_equals_hand_written_hook(which, shipped, ln_model):
    model = shipped if which == "shipped" else ln_model
    tokens = _tokens(model, 6, seed=1)
    clean = clean_run(model, tokens)
    node = Node(0, 2)
    expected = _run(model, tokens, [("blocks.0.attn.hook_z", _zero_head_hook(2))])
    assert (expected - clean.logits).abs().max() > 1e-2  # the ablation does change the output
    for method in ("naive", "batched"):
        got = run_interventions(model, clean, [Ablation(node)], method=method).values[0]
        torch.testing.assert_close(got, expected, atol=f32_atol(expected), rtol=0)


def test_zero_ablation_keeps_attention_output_bias(ln_model):
    """Zeroing every head of a layer leaves exactly b_O as that layer's attention output."""
    tokens = _tokens(ln_model, 4, seed=2)
    clean = clean_run(ln_model, tokens)
    combo = Combined(tuple(Ablation(Node(1, h)) for h in range(ln_model.cfg.n_heads)))
    cache = _cache(ln_model, tokens, intervention_hooks(ln_model, clean, combo))
    b_O = ln_model.blocks[1].attn.b_O.detach()
    assert b_O.abs().max() > 0.05
    torch.testing.assert_close(cache["blocks.1.hook_attn_out"], b_O.expand_as(cache["blocks.1.hook_attn_out"]),
                               atol=1e-6, rtol=0)


def test_mean_and_resample_values_match_hand_hooks(ln_model):
    tokens, ref_tokens = _tokens(ln_model, 6, seed=1), _tokens(ln_model, 4, seed=9)
    clean = clean_run(ln_model, tokens)
    ref_cache = _cache(ln_model, ref_tokens)
    ref_z = ref_cache["blocks.0.attn.hook_z"][:, :, 1]  # [4, pos, d_head]
    ref_mlp = ref_cache["blocks.1.hook_mlp_out"]  # [4, pos, d_model]

    def set_z(value):
        def hook(z, hp):
            z = z.clone()
            z[:, :, 1] = value
            return z
        return hook

    rows = torch.tensor([0, 1, 2, 3, 0, 1])  # clean row i takes reference row i mod 4
    cases = [
        (Ablation("L0H1", "mean"), [("blocks.0.attn.hook_z", set_z(ref_z.mean(0)))]),
        (Ablation("L0H1", "resample"), [("blocks.0.attn.hook_z", set_z(ref_z[rows]))]),
        (Ablation("M1", "mean"), [("blocks.1.hook_mlp_out", lambda x, hp: ref_mlp.mean(0).expand_as(x))]),
        (Ablation("M1", "resample"), [("blocks.1.hook_mlp_out", lambda x, hp: ref_mlp[rows])]),
    ]
    for intervention, hooks in cases:
        expected = _run(ln_model, tokens, hooks)
        for method in ("naive", "batched"):
            got = run_interventions(ln_model, clean, [intervention], reference=ref_tokens, method=method)
            torch.testing.assert_close(got.values[0], expected, atol=f32_atol(expected), rtol=0)


# ------------------------------------------------------ batched == naive
def _sweep_interventions(model) -> list:
    cfg = model.cfg
    heads, mlps = all_heads(cfg), all_mlps(cfg)
    items: list = [Ablation(n, m) for m in ("zero", "mean", "resample") for n in heads + mlps]
    items += [Ablation(n, "zero", preserve_patterns=True) for n in heads]
    senders = heads[: cfg.n_heads] + mlps[:1]
    for kind in "QKV":
        items += [EdgePatch(Edge(s, Node(1, 1), kind), m) for s in senders for m in ("zero", "resample")]
    items += [EdgePatch(Edge(n, "logits", "direct"), "mean") for n in heads + mlps]
    items += [Combined((Ablation(heads[1]), Ablation(heads[-1], "mean"),
                        EdgePatch(Edge(heads[0], "logits", "direct")))),
              Combined((EdgePatch(Edge(heads[2], Node(1, 0), "K")), Ablation(heads[-2], preserve_patterns=True)))]
    # activation sites from the paired run, at one position or everywhere, and their mean
    col = torch.zeros(5, 15, dtype=torch.bool)
    col[:, 9] = True
    sites = ["L0.resid_pre", "L1.resid_pre", "L0.resid_post", "L1.resid_post", "L0.attn_out", "L1.attn_out",
             "L0H1", "L1H2", "L0H2.q", "L1H1.k", "L1H3.v", "L1H0.q_input", "L0H3.k_input", "L1H2.v_input",
             "L1H1.pattern"]
    if not cfg.attn_only:
        sites += ["M0", "M1"] + ([] if cfg.parallel_attn_mlp else ["L0.resid_mid", "L1.resid_mid"])
    items += [Patch(s, m, at) for s in sites for m, at in (("corrupted", col), ("corrupted", None), ("mean", col))]
    items += [Combined((Patch("L0H1", at=col), Patch("L0.resid_post"), Ablation(heads[-1], "corrupted", at=col),
                        EdgePatch(Edge(heads[0], "logits", "direct"), "corrupted", at=col),
                        Patch("L1.resid_post", "mean", at=col)))]
    return items


@pytest.mark.parametrize("which", ["shipped", "ln", "parallel_gqa"])
def test_batched_sweep_equals_naive_loop(which, shipped, ln_model):
    model = {"shipped": shipped, "ln": ln_model, "parallel_gqa": None}[which] or random_model(seed=4, **PARALLEL_GQA)
    tokens, ref = _tokens(model, 5, seed=1), _tokens(model, 5, seed=2)
    clean = clean_run(model, tokens)
    items = _sweep_interventions(model)
    naive = run_interventions(model, clean, items, reference=ref, method="naive")
    batched = run_interventions(model, clean, items, reference=ref)
    assert naive.n_passes == len(items) and batched.n_passes < len(items) / 4
    assert batched.row_layers < 0.75 * naive.row_layers
    changed = 0
    for name, a, b in zip(naive.names, naive.values, batched.values):
        torch.testing.assert_close(b, a, atol=f32_atol(a), rtol=0, msg=lambda m, name=name: f"{name}: {m}")
        changed += bool((a - clean.logits).abs().max() > 1e-3)
    assert changed > len(items) * 0.7  # most interventions do change the logits
    # one copy per pass (the smallest memory budget) gives the same values
    small = run_interventions(model, clean, items[:12], reference=ref, max_batch=1)
    assert small.n_passes == 12
    for a, b in zip(small.values, batched.values[:12]):
        torch.testing.assert_close(a, b, atol=f32_atol(b), rtol=0)


def test_batched_sweep_of_every_head_with_a_metric(shipped):
    batch = repeated_tokens(65, 64, batch=16, seq_len=10, n_repeats=2, seed=1)
    mask = batch.predictable[:, :-1]

    def loss(logits, tokens, clean_logits=None):  # mean loss on the predictable positions
        nll = -torch.log_softmax(logits[:, :-1], -1).gather(-1, tokens[:, 1:, None])[..., 0]
        return nll[mask].mean()

    items = [Ablation(n, m) for n in all_heads(shipped.cfg) for m in ("zero", "mean", "resample")]
    naive = run_interventions(shipped, batch.tokens, items, loss, method="naive")
    batched = run_interventions(shipped, batch.tokens, items, loss)
    assert batched.n_passes == 2  # all layer-0 heads in one pass, all layer-1 heads in another
    torch.testing.assert_close(batched.stacked(), naive.stacked(), atol=f32_atol(naive.stacked()), rtol=0)
    per_seq = run_interventions(shipped, batch.tokens, items[:2],
                                lambda lg, t, _=None: shipped.loss(t, lg, per_token=True).mean(-1))
    assert per_seq.values[0].shape == (16,)


# ------------------------------------------------------------ path patching
@pytest.mark.parametrize("which", ["shipped", "ln"])
def test_patching_with_the_clean_sender_changes_nothing(which, shipped, ln_model):
    model = shipped if which == "shipped" else ln_model
    tokens = _tokens(model, 4, seed=3)
    clean = clean_run(model, tokens)
    # the reference differs from the clean batch only in its last token, so resampling (which never
    # draws a row from itself) patches in the sender's own activations at every earlier position
    ref_tokens = tokens.clone()
    ref_tokens[:, -1] = (tokens[:, -1] + 1) % model.cfg.d_vocab
    items = [EdgePatch(Edge(s, "L1H1", k), "resample") for s in ("L0H0", "L0H3") for k in "QKV"]
    items += [EdgePatch(Edge("L0H0", "logits", "direct"), "resample")]
    for method in ("naive", "batched"):
        res = run_interventions(model, clean, items, reference=ref_tokens, method=method)
        for v in res.values:
            expected = clean.logits[:, :-1]
            torch.testing.assert_close(v[:, :-1], expected, atol=f32_atol(expected), rtol=0)
            assert not torch.allclose(v[:, -1], clean.logits[:, -1])  # the last position was patched


def test_resampling_never_draws_a_row_from_itself(shipped):
    """With the clean batch as its own reference, row i is resampled from another row (else nothing would
    change); a reference whose rows all equal a clean row is refused."""
    tokens = _tokens(shipped, 4, seed=3)
    clean = clean_run(shipped, tokens)
    ablation = Ablation("L0H0", "resample")
    same = run_interventions(shipped, clean, [ablation], reference=clean).values[0]
    by_hand = run_interventions(shipped, clean, [ablation], reference=tokens.roll(-1, 0)).values[0]
    torch.testing.assert_close(same, by_hand, atol=f32_atol(by_hand), rtol=0)  # row i took row i + 1
    assert (same - clean.logits).abs().max() > 0.1
    with pytest.raises(UsageError, match="every sequence of the reference data equals sequence 0"):
        run_interventions(shipped, tokens[:1], [ablation], reference=tokens[:1])


@pytest.mark.parametrize("which", ["shipped", "ln"])
def test_k_edge_changes_only_the_receivers_pattern(which, shipped64, ln_model64):
    """In float64: the patched run feeds layer 1 per-head inputs (another kernel than the clean
    run's), so what must not change is compared to float64 rounding."""
    model = shipped64 if which == "shipped" else ln_model64
    tokens, ref = _tokens(model, 6, seed=1), _tokens(model, 6, seed=2)
    clean = clean_run(model, tokens)
    clean_cache = _cache(model, tokens)
    recv = 1
    for kind in "KV":
        hooks = intervention_hooks(model, clean, EdgePatch(Edge("L0H0", Node(1, recv), kind)), reference=ref)
        cache = _cache(model, tokens, hooks)
        for name, act in clean_cache.items():  # nothing in layer 0 (or before) changes
            if not name.startswith(("blocks.1", "ln_final")):
                torch.testing.assert_close(cache[name], act, atol=1e-10, rtol=0, msg=name)
        pattern, clean_pattern = cache["pattern", 1], clean_cache["pattern", 1]  # [batch, head, q, k]
        others = [h for h in range(model.cfg.n_heads) if h != recv]
        torch.testing.assert_close(pattern[:, others], clean_pattern[:, others], atol=1e-10, rtol=0)
        z, clean_z = cache["z", 1], clean_cache["z", 1]  # [batch, pos, head, d_head]
        torch.testing.assert_close(z[:, :, others], clean_z[:, :, others], atol=1e-10, rtol=0)
        assert (z[:, :, recv] - clean_z[:, :, recv]).abs().max() > 1e-2
        pattern_change = (pattern[:, recv] - clean_pattern[:, recv]).abs().max()
        if kind == "K":
            assert pattern_change > 1e-2
        else:
            assert pattern_change < 1e-10  # a value edge leaves every pattern alone


def test_direct_edge_moves_logits_by_the_sender_change_times_W_U(shipped):
    tokens, ref = _tokens(shipped, 6, seed=1), _tokens(shipped, 6, seed=5)
    clean = clean_run(shipped, tokens)
    clean_z, ref_z = _cache(shipped, tokens)["z", 1], _cache(shipped, ref)["z", 1]
    W_O, W_U = shipped.W_O.detach()[1, 3], shipped.W_U.detach()  # L1H3
    old = clean_z[:, :, 3] @ W_O  # [batch, pos, d_model]
    for method, new in (("zero", torch.zeros_like(old)), ("resample", ref_z[:, :, 3] @ W_O)):
        expected = clean.logits + (new - old) @ W_U
        for run_method in ("naive", "batched"):
            res = run_interventions(shipped, clean, [EdgePatch(Edge("L1H3", "logits", "direct"), method)],
                                    reference=ref, method=run_method)
            torch.testing.assert_close(res.values[0], expected, atol=1e-4, rtol=0)
        assert (expected - clean.logits).abs().max() > 0.1


# ------------------------------------------------------ frozen patterns
def test_pattern_preserving_ablation(shipped):
    tokens = _tokens(shipped, 6, seed=1)
    clean = clean_run(shipped, tokens)
    clean_cache = _cache(shipped, tokens)
    frozen = _cache(shipped, tokens, intervention_hooks(shipped, clean, Ablation("L0H0", preserve_patterns=True)))
    free = _cache(shipped, tokens, intervention_hooks(shipped, clean, Ablation("L0H0")))
    for l in range(shipped.cfg.n_layers):
        torch.testing.assert_close(frozen["pattern", l], clean_cache["pattern", l], atol=0, rtol=0)
    assert (free["pattern", 1] - clean_cache["pattern", 1]).abs().max() > 0.1
    # closed form: with patterns fixed, the no-norm model is linear in the removed output
    d0 = -(clean_cache["z", 0][:, :, 0] @ shipped.W_O.detach()[0, 0])  # [batch, pos, d_model]
    d1 = torch.zeros_like(d0)
    for g in range(shipped.cfg.n_heads):
        v = d0 @ shipped.W_V.detach()[1, g]  # [batch, pos, d_head]
        z = torch.einsum("bqk,bkd->bqd", clean_cache["pattern", 1][:, g], v)
        d1 += z @ shipped.W_O.detach()[1, g]
    expected = clean.logits + (d0 + d1) @ shipped.W_U.detach()
    for method in ("naive", "batched"):
        got = run_interventions(shipped, clean, [Ablation("L0H0", preserve_patterns=True)], method=method)
        torch.testing.assert_close(got.values[0], expected, atol=1e-4, rtol=0)


# ------------------------------------------- the shipped induction circuit
def test_previous_token_head_effects_on_the_shipped_model(shipped):
    batch = repeated_tokens(65, 64, batch=64, seq_len=10, n_repeats=2, seed=1)
    ref = repeated_tokens(65, 64, batch=64, seq_len=10, n_repeats=2, seed=2)
    mask = batch.predictable[:, :-1]

    def loss(logits, tokens, clean_logits=None):
        nll = -torch.log_softmax(logits[:, :-1], -1).gather(-1, tokens[:, 1:, None])[..., 0]
        return nll[mask].mean()

    clean = clean_run(shipped, batch.tokens)
    base = float(loss(clean.logits, batch.tokens))
    edges = {k: Combined(tuple(EdgePatch(Edge("L0H0", r, k), "resample") for r in INDUCTION_HEADS))
             for k in "KV"}
    res = run_interventions(shipped, clean, [Ablation("L0H0"), edges["K"], edges["V"]], loss, reference=ref.tokens)
    zero, k_edges, v_edges = (float(v) - base for v in res.values)
    assert base < 0.3
    assert zero >= 1.0  # measured +2.53 nats (clean 0.24)
    assert k_edges >= 1.0  # measured +2.47 nats
    assert abs(v_edges) < 0.2 and abs(v_edges) < 0.1 * k_edges  # measured +0.02 nats


# ------------------------------------------------------ positions and the paired run
def _row_mask(batch: int, pos: int, seed: int) -> torch.Tensor:
    """[batch, pos] with two random positions per row (different rows, different positions)."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, pos, dtype=torch.bool)
    for i in range(batch):
        mask[i, torch.randperm(pos, generator=gen)[:2]] = True
    return mask


def test_records_with_positions_compare_by_their_mask():
    m = _row_mask(3, 5, 0)
    assert Ablation("L0H0", at=m) == Ablation("L0H0", at=m.clone())
    assert Ablation("L0H0", at=m) != Ablation("L0H0", at=_row_mask(3, 5, 1)) != Ablation("L0H0")
    assert len({EdgePatch(Edge("L0H0", "L1H0", "K"), at=m), EdgePatch(Edge("L0H0", "L1H0", "K"), at=m.clone())}) == 1
    assert Ablation("L0H0", at=m).name == "zero-ablate L0H0 at 6 positions"
    col = torch.zeros(3, 5, dtype=torch.bool)
    col[:, 2] = True
    assert Ablation("L0H0", "corrupted", at=col).name == "corrupted-ablate L0H0 at pos 2"


@pytest.mark.parametrize("which", ["shipped", "ln"])
def test_ablations_and_edge_patches_at_row_masks_equal_hand_hooks(which, shipped, ln_model):
    """Different positions in every row; "corrupted" takes row i of the paired run."""
    model = shipped if which == "shipped" else ln_model
    tokens, ref = _tokens(model, 5, seed=1), _tokens(model, 5, seed=2)
    b, p = tokens.shape
    clean = clean_run(model, tokens)
    ref_cache, clean_cache = _cache(model, ref), _cache(model, tokens)
    W_O = model.W_O.detach()
    mask = _row_mask(b, p, 3)
    rows, pos = mask.nonzero(as_tuple=True)

    def set_z(layer, h, value):  # value [batch, pos, d_head]
        def hook(z, hp):
            z = z.clone()
            z[rows, pos, h] = value[rows, pos]
            return z
        return f"blocks.{layer}.attn.hook_z", hook

    def add_input(kind, layer, h, delta):  # delta [batch, pos, d_model]
        def hook(x, hp):
            x = x.clone()
            x[rows, pos, h] += delta[rows, pos]
            return x
        return f"blocks.{layer}.attn.hook_{kind}_input", hook

    z0 = ref_cache["z", 0][:, :, 1]  # L0H1 on the paired run [batch, pos, d_head]
    sender = (z0 - clean_cache["z", 0][:, :, 1]) @ W_O[0, 1]  # [batch, pos, d_model]
    final = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    cases = [
        (Ablation("L0H1", at=mask), [set_z(0, 1, torch.zeros_like(z0))]),
        (Ablation("L1H2", "corrupted", at=mask), [set_z(1, 2, ref_cache["z", 1][:, :, 2])]),
        (Ablation("L0H1", "corrupted", preserve_patterns=True, at=mask),
         [set_z(0, 1, z0)] + [(f"blocks.{l}.attn.hook_pattern", lambda x, hp, l=l: clean_cache["pattern", l])
                              for l in range(model.cfg.n_layers)]),
        (EdgePatch(Edge("L0H1", "L1H3", "K"), "corrupted", at=mask), [add_input("k", 1, 3, sender)]),
        (EdgePatch(Edge("L0H1", "L1H0", "Q"), "corrupted", at=mask), [add_input("q", 1, 0, sender)]),
        (EdgePatch(Edge("L0H1", "logits", "direct"), "corrupted", at=mask),
         [(final, lambda x, hp: x + torch.where(mask[..., None], sender, 0))]),
    ]
    if not model.cfg.attn_only:
        mlp = ref_cache["blocks.0.hook_mlp_out"]

        def set_mlp(x, hp):
            x = x.clone()
            x[rows, pos] = mlp[rows, pos]
            return x
        cases.append((Ablation("M0", "corrupted", at=mask), [("blocks.0.hook_mlp_out", set_mlp)]))
    for intervention, hooks in cases:
        expected = _run(model, tokens, hooks)
        assert (expected - clean.logits).abs().max() > 1e-3
        unchanged = (expected - clean.logits)[~mask.cumsum(1).bool()]  # before a row's first masked position
        assert unchanged.abs().max() < 1e-4
        for method in ("naive", "batched"):
            got = run_interventions(model, clean, [intervention], reference=ref, method=method).values[0]
            torch.testing.assert_close(got, expected, atol=f32_atol(expected), rtol=0,
                                       msg=lambda m, i=intervention: f"{i.name}: {m}")


def test_interventions_that_change_nothing_are_not_run(shipped):
    tokens = _tokens(shipped, 4, seed=1)
    ref = tokens.clone()
    ref[:, -1] = (ref[:, -1] + 1) % 64  # the paired prompts differ only in their last token
    clean = clean_run(shipped, tokens)
    early = torch.zeros_like(tokens, dtype=torch.bool)
    early[:, :-1] = True
    items = [Ablation("L0H1", "corrupted", at=early), Ablation("L1H0", "corrupted"),
             EdgePatch(Edge("L0H0", "L1H1", "K"), "corrupted", at=early),
             Combined((Ablation("L0H2", "corrupted", at=early), Ablation("L1H3", "corrupted", at=early)))]
    res = run_interventions(shipped, clean, items, reference=ref)
    naive = run_interventions(shipped, clean, items, reference=ref, method="naive")
    assert res.n_unchanged == 3 and naive.n_unchanged == 0
    for i in (0, 2, 3):
        assert torch.equal(res.values[i], clean.logits)
    for a, b in zip(naive.values, res.values):
        torch.testing.assert_close(b, a, atol=f32_atol(a), rtol=0)
    assert (res.values[1] - clean.logits).abs().max() > 0.1


# ------------------------------------------------------------- bad input
def test_bad_input_gives_usage_errors(shipped):
    tokens = _tokens(shipped, 4, seed=1)
    clean = clean_run(shipped, tokens)
    no_patterns = clean_run(shipped, tokens, patterns=False)
    cases = [
        (lambda: run_interventions(shipped, clean, [Ablation("M0")]), "attention-only"),
        (lambda: run_interventions(shipped, clean, [Ablation("L2H0")]), "no head L2H0"),
        (lambda: run_interventions(shipped, clean, [Ablation("L0H0", "mean")], reference=tokens[:, :5]),
         "positions"),
        (lambda: run_interventions(shipped, tokens[:1], [Ablation("L0H0", "resample")]),
         "every sequence of the reference data equals sequence 0"),
        (lambda: run_interventions(shipped, no_patterns, [Ablation("L0H0", preserve_patterns=True)]),
         "hook_pattern"),
        (lambda: run_interventions(shipped, clean, [Ablation("L0H0")], method="fast"), "method"),
        (lambda: run_interventions(shipped, clean, [Ablation("L0H0")], max_batch=0), "max_batch"),
        (lambda: run_interventions(shipped, clean, ["L0H0"]), "not an intervention"),
        (lambda: run_interventions(shipped, clean, [Ablation("L0H0", "corrupted")]), "needs a reference run"),
        (lambda: run_interventions(shipped, clean, [Ablation("L0H0", "corrupted")], reference=tokens[:2]),
         "the reference has 2 rows"),
        (lambda: run_interventions(shipped, clean, [Ablation("L0H0", at=torch.ones(4, 3, dtype=torch.bool))]),
         r"at has shape \(4, 3\)"),
        (lambda: EdgePatch(Edge("L0H0", "L1H0", "K"), at=torch.ones(4, 3)), "bool mask"),
    ]
    for call, words in cases:
        with pytest.raises(UsageError, match=words):
            call()
