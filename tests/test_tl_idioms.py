"""TransformerLens idioms on circuitry's model: hook names and short cache keys, run_with_hooks / run_with_cache
with TransformerLens's keywords, backward hooks, per-head results, text <-> tokens, factored OV / QK matrices,
the in-memory conversion of a TransformerLens model and docs/from-transformer-lens.md.

Each result is checked against a computation written here (a linear model's logits worked out by hand, the
gradient of W_E, the materialised product of the factors, the tokenizer called directly) or, where
transformer-lens is installed, against TransformerLens's own outputs on the same weights.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import pytest
import torch
from conftest import has_module, random_model, requires
from doc_pages import REPO, blocks

from circuitry.errors import UsageError
from circuitry.factored import FactoredMatrix
from circuitry.model.hooks import get_act_name
from circuitry.sources import load_model

DOC = REPO / "docs" / "from-transformer-lens.md"
HAS_TL = has_module("transformer_lens")
needs_tl = pytest.mark.skipif(not HAS_TL, reason="transformer_lens is not installed (pip install transformer-lens<4)")
PROMPT = "When Mary and John went to the store, John gave a drink to"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TransformerLens 3.x announces 4.0


@pytest.fixture(scope="module")
def ioi():
    """builtin:ioi-toy: 4 attention-only layers with LayerNorm and a word tokenizer."""
    return load_model("builtin:ioi-toy")


@pytest.fixture(scope="module")
def linear():
    """A model without norms, in float64: its logits are linear in each head's output."""
    return random_model(seed=3, normalization=None).double()


def _tokens(model, batch: int = 3, n: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, model.cfg.d_vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- names
NAMES = [
    (("embed",), "hook_embed"), (("pos_embed",), "hook_pos_embed"), (("scale",), "ln_final.hook_scale"),
    (("resid_pre", 0), "blocks.0.hook_resid_pre"), (("resid_post", 3), "blocks.3.hook_resid_post"),
    (("pattern", 1), "blocks.1.attn.hook_pattern"), (("attn", 1), "blocks.1.attn.hook_pattern"),
    (("attn_logits", 2), "blocks.2.attn.hook_attn_scores"), (("k6",), "blocks.6.attn.hook_k"),
    (("key", 6), "blocks.6.attn.hook_k"), (("q", 1, "a"), "blocks.1.attn.hook_q"),
    (("scale4ln1",), "blocks.4.ln1.hook_scale"), (("scale", 1, "ln2"), "blocks.1.ln2.hook_scale"),
    (("normalized", 27, "ln2"), "blocks.27.ln2.hook_normalized"), (("pre", 2), "blocks.2.mlp.hook_pre"),
    (("mlp_post", 2), "blocks.2.mlp.hook_post"), (("pre5",), "blocks.5.mlp.hook_pre"),
    (("result", 1), "blocks.1.attn.hook_result"), (("attn_out", 3), "blocks.3.hook_attn_out"),
    (("z", "2"), "blocks.2.attn.hook_z"), (("blocks.0.hook_mlp_out",), "blocks.0.hook_mlp_out"),
]


@pytest.mark.parametrize(("args", "expected"), NAMES)
def test_get_act_name_writes_transformer_lens_names(args, expected):
    from circuitry import utils

    assert utils.get_act_name is get_act_name  # one resolver
    assert get_act_name(*args) == expected
    if HAS_TL:
        from transformer_lens.utilities import get_act_name as tl_get_act_name

        assert tl_get_act_name(*args) == expected


def test_get_act_name_differences_and_errors():
    assert get_act_name("q_input", 2) == "blocks.2.attn.hook_q_input"  # where circuitry keeps the per-head inputs
    for bad, match in [((3,), "non-empty string"), (("", 1), "non-empty string"), (("z", -1), "non-negative"),
                       (("z", 1.5), "non-negative"), (("z", True), "non-negative")]:
        with pytest.raises(UsageError, match=match):
            get_act_name(*bad)


def test_cache_short_keys_are_the_hook_names(ioi):
    tokens = ioi.to_tokens(PROMPT)
    with torch.no_grad():
        _, cache = ioi.run_with_cache(tokens)
    last = ioi.cfg.n_layers - 1
    assert cache["embed"] is cache["hook_embed"]
    assert cache["pattern", -1] is cache[f"blocks.{last}.attn.hook_pattern"]
    assert cache["scale", 1, "ln1"] is cache["blocks.1.ln1.hook_scale"]
    assert cache["k2"] is cache["blocks.2.attn.hook_k"] and cache["scale"] is cache["ln_final.hook_scale"]
    # the values: the residual stream entering block 0 is the sum of the embeddings, entering block l + 1
    # what leaves block l
    torch.testing.assert_close(cache["resid_pre", 0], cache["embed"] + cache["pos_embed"], atol=0, rtol=0)
    for l in range(last):
        assert torch.equal(cache["resid_pre", l + 1], cache["resid_post", l])
    assert ("pattern", 1) in cache and ("pattern", 9) not in cache and (3,) not in cache
    with pytest.raises(UsageError, match=r"'blocks.1.hook_scale' is not in the cache \(norms belong to a block: "
                                         r"\('scale', 1, 'ln1'\)"):
        cache["scale", 1]
    with pytest.raises(UsageError, match="cache keys are hook names, short names or"):
        cache[(1, 2)]


# ---------------------------------------------------------------- hooks
def _without_head(model, tokens, layer: int, head: int) -> torch.Tensor:
    """Logits with one head's output removed, computed here: without norms the logits are linear in what
    each head writes, (z @ W_O) @ W_U."""
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names=[f"blocks.{layer}.attn.hook_z"])
        z = cache["z", layer][:, :, head]  # [batch, pos, d_head]
        return logits - z @ model.W_O[layer, head] @ model.W_U


def test_forward_hooks_with_transformer_lens_keywords(linear):
    tokens = _tokens(linear)
    expected = _without_head(linear, tokens, 1, 2)
    seen: list[str] = []

    def zero_head(z, hook):
        seen.append(hook.name)
        z[:, :, 2] = 0.0
        return z

    def zero_head_copy(z, hook):
        seen.append(hook.name)
        out = z.clone()
        out[:, :, 2] = 0.0
        return out

    with torch.no_grad():
        by_name = linear.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", zero_head)])
        by_filter = linear.run_with_hooks(tokens, fwd_hooks=[(lambda n: n == "blocks.1.attn.hook_z", zero_head_copy)])
        positional = linear.run_with_hooks(tokens, [("blocks.1.attn.hook_z", zero_head)])
        recorded: list[str] = []
        unchanged = linear.run_with_hooks(tokens, fwd_hooks=[(lambda n: n.endswith("hook_pattern"),
                                                              lambda x, hook: recorded.append(hook.name))])
    for out in (by_name, by_filter, positional):
        torch.testing.assert_close(out, expected, atol=1e-10, rtol=0)
    assert seen == ["blocks.1.attn.hook_z"] * 3
    assert recorded == [f"blocks.{l}.attn.hook_pattern" for l in range(linear.cfg.n_layers)]
    with torch.no_grad():
        torch.testing.assert_close(unchanged, linear(tokens), atol=0, rtol=0)  # a hook returning None
    assert all(not hp.active for hp in linear.hook_dict.values())


def test_hooks_that_stay_and_reset(linear):
    tokens = _tokens(linear)
    expected = _without_head(linear, tokens, 1, 1)

    def zero(z, hook):
        z[:, :, 1] = 0.0

    with torch.no_grad():
        first = linear.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", zero)], reset_hooks_end=False)
        kept = linear(tokens)  # the hook is still there
        linear.reset_hooks()
        clean = linear(tokens)
        linear.add_hook(lambda n: n == "blocks.1.attn.hook_z", zero)
        by_model = linear(tokens)
        linear.reset_hooks()
        linear.hook_dict["blocks.1.attn.hook_z"].add_hook(zero, dir="fwd")
        by_point = linear(tokens)
        linear.hook_dict["blocks.1.attn.hook_z"].remove_hooks()
    for out in (first, kept, by_model, by_point):
        torch.testing.assert_close(out, expected, atol=1e-10, rtol=0)
    assert (clean - expected).abs().max() > 1e-3
    assert all(not hp.active for hp in linear.hook_dict.values())
    assert linear.mod_dict["blocks.1.attn"] is linear.blocks[1].attn
    assert linear.mod_dict["blocks.1.attn.hook_z"] is linear.hook_dict["blocks.1.attn.hook_z"]


def test_hook_errors_are_usage_errors(linear):
    tokens = _tokens(linear)
    with pytest.raises(UsageError, match=r"unknown hook point 'blocks.0.attn.hook_zz' \(did you mean "
                                         r"'blocks.0.attn.hook_z'\?\)"):
        linear.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_zz", lambda x, h: None)])
    with pytest.raises(UsageError, match=r"each hook is a pair \(hook name or filter over names, fn"):
        linear.run_with_hooks(tokens, fwd_hooks=["blocks.0.attn.hook_z"])
    with pytest.raises(UsageError, match="run_with_cache has no option 'incl_bwd'"):
        linear.run_with_cache(tokens, incl_bwd=True)
    with pytest.raises(UsageError, match=r"has no option 'retrun_type' \(did you mean 'return_type'\?\)"):
        linear.run_with_hooks(tokens, retrun_type="loss")
    with pytest.raises(UsageError, match="hook direction must be one of fwd, bwd"):
        linear.add_hook("hook_embed", lambda x, h: None, dir="forward")
    with pytest.raises(UsageError, match="return_type must be one of"):
        linear(tokens, return_type="probs")
    assert all(not hp.active for hp in linear.hook_dict.values())  # nothing half-attached


def test_backward_hooks_see_and_replace_the_gradient(linear):
    model = random_model(seed=5, normalization="LN", d_mlp=48).double()  # untied: W_E reaches the loss only
    tokens = _tokens(model)  # through hook_embed
    grads = {}

    def save(grad, hook):
        grads[hook.name] = grad.clone()

    loss = model.run_with_hooks(tokens, return_type="loss", bwd_hooks=[("hook_embed", save)])
    assert all(not hp.active for hp in model.hook_dict.values())  # removed after the run; still fire below
    loss.backward()
    g = grads["hook_embed"]  # [batch, pos, d_model]
    expected = torch.zeros_like(model.W_E).index_add_(0, tokens.flatten(), g.flatten(0, 1))
    torch.testing.assert_close(model.W_E.grad, expected, atol=1e-12, rtol=0)
    assert expected.abs().max() > 1e-4
    torch.testing.assert_close(loss, model.loss(tokens), atol=1e-12, rtol=0)
    model.zero_grad()
    # a returned tensor replaces the gradient: none reaches W_E, W_U's is untouched
    w_u_grad = torch.autograd.grad(model(tokens, return_type="loss"), model.unembed.W_U)[0]
    model.run_with_hooks(tokens, return_type="loss",
                         bwd_hooks=[("hook_embed", lambda grad, hook: torch.zeros_like(grad))]).backward()
    assert torch.equal(model.W_E.grad, torch.zeros_like(model.W_E))
    torch.testing.assert_close(model.unembed.W_U.grad, w_u_grad, atol=1e-12, rtol=0)


# ---------------------------------------------------------------- run_with_cache
def test_run_with_cache_names_filter_and_batch_dim(ioi):
    tokens = ioi.to_tokens([PROMPT, "Then Mary and John had a long argument, and afterwards Mary said to"])
    name = "blocks.2.hook_resid_pre"
    with torch.no_grad():
        logits, full = ioi.run_with_cache(tokens)
        _, by_str = ioi.run_with_cache(tokens, names_filter=name)
        _, by_list = ioi.run_with_cache(tokens, names_filter=[name, "hook_embed"])
        _, by_filter = ioi.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_v"))
        _, by_position = ioi.run_with_cache(tokens, [name])
        one_logits, one = ioi.run_with_cache(tokens[:1], remove_batch_dim=True)
    assert list(by_str) == [name] == list(by_position) and set(by_list) == {name, "hook_embed"}
    assert list(by_filter) == [f"blocks.{l}.attn.hook_v" for l in range(ioi.cfg.n_layers)]
    assert torch.equal(by_str[name], full[name])
    assert not any(k.endswith(("hook_result", "_input", "hook_normalized")) for k in full)
    assert one["pattern", 1].shape == full["pattern", 1].shape[1:] and not one.has_batch_dim
    for key in ("embed", ("pattern", 1), ("resid_post", 3), ("scale", 0, "ln1")):  # (the first prompt is the
        torch.testing.assert_close(one[key], full[key][0], atol=1e-5, rtol=0)  # longer: no padding in it)
    torch.testing.assert_close(one_logits[0], logits[0], atol=1e-5, rtol=0)
    with pytest.raises(UsageError, match="remove_batch_dim needs a run of one prompt; this cache has batch size 2"):
        ioi.run_with_cache(tokens, remove_batch_dim=True)
    with pytest.raises(UsageError, match="names or names_filter"):
        ioi.run_with_cache(tokens, [name], names_filter=[name])
    with pytest.raises(UsageError, match="unknown hook point 'blocks.2.hook_resid_pr'"):
        ioi.run_with_cache(tokens, names_filter="blocks.2.hook_resid_pr")


def test_per_head_results(ioi):
    tokens = ioi.to_tokens(PROMPT)
    with torch.no_grad():
        clean = ioi(tokens)
        ioi.set_use_attn_result(True)
        try:
            logits, cache = ioi.run_with_cache(tokens)
        finally:
            ioi.set_use_attn_result(False)
        by_result = ioi.run_with_hooks(tokens, fwd_hooks=[("blocks.3.attn.hook_result",
                                                           lambda r, hook: r.index_fill(2, torch.tensor([1]), 0.0))])
        by_z = ioi.run_with_hooks(tokens, fwd_hooks=[("blocks.3.attn.hook_z",
                                                      lambda z, hook: z.index_fill(2, torch.tensor([1]), 0.0))])
    torch.testing.assert_close(logits, clean, atol=1e-5, rtol=0)
    for l in range(ioi.cfg.n_layers):
        result = cache["result", l]  # [batch, pos, head, d_model]
        assert result.shape == (1, tokens.shape[1], ioi.cfg.n_heads, ioi.cfg.d_model)
        expected = torch.einsum("bphe,hed->bphd", cache["z", l], ioi.W_O[l])
        torch.testing.assert_close(result, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(result.sum(2) + ioi.b_O[l], cache["attn_out", l], atol=1e-5, rtol=0)
    torch.testing.assert_close(by_result, by_z, atol=1e-5, rtol=0)
    assert (by_z - clean).abs().max() > 1e-2


# ---------------------------------------------------------------- text
def test_text_through_the_word_tokenizer(ioi):
    tok = ioi.tokenizer
    bos = ioi.cfg.bos_token_id
    tokens = ioi.to_tokens(PROMPT)
    assert tokens.tolist() == [[bos, *tok.encode(PROMPT)]]
    assert ioi.to_tokens(PROMPT, prepend_bos=False).tolist() == [tok.encode(PROMPT)]
    assert ioi.to_str_tokens(PROMPT) == ["<bos>", *tok.tokenize(PROMPT)]
    assert ioi.to_str_tokens(tokens) == ioi.to_str_tokens(tokens[0]) == [tok.decode([i]) for i in tokens[0].tolist()]
    assert ioi.to_string(tokens[0, 1:]) == PROMPT and ioi.to_string(tokens[:, 1:]) == [PROMPT]
    two = ioi.to_tokens([PROMPT, "John gave"])
    assert two.shape == (2, tokens.shape[1]) and two[1].tolist()[:3] == [bos, *tok.encode("John gave")]
    assert set(two[1, 3:].tolist()) == {tok.pad_token_id}
    with torch.no_grad():
        torch.testing.assert_close(ioi(PROMPT), ioi(tokens), atol=0, rtol=0)
        torch.testing.assert_close(ioi(PROMPT, prepend_bos=False), ioi(tokens[:, 1:]), atol=0, rtol=0)
        loss = ioi(PROMPT, return_type="loss")
        logits, both_loss = ioi(tokens, return_type="both")
    torch.testing.assert_close(loss, ioi.loss(tokens), atol=0, rtol=0)
    assert torch.equal(both_loss, loss) and torch.equal(logits, ioi(tokens).detach()) and ioi(tokens, None) is None
    with pytest.raises(UsageError, match="to_str_tokens takes one sequence of ids, got a batch of 2"):
        ioi.to_str_tokens(two)


def test_models_without_a_tokenizer_say_so(shipped):
    with pytest.raises(UsageError, match=r"model 'attn-only-2l' has no tokenizer \(.*\); pass token ids"):
        shipped.to_tokens("hello")
    with pytest.raises(UsageError, match="has no tokenizer"):
        shipped("hello")


@requires("transformers")
def test_text_through_a_hugging_face_tokenizer():
    model = load_model("builtin:neox-induction")
    tok = model.tokenizer
    text = "abc abd"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert model.to_tokens(text).tolist() == [[model.cfg.bos_token_id, *ids]]
    assert model.to_str_tokens(text, prepend_bos=False) == [tok.decode([i]) for i in ids]
    assert model.to_string(torch.tensor(ids)) == tok.decode(ids)


# ---------------------------------------------------------------- factored matrices
@pytest.fixture(scope="module")
def factors():
    gen = torch.Generator().manual_seed(11)
    A = torch.randn(2, 3, 10, 4, generator=gen, dtype=torch.float64)  # [layer, head, ldim, mdim]
    B = torch.randn(2, 3, 4, 10, generator=gen, dtype=torch.float64)
    return A, B


def test_factored_matrix_against_the_materialised_product(factors):
    A, B = factors
    fm, M = FactoredMatrix(A, B), A @ B  # M [2, 3, 10, 10]
    assert fm.shape == M.shape and (fm.ldim, fm.mdim, fm.rdim) == (10, 4, 10)
    torch.testing.assert_close(fm.AB, M)
    torch.testing.assert_close(fm.BA, B @ A)
    torch.testing.assert_close(fm.norm(), torch.linalg.matrix_norm(M))
    U, S, V = fm.svd()
    assert U.shape == (2, 3, 10, 4) and S.shape == (2, 3, 4) and V.shape == (2, 3, 10, 4)
    torch.testing.assert_close(U @ torch.diag_embed(S) @ V.mT, M)
    torch.testing.assert_close(fm.Vh, V.mT)
    torch.testing.assert_close(S, torch.linalg.svdvals(M)[..., :4])
    eye = torch.eye(4, dtype=torch.float64).expand(2, 3, 4, 4)
    torch.testing.assert_close(U.mT @ U, eye)
    torch.testing.assert_close(V.mT @ V, eye)
    # AB's eigenvalues: BA's 4 and 6 zeros
    full = torch.linalg.eigvals(M[1, 2])
    ours = fm[1, 2].eigenvalues
    big = full[full.abs().argsort(descending=True)][:4]
    assert ours.shape == (4,)
    for e in ours:
        assert (big - e).abs().min() < 1e-9
    assert full.abs().sort().values[:6].max() < 1e-9


def test_factored_matrix_indexing_and_products(factors):
    A, B = factors
    fm, M = FactoredMatrix(A, B), A @ B
    torch.testing.assert_close(fm[1].AB, M[1])
    torch.testing.assert_close(fm[1, 2].AB, M[1, 2])
    torch.testing.assert_close(fm[:, 1].AB, M[:, 1])
    torch.testing.assert_close(fm[1, 2, 3:7].AB, M[1, 2, 3:7])
    torch.testing.assert_close(fm[1, 2, 3, 5:].AB, M[1, 2, 3:4, 5:])
    gen = torch.Generator().manual_seed(12)
    R = torch.randn(10, 6, generator=gen, dtype=torch.float64)
    L = torch.randn(5, 10, generator=gen, dtype=torch.float64)
    v = torch.randn(10, generator=gen, dtype=torch.float64)
    torch.testing.assert_close((fm @ R).AB, M @ R)
    torch.testing.assert_close((L @ fm).AB, L @ M)
    torch.testing.assert_close((L @ fm[0, 1] @ R).norm(), torch.linalg.matrix_norm(L @ M[0, 1] @ R))
    torch.testing.assert_close(fm @ v, M @ v)
    torch.testing.assert_close(v @ fm, v @ M)
    torch.testing.assert_close((fm[0, 0] @ fm[1, 1]).AB, M[0, 0] @ M[1, 1])
    torch.testing.assert_close((fm * 3.0).AB, 3 * M)
    torch.testing.assert_close(fm.T.AB, M.mT)
    with pytest.raises(UsageError, match="cannot multiply a FactoredMatrix"):
        fm @ torch.zeros(7, 3, dtype=torch.float64)
    with pytest.raises(UsageError, match="needs A"):
        FactoredMatrix(A, B[..., :3, :])
    with pytest.raises(UsageError, match="too long"):
        fm[0, 0, 0, 0, 0]
    with pytest.raises(UsageError, match="BA needs a square matrix"):
        _ = FactoredMatrix(A, B[..., :5]).BA


def test_model_ov_and_qk(ioi):
    with torch.no_grad():
        W_V, W_O, W_Q, W_K = ioi.W_V, ioi.W_O, ioi.W_Q, ioi.W_K
        OV, QK = ioi.OV, ioi.QK
        assert OV.shape == (ioi.cfg.n_layers, ioi.cfg.n_heads, ioi.cfg.d_model, ioi.cfg.d_model)
        torch.testing.assert_close(OV.AB, torch.einsum("lhme,lhen->lhmn", W_V, W_O))
        torch.testing.assert_close(QK[2, 1].AB, W_Q[2, 1] @ W_K[2, 1].T)
        torch.testing.assert_close(OV.norm(), torch.linalg.matrix_norm(W_V @ W_O), atol=1e-5, rtol=1e-5)


@needs_tl
def test_factored_matrix_agrees_with_transformer_lens(factors):
    from transformer_lens import FactoredMatrix as TLFactored

    A, B = factors
    ours, theirs = FactoredMatrix(A, B), TLFactored(A, B)
    torch.testing.assert_close(ours.norm(), theirs.norm())
    torch.testing.assert_close(ours.S, theirs.S)
    torch.testing.assert_close(ours[1, 0, 2:].AB, theirs[1, 0, 2:].AB)
    for a, b in zip(ours[0, 2].eigenvalues.tolist(), theirs[0, 2].eigenvalues.tolist(), strict=True):
        assert abs(a - b) < 1e-9 or any(abs(a - c) < 1e-9 for c in theirs[0, 2].eigenvalues.tolist())


# ---------------------------------------------------------------- TransformerLens models
def _randomise(tl_model, seed: int) -> None:
    """Weights far from TransformerLens's small initialisation, so that every layer matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in tl_model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith((".w",)):
                p.copy_(1 + 0.3 * noise)
            elif p.ndim == 1 or ".b_" in name:
                p.copy_(0.3 * noise)
            else:
                embedding = name.startswith(("embed", "pos_embed"))
                p.copy_(noise * (0.5 if embedding else 1.5) / (1 if embedding else p.shape[-2]) ** 0.5)


CACHED = ["hook_embed", "hook_pos_embed", "blocks.0.ln1.hook_scale", "blocks.0.attn.hook_q", "blocks.1.attn.hook_k",
          "blocks.1.attn.hook_v", "blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_z",
          "blocks.1.attn.hook_result", "blocks.0.hook_attn_out", "blocks.0.mlp.hook_pre", "blocks.1.mlp.hook_post",
          "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post", "ln_final.hook_scale"]


@needs_tl
def test_convert_tl_model_matches_transformer_lens():
    import transformer_lens as tl_lib
    from transformer_lens import utils as tl_utils

    from circuitry_plugins.tl import convert_tl_model

    cfg = tl_lib.HookedTransformerConfig(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=128, d_vocab=100,
                                         n_ctx=32, act_fn="gelu", normalization_type="LN", use_attn_result=True,
                                         seed=0)
    tl_model = tl_lib.HookedTransformer(cfg).eval()
    _randomise(tl_model, 1)
    model = convert_tl_model(tl_model)
    assert model.use_attn_result and model.cfg.normalization == "LN" and model.cfg.d_mlp == 128
    tokens = torch.randint(0, 100, (3, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref_logits, ref_cache = tl_model.run_with_cache(tokens)
        logits, cache = model.run_with_cache(tokens)
    assert float(ref_logits.std()) > 0.5
    assert float((logits - ref_logits).abs().max()) < 1e-5
    for name in CACHED:
        assert name in cache
        assert float((cache[name] - ref_cache[name]).abs().max()) < 1e-5, name
    assert float((cache["pattern", -1] - ref_cache["pattern", -1]).abs().max()) < 1e-5

    def double_head(z, hook):  # the same TransformerLens hook on both models
        z[:, :, 3] *= 2
        return z

    with torch.no_grad():
        ref = tl_model.run_with_hooks(tokens, fwd_hooks=[(tl_utils.get_act_name("z", 0), double_head)])
        ours = model.run_with_hooks(tokens, fwd_hooks=[(get_act_name("z", 0), double_head)])
    assert float((ours - ref).abs().max()) < 1e-5 and float((ref - ref_logits).abs().max()) > 0.1


@needs_tl
def test_convert_tl_model_refuses_what_is_not_a_transformer_lens_model(shipped):
    from circuitry.errors import ModelLoadError
    from circuitry_plugins.tl import convert_tl_model

    with pytest.raises(ModelLoadError, match="expected a TransformerLens HookedTransformer"):
        convert_tl_model(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------- the docs page
def _tl_twin(model):
    """A TransformerLens HookedTransformer with the weights of an attention-only circuitry model."""
    import transformer_lens as tl_lib

    c = model.cfg
    cfg = tl_lib.HookedTransformerConfig(n_layers=c.n_layers, d_model=c.d_model, n_heads=c.n_heads, d_head=c.d_head,
                                         d_vocab=c.d_vocab, n_ctx=c.n_ctx, attn_only=True, eps=c.norm_eps,
                                         normalization_type=c.normalization, act_fn="gelu", seed=0)
    twin = tl_lib.HookedTransformer(cfg)
    state = twin.state_dict()
    ours = model.state_dict()
    assert set(ours) <= set(state)
    for key, value in state.items():  # biases circuitry's model does not have are zero
        state[key] = ours[key].clone() if key in ours else (torch.zeros_like(value) if ".b_" in key else value)
    twin.load_state_dict(state)
    return twin.eval()


def _same(ours, theirs, where: str) -> None:
    """Values of a circuitry run and a TransformerLens run agree (tensors within 1e-4)."""
    if isinstance(ours, torch.Tensor):
        assert isinstance(theirs, torch.Tensor) and ours.shape == theirs.shape, where
        torch.testing.assert_close(ours.detach(), theirs.detach(), atol=1e-4, rtol=0, check_dtype=False,
                                   msg=lambda m: f"{where}: {m}")  # (masked scores: -inf in both)
    elif isinstance(ours, FactoredMatrix):
        _same(ours.AB, theirs.AB, where)
    elif isinstance(ours, Mapping) and hasattr(ours, "cache_dict"):  # caches: every shared activation
        common = set(ours) & set(theirs.keys())
        assert len(common) >= len(ours) // 2, where
        for k in common:
            _same(ours[k], theirs[k], f"{where} {k}")
    elif isinstance(ours, (list, tuple)):
        assert len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            _same(a, b, f"{where}[{i}]")
    elif isinstance(ours, float):
        assert abs(ours - theirs) < 1e-4, where
    else:
        assert ours == theirs, where


def _table() -> list[tuple[str, str, str]]:
    rows = re.findall(r"^\| ([^|]+?) \| `(.+?)` \| `(.+?)` \|$", DOC.read_text(), flags=re.M)
    assert len(rows) >= 10
    return rows


TEXT_CALLS = ("to_tokens", "to_str_tokens", "to_string")  # the twin has no tokenizer
SETUP_ROWS = {"load a model", "a TransformerLens model in memory"}  # the documented changes


def _namespaces(ioi):
    """The docs page's python blocks run on circuitry's model, and (with transformer-lens) the TransformerLens
    user's blocks, with `from transformer_lens import utils`, run on the same weights in TransformerLens."""
    code = blocks(DOC, "python")
    ours = {"__name__": "doc"}
    for i, block in enumerate(code):
        exec(compile(block, f"{DOC.name}[block {i}]", "exec"), ours)  # noqa: S102 - the docs' own examples
    if not HAS_TL:
        return ours, None
    from transformer_lens import utils as tl_utils

    theirs = {"__name__": "doc-tl", "model": _tl_twin(ours["model"]), "tokens": ours["tokens"],
              "prompt": ours["prompt"]}
    for i, block in enumerate(code[1:], 1):
        assert "from circuitry import utils" in block or "circuitry" not in block
        block = block.replace("from circuitry import utils", "from transformer_lens import utils")
        exec(compile(block, f"{DOC.name}[block {i}, TransformerLens]", "exec"), theirs)  # noqa: S102
    assert theirs["utils"] is tl_utils
    return ours, theirs


def test_docs_page_runs_and_agrees_with_transformer_lens(ioi):
    ours, theirs = _namespaces(ioi)
    # the circuitry run, checked: the model predicts the indirect object
    assert ours["model"].to_string(ours["answer"]) == "Mary"
    assert ours["str_tokens"][:3] == ["<bos>", "When", "Mary"]
    assert ours["seen"] == [f"blocks.{l}.attn.hook_pattern" for l in range(4)]
    assert ours["embed_grad"].shape == ours["tokens"].shape + (64,) and ours["embed_grad"].abs().max() > 0
    assert ours["head_out"].shape == (1, 15, 4, 64)
    assert float((ours["ablated"] - ours["logits"]).detach().abs().max()) > 0.01
    if theirs is None:
        pytest.skip("transformer_lens is not installed: the page ran on circuitry only")
    for key in ("logits", "answer", "pattern", "resid", "embed", "final_scale", "ablated", "seen", "same",
                "z_cache", "last_resid", "head_out", "loss", "embed_grad", "ov_norms", "S", "eigenvalues", "full_ov",
                "copying", "qk_norms"):
        _same(ours[key], theirs[key], key)
    torch.testing.assert_close(ours["U"] @ torch.diag(ours["S"]) @ ours["V"].T, ours["OV"][3, 1].AB, atol=1e-5,
                               rtol=0)


def test_docs_table_cells_run_and_agree_with_transformer_lens(ioi):
    ours, theirs = _namespaces(ioi)
    extra = {"name": "blocks.1.attn.hook_z", "fn": lambda x, hook: x * 0.5}
    for idiom, tl_cell, our_cell in _table():
        if idiom in SETUP_ROWS:
            assert tl_cell != our_cell
            continue
        assert tl_cell == our_cell, f"{idiom}: the columns differ"
        with torch.no_grad():
            value = eval(our_cell, {**ours, **extra})  # noqa: S307 - the docs' own examples
            if theirs is not None and not any(call in tl_cell for call in TEXT_CALLS):
                _same(value, eval(tl_cell, {**theirs, **extra}), idiom)  # noqa: S307
    assert all(not hp.active for hp in ours["model"].hook_dict.values())


def test_transformer_lens_extra_is_declared():
    text = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^tl = \["transformer-lens>=2,<4"\]', text, flags=re.M)

