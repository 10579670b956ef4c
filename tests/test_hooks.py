"""Hook points, the activation cache, per-head Q/K/V inputs and folding of norms.

Identities that hold exactly in real arithmetic (a hook that changes nothing, the
cache adding up to the logits) are checked on float64 copies of the models with
tolerances of float64 rounding: in float32, a hooked run takes another kernel
(per-head inputs instead of one fused product) and differs by float32 rounding,
which varies between CPUs (BLAS kernels, vector widths).
"""

from __future__ import annotations

import pytest
import torch
from conftest import f32_atol, random_model
from test_model import reference_forward

from circuitry.data import repeated_tokens
from circuitry.errors import UsageError

LN_MLP = dict(normalization="LN", d_mlp=48, attn_bias=True, mlp_bias=True, unembed_bias=True)
RMS_GQA = dict(normalization="RMS", positional="rotary", rotary_dim=4, d_mlp=48, gated_mlp=True,
               act_fn="silu", n_kv_heads=2)


# float64 rounding after a few layers of d_model-long sums on values up to ~30: ~1e-13
TIGHT = dict(atol=1e-10, rtol=0)


@pytest.fixture(scope="module")
def ln_model():
    return random_model(seed=7, **LN_MLP).double()


def _rand_tokens(model, batch: int, n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, model.cfg.d_vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


def _repeats(model, batch: int = 8, seed: int = 2) -> torch.Tensor:
    return repeated_tokens(model.cfg.d_vocab, model.cfg.bos_token_id, batch=batch, seq_len=10, seed=seed).tokens


def _no_hooks_left(model) -> bool:
    return all(not hp.fns for hp in model.hook_dict.values())


# ---------------------------------------------------------------- patterns, cache
@pytest.mark.parametrize("which", ["shipped", "ln"])
def test_patterns_are_causal_and_normalised(which, shipped64, ln_model):
    model = shipped64 if which == "shipped" else ln_model
    tokens = _repeats(model)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    n = tokens.shape[1]
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    for l in range(model.cfg.n_layers):
        pattern = cache["blocks.%d.attn.hook_pattern" % l]
        assert pattern.shape == (tokens.shape[0], model.cfg.n_heads, n, n)
        assert torch.equal(cache["pattern", l], pattern)
        assert (pattern[..., future] == 0).all()
        assert (pattern[..., ~future] > 0).all()
        torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern[..., 0]), **TIGHT)


def test_cache_reproduces_logits_attn_only(shipped64):
    tokens = _repeats(shipped64)
    with torch.no_grad():
        logits, cache = shipped64.run_with_cache(tokens)
        W_U = shipped64.unembed.W_U
        resid = cache["hook_embed"] + cache["hook_pos_embed"]
        for l in range(2):
            resid = resid + cache[f"blocks.{l}.hook_attn_out"]
            # attn_out = sum over heads of z @ W_O (no b_O in this model)
            z = cache[f"blocks.{l}.attn.hook_z"]  # [batch, pos, head, d_head]
            per_head = torch.einsum("bphe,hed->bpd", z, shipped64.blocks[l].attn.W_O)
            torch.testing.assert_close(per_head, cache[f"blocks.{l}.hook_attn_out"], **TIGHT)
    torch.testing.assert_close(cache["blocks.1.hook_resid_post"] @ W_U, logits, **TIGHT)
    torch.testing.assert_close(resid @ W_U, logits, **TIGHT)


def test_cache_reproduces_logits_layernorm(ln_model):
    model = ln_model
    tokens = _rand_tokens(model, 4, 14, seed=1)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
        x = cache["blocks.1.hook_resid_post"]  # [batch, pos, d_model]
        terms = cache["hook_embed"] + cache["hook_pos_embed"] + sum(
            cache[f"blocks.{l}.hook_attn_out"] + cache[f"blocks.{l}.hook_mlp_out"] for l in range(2))
        torch.testing.assert_close(terms, x, **TIGHT)
        scale = cache["ln_final.hook_scale"]  # [batch, pos, 1]
        assert scale.shape == (4, 14, 1)
        centred = x - x.mean(-1, keepdim=True)
        torch.testing.assert_close(scale, (centred.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt(), **TIGHT)
        sd = model.state_dict()
        recomputed = (centred / scale * sd["ln_final.w"] + sd["ln_final.b"]) @ sd["unembed.W_U"] + sd["unembed.b_U"]
    torch.testing.assert_close(recomputed, logits, **TIGHT)


def test_run_with_cache_selected_names(shipped):
    tokens = _repeats(shipped, batch=2)
    _, cache = shipped.run_with_cache(tokens, names=["blocks.0.attn.hook_pattern"])
    assert list(cache) == ["blocks.0.attn.hook_pattern"]
    _, cache = shipped.run_with_cache(tokens, names=lambda n: n.endswith("hook_z"))
    assert sorted(cache) == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    with pytest.raises(UsageError, match="did you mean 'blocks.0.attn.hook_z'"):
        cache["blocks.0.attn.hook_zz"]
    assert _no_hooks_left(shipped)


# ---------------------------------------------------------- per-head Q / K / V inputs
@pytest.mark.parametrize("kind", ["q", "k", "v"])
@pytest.mark.parametrize("which", ["shipped", "ln"])
def test_own_residual_as_head_input_changes_nothing(kind, which, shipped64, ln_model):
    model = shipped64 if which == "shipped" else ln_model
    tokens = _repeats(model, batch=6)
    name = f"blocks.1.attn.hook_{kind}_input"
    with torch.no_grad():
        clean, cache = model.run_with_cache(tokens, names=["blocks.1.hook_resid_pre"])
        seen = []

        def unchanged(x, hook):
            seen.append(x.shape)
            return x

        same = model.run_with_hooks(tokens, [(name, unchanged)])

        def own(x, hook):
            x = x.clone()
            x[:, :, 2] = cache["blocks.1.hook_resid_pre"]
            return x

        replaced = model.run_with_hooks(tokens, [(name, own)])
    assert seen == [(6, 21, model.cfg.n_heads, model.cfg.d_model)]
    assert same.dtype == torch.float64
    torch.testing.assert_close(same, clean, **TIGHT)
    torch.testing.assert_close(replaced, clean, **TIGHT)


def _patch_from(kind: str, head: int, other: torch.Tensor, p: int):
    """A hook giving `head` the residual `other` [batch, pos, d_model] as its input from position p on."""
    def hook(x, hp):
        x = x.clone()
        x[:, p:, head] = other[:, p:]
        return x
    return hook


@pytest.mark.parametrize("kind", ["q", "k", "v"])
@pytest.mark.parametrize("which", ["shipped", "ln"])
def test_other_residual_as_head_input_is_local(kind, which, shipped64, ln_model):
    model = shipped64 if which == "shipped" else ln_model
    tokens, other_tokens = _repeats(model, batch=6, seed=2), _repeats(model, batch=6, seed=3)
    head, p = 1, 12
    with torch.no_grad():
        clean, clean_cache = model.run_with_cache(tokens, names=["blocks.1.hook_resid_pre"])
        _, other_cache = model.run_with_cache(other_tokens, names=["blocks.1.hook_resid_pre"])
        other = other_cache["blocks.1.hook_resid_pre"]
        patched = model.run_with_hooks(tokens, [(f"blocks.1.attn.hook_{kind}_input",
                                                 _patch_from(kind, head, other, p))])
    diff = (patched - clean).abs().amax(dim=(0, 2))  # [pos]
    assert diff[:p].max() <= 1e-10, diff
    assert (diff[p:] > 1e-4).all() and diff[p:].max() > 0.1, diff
    # and the patched run equals the independent computation with that head's input replaced
    mixed = clean_cache["blocks.1.hook_resid_pre"].clone()
    mixed[:, p:] = other[:, p:]
    want = reference_forward(model, tokens, head_inputs={(1, kind, head): mixed})
    torch.testing.assert_close(patched, want, **TIGHT)


def test_gqa_key_input_is_per_query_head():
    """Query heads 2 and 3 share key head 1; a new key input for head 2 leaves head 3 alone."""
    model = random_model(seed=5, **RMS_GQA).double()
    tokens, other_tokens = _rand_tokens(model, 3, 12, 1), _rand_tokens(model, 3, 12, 2)
    with torch.no_grad():
        _, clean = model.run_with_cache(tokens, names=["blocks.1.attn.hook_pattern", "blocks.1.hook_resid_pre"])
        _, oc = model.run_with_cache(other_tokens, names=["blocks.1.hook_resid_pre"])
        other = oc["blocks.1.hook_resid_pre"]
        logits, cache = model.run_with_cache(
            tokens, names=["blocks.1.attn.hook_pattern"],
            hooks=[("blocks.1.attn.hook_k_input", _patch_from("k", 2, other, 0))])
    before, after = clean["blocks.1.attn.hook_pattern"], cache["blocks.1.attn.hook_pattern"]
    assert (after[:, 2] - before[:, 2]).abs().max() > 1e-2
    for h in (0, 1, 3):
        torch.testing.assert_close(after[:, h], before[:, h], **TIGHT)
    want = reference_forward(model, tokens, head_inputs={(1, "k", 2): other})
    # the model's rotary cos/sin tables are float32 even in a float64 model (angles up to 11 rad,
    # float32 rounding ~1e-6); the reference rotates in float64
    torch.testing.assert_close(logits, want, atol=1e-5, rtol=0)


# ----------------------------------------------------------------- run_with_hooks
def test_replacement_hook_ablates_a_head(shipped64):
    tokens = _repeats(shipped64)
    with torch.no_grad():
        clean, cache = shipped64.run_with_cache(tokens)

        def zero_head(z, hook):
            z = z.clone()
            z[:, :, 3] = 0.0
            return z

        ablated = shipped64.run_with_hooks(tokens, [("blocks.1.attn.hook_z", zero_head)])
        # independently: remove that head's write z @ W_O from the final residual stream
        head_out = cache["blocks.1.attn.hook_z"][:, :, 3] @ shipped64.blocks[1].attn.W_O[3]
        want = (cache["blocks.1.hook_resid_post"] - head_out) @ shipped64.unembed.W_U
    assert (ablated - clean).abs().max() > 0.1
    torch.testing.assert_close(ablated, want, **TIGHT)


def test_reading_hooks_and_predicates(shipped):
    tokens = _repeats(shipped, batch=2)
    seen: dict[str, tuple] = {}

    def record(x, hook):
        seen[hook.name] = tuple(x.shape)  # returns None: the activation is kept

    with torch.no_grad():
        clean = shipped(tokens)
        logits = shipped.run_with_hooks(tokens, [(lambda n: n.endswith("hook_pattern"), record),
                                                 ("hook_embed", record)])
    assert torch.equal(logits, clean)
    assert seen == {"hook_embed": (2, 21, 64), "blocks.0.attn.hook_pattern": (2, 4, 21, 21),
                    "blocks.1.attn.hook_pattern": (2, 4, 21, 21)}


def test_hooks_are_removed_after_runs_and_exceptions(shipped):
    tokens = _repeats(shipped, batch=2)
    with torch.no_grad():
        clean = shipped(tokens)
        shipped.run_with_hooks(tokens, [("blocks.0.hook_resid_pre", lambda x, h: x * 0)])
        assert _no_hooks_left(shipped)
        shipped.run_with_cache(tokens)
        assert _no_hooks_left(shipped)

        def boom(x, hook):
            raise RuntimeError("inside a hook")

        with pytest.raises(RuntimeError, match="inside a hook"):
            shipped.run_with_hooks(tokens, [("blocks.1.attn.hook_z", lambda x, h: x * 2),
                                            ("blocks.1.attn.hook_pattern", boom)])
        assert _no_hooks_left(shipped)
        with pytest.raises(RuntimeError):
            with shipped.hooks([("hook_embed", boom)]):
                shipped(tokens)
        assert _no_hooks_left(shipped)
        assert torch.equal(shipped(tokens), clean)


def test_unknown_hook_name(shipped):
    tokens = _repeats(shipped, batch=1)
    with pytest.raises(UsageError) as info:
        shipped.run_with_hooks(tokens, [("blocks.1.attn.hook_patern", lambda x, h: None)])
    msg = str(info.value)
    assert "'blocks.1.attn.hook_patern'" in msg and "did you mean 'blocks.1.attn.hook_pattern'" in msg
    assert "\n" not in msg
    with pytest.raises(UsageError, match="did you mean 'blocks.0.hook_resid_pre'"):
        shipped.run_with_cache(tokens, names=["blocks.0.hook_resid_pr"])
    assert _no_hooks_left(shipped)


# ------------------------------------------------------------------- folding norms
@pytest.mark.parametrize("overrides, kind", [
    (LN_MLP, "LNPre"),
    (RMS_GQA, "RMSPre"),
    (dict(normalization="LN", parallel_attn_mlp=True, tied_embeddings=True, d_mlp=40, act_fn="gelu_new"), "LNPre"),
    (dict(normalization="RMS", attn_bias=True), "RMSPre"),
], ids=["LN-mlp-biases", "RMS-gated-rotary-gqa", "LN-parallel-tied", "RMS-attn-only"])
def test_fold_layer_norm_keeps_logits(overrides, kind):
    model = random_model(seed=11, **overrides)
    tokens = _rand_tokens(model, 3, 16, seed=4)
    with torch.no_grad():
        before = model(tokens)
        model.fold_layer_norm()
        after = model(tokens)
    assert model.cfg.normalization == kind
    names = list(model.state_dict())
    assert not [n for n in names if ".ln1." in n or ".ln2." in n or n.startswith("ln_final.")], names
    assert not hasattr(model.blocks[0].ln1, "w") and not hasattr(model.ln_final, "w")
    # float32 before and after: the folded weights are rounded to float32 and multiply in another order
    torch.testing.assert_close(after, before, atol=f32_atol(before), rtol=0)
    # the folded model (its float32 weights, run in float64) agrees with the independent computation
    # with weightless norms; rotary tables are float32 in either dtype (see the GQA test)
    with torch.no_grad():
        after64 = model.double()(tokens)
    tol = 1e-5 if model.cfg.positional == "rotary" else TIGHT["atol"]
    torch.testing.assert_close(after64, reference_forward(model, tokens), atol=tol, rtol=0)
    if kind == "LNPre":  # readers of a centred stream are centred along d_model
        assert model.W_Q.sum(dim=2).abs().max() < 1e-5
        assert model.W_U.sum(dim=0).abs().max() < 1e-5


def test_fold_changes_weights_of_a_normed_model():
    """Guard: folding a model with random norm weights really moves weights into the readers."""
    model = random_model(seed=11, **LN_MLP)
    w_q = model.W_Q.clone()
    model.fold_layer_norm()
    assert (model.W_Q - w_q).abs().max() > 1e-2


def test_fold_is_a_no_op_without_norm(shipped):
    import copy

    model = copy.deepcopy(shipped)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.fold_layer_norm()
    after = model.state_dict()
    assert model.cfg.normalization is None and before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
