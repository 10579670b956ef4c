"""Tests of activation patching: `Patch` interventions at positions from a paired run, and the sweeps of
`circuitry.patching`.

Expected values come from an independent loop written here: one
`model.run_with_hooks` per patch, with a hook that copies the source run's
activation at the position (the TransformerLens notebook way). Contrastive
batches are built by hand: clean = BOS + r + r (the second block is
predictable by induction), corrupted = BOS + r + r' (a fresh second block);
the metric is the logit difference between the clean and the corrupted next
token at two positions of the second half.
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import random_model

from circuitry.data import random_ids
from circuitry.diagnostics import CircuitryWarning
from circuitry.errors import UsageError
from circuitry.interventions import (
    Ablation,
    Combined,
    Patch,
    clean_run,
    patched_site_names,
    reference_names,
    reference_run,
    run_interventions,
)
from circuitry.patching import HEAD_KINDS, activation_patching, make_grid
from circuitry.tasks import ContrastiveBatch

ATOL = 1e-5
HALF = 4  # length of each random block: prompts of 1 + 2 * HALF tokens
LN_MLP = dict(normalization="LN", d_mlp=64, attn_bias=True, mlp_bias=True)
HOOKS = {  # what -> hook name, independent of circuitry.names
    "resid_pre": "blocks.{l}.hook_resid_pre", "resid_mid": "blocks.{l}.hook_resid_mid",
    "resid_post": "blocks.{l}.hook_resid_post", "attn_out": "blocks.{l}.hook_attn_out",
    "mlp_out": "blocks.{l}.hook_mlp_out", "heads": "blocks.{l}.attn.hook_z", "q": "blocks.{l}.attn.hook_q",
    "k": "blocks.{l}.attn.hook_k", "v": "blocks.{l}.attn.hook_v", "q_input": "blocks.{l}.attn.hook_q_input",
    "k_input": "blocks.{l}.attn.hook_k_input", "v_input": "blocks.{l}.attn.hook_v_input",
    "pattern": "blocks.{l}.attn.hook_pattern",
}


# ------------------------------------------------------------------ data and metric
def contrastive(model, n: int = 4, seed: int = 0) -> ContrastiveBatch:
    """clean = BOS + r + r, corrupted = BOS + r + r'; answers read at two positions of the second block."""
    cfg = model.cfg
    gen = torch.Generator().manual_seed(seed)
    r = random_ids((n, HALF), cfg.d_vocab, [cfg.bos_token_id], gen)
    fresh = random_ids((n, HALF), cfg.d_vocab, [cfg.bos_token_id], gen)
    bos = torch.full((n, 1), cfg.bos_token_id)
    clean, corrupted = torch.cat([bos, r, r], 1), torch.cat([bos, r, fresh], 1)
    read = torch.tensor([[HALF + 2, 2 * HALF - 1]]).repeat(n, 1)  # [batch, 2]
    none = torch.zeros_like(clean, dtype=torch.bool)
    return ContrastiveBatch(
        tokens=clean, predictable=none, fresh=none, corrupted=corrupted, read=read,
        answer=clean.gather(1, read + 1), wrong=corrupted.gather(1, read + 1)[..., None],
        positions={"B2": torch.full((n, 1), HALF + 1), "ROW": torch.arange(n)[:, None] + 2})


def logit_diff(logits: torch.Tensor, batch: ContrastiveBatch, clean_logits=None) -> torch.Tensor:
    """Mean over rows and read positions of logit[answer] - mean logit[wrong]: [batch, pos, vocab] -> 0-d."""
    rows = torch.arange(logits.shape[0])[:, None]
    at = logits[rows, batch.read]  # [batch, n_read, vocab]
    right = at.gather(-1, batch.answer[..., None])[..., 0]
    wrong = at.gather(-1, batch.wrong).mean(-1)
    return (right - wrong).mean()


def hook_loop(model, base: torch.Tensor, source: torch.Tensor, what: str, metric, per_position: bool) -> torch.Tensor:
    """The notebook way: one run_with_hooks per patch, a hook that copies the source activation in."""
    L, H, n_pos = model.cfg.n_layers, model.cfg.n_heads, base.shape[1]
    names = [HOOKS[what].format(l=l) for l in range(L)]
    with torch.inference_mode():
        _, src = model.run_with_cache(source, names=names)
    per_head = what in HEAD_KINDS
    heads = range(H) if per_head else [None]
    positions = range(n_pos) if per_position else [None]
    out = torch.zeros(L, len(heads), len(positions), dtype=torch.float64)
    for l in range(L):
        for i, h in enumerate(heads):
            for j, p in enumerate(positions):
                def hook(x, hp, s=src[names[l]], h=h, p=p):
                    x = x.clone()
                    at = slice(None) if p is None else p
                    if what == "pattern":  # [batch, head, q, k]: the query rows
                        x[:, h, at] = s[:, h, at]
                    elif h is not None:  # [batch, pos, head, ...]
                        x[:, at, h] = s[:, at, h]
                    else:  # [batch, pos, d_model]
                        x[:, at] = s[:, at]
                    return x
                with torch.inference_mode():
                    out[l, i, j] = float(metric(model.run_with_hooks(base, [(names[l], hook)])))
    shape = (L, H) if per_head else (L,)
    return out.reshape(*shape, n_pos) if per_position else out.reshape(shape)


@pytest.fixture(scope="module")
def mlp_model():
    return random_model(seed=3, **LN_MLP)


def _check(model, what: str, per_position: bool, denoise: bool, method: str = "batched"):
    batch = contrastive(model)
    res = activation_patching(model, batch, what, logit_diff, denoise=denoise, per_position=per_position,
                              method=method)
    base, source = (batch.corrupted, batch.tokens) if denoise else (batch.tokens, batch.corrupted)
    expected = hook_loop(model, base, source, what, lambda logits: logit_diff(logits, batch), per_position)
    assert res.values.shape == expected.shape
    diff = float((res.values - expected).abs().max())
    assert diff < ATOL, f"{what}: max difference {diff:.2e}"
    assert float((expected - (res.corrupted if not denoise else res.clean)).abs().max()) > 1e-2  # patches matter
    return res, diff


# ------------------------------------------------------------------ sweeps == the hook loop
SHIPPED_CASES = [("resid_pre", True), ("resid_post", True), ("attn_out", True), ("heads", False), ("heads", True),
                 ("q", False), ("k", True), ("v", False), ("pattern", True), ("pattern", False), ("q_input", False),
                 ("k_input", False), ("v_input", False)]


@pytest.mark.parametrize("denoise", [False, True], ids=["noising", "denoising"])
@pytest.mark.parametrize("what,per_position", SHIPPED_CASES)
def test_sweeps_on_the_shipped_model_equal_the_hook_loop(shipped, what, per_position, denoise):
    res, _ = _check(shipped, what, per_position, denoise)
    assert res.direction == ("denoising" if denoise else "noising")


@pytest.mark.parametrize("denoise", [False, True], ids=["noising", "denoising"])
@pytest.mark.parametrize("what", ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "heads"])
def test_sweeps_on_a_model_with_mlps_and_layernorm_equal_the_hook_loop(mlp_model, what, denoise):
    _check(mlp_model, what, True, denoise)


@pytest.mark.parametrize("what,per_position", [("mlp_out", True), ("heads", False), ("k", True), ("pattern", False),
                                               ("v_input", False)])
def test_naive_path_gives_the_same_values(mlp_model, what, per_position):
    batch = contrastive(mlp_model, seed=1)
    metric = logit_diff
    batched = activation_patching(mlp_model, batch, what, metric, per_position=per_position)
    naive = activation_patching(mlp_model, batch, what, metric, per_position=per_position, method="naive")
    assert float((batched.values - naive.values).abs().max()) < ATOL
    assert naive.n_passes == batched.n_patches + 2  # the clean and corrupted runs, and one pass per patch
    assert batched.n_passes <= 2 + 2 * mlp_model.cfg.n_layers  # one pass per start stage


# ------------------------------------------------------------------ the result record
def test_result_axes_normalisation_and_unchanged_patches(shipped):
    batch = contrastive(shipped)
    metric = logit_diff
    calls: list[tuple[int, int]] = []
    res = activation_patching(shipped, batch, "heads", metric, per_position=True,
                              progress=lambda done, total: calls.append((done, total)))
    L, H, P = shipped.cfg.n_layers, shipped.cfg.n_heads, batch.tokens.shape[1]
    assert res.dims == ("layer", "head", "pos") and res.values.shape == (L, H, P)
    assert res.layers == ("L0", "L1") and res.heads == ("H0", "H1", "H2", "H3")
    assert res.positions[0] == "0" and res.positions[2] == "2" and res.positions[HALF + 1] == "B2"
    assert res.positions[-1] == "END"  # ROW differs from row to row: its indices keep their numbers
    assert res.clean > res.corrupted + 1.0  # the shipped model copies the repeated block
    torch.testing.assert_close(res.normalised, (res.clean - res.values) / (res.clean - res.corrupted))
    # positions 0..HALF hold the same tokens in both prompts: their activations are equal, nothing is run
    assert res.n_unchanged == L * H * (HALF + 1) and res.n_patches == L * H * P
    assert (res.values[:, :, : HALF + 1] == res.clean).all()
    assert calls and calls[-1] == (res.n_patches, res.n_patches)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    denoised = activation_patching(shipped, batch, "heads", metric)
    assert denoised.dims == ("layer", "head") and denoised.positions == ()
    flip = activation_patching(shipped, batch, "heads", metric, denoise=True)
    assert flip.clean == pytest.approx(res.clean, abs=1e-6) and flip.corrupted == pytest.approx(res.corrupted, abs=1e-6)
    torch.testing.assert_close(flip.normalised, (flip.values - flip.corrupted) / (flip.clean - flip.corrupted))


@pytest.mark.parametrize("denoise", [False, True])
def test_patching_the_whole_residual_stream_at_layer_0_gives_the_other_run(shipped, mlp_model, denoise):
    for model in (shipped, mlp_model):
        batch = contrastive(model)
        res = activation_patching(model, batch, "resid_pre", logit_diff, per_position=False, denoise=denoise)
        target = res.clean if denoise else res.corrupted
        assert res.values.shape == (model.cfg.n_layers,)
        assert abs(float(res.values[0]) - target) < ATOL
        assert abs(float(res.normalised[0]) - 1.0) < 1e-4


def test_no_difference_between_the_runs_is_not_normalised(shipped):
    batch = contrastive(shipped)
    same = ContrastiveBatch(tokens=batch.tokens, predictable=batch.predictable, fresh=batch.fresh,
                            corrupted=batch.tokens.clone(), read=batch.read, answer=batch.answer, wrong=batch.wrong)
    with pytest.warns(CircuitryWarning, match=r"clean run and .* on the corrupted run"):
        res = activation_patching(shipped, same, "attn_out", logit_diff)
    assert torch.isnan(res.normalised).all() and res.n_unchanged == res.n_patches
    assert (res.values == res.clean).all()


# ------------------------------------------------------------------ Patch at positions that differ per row
SITES = ["L0.resid_pre", "L1.resid_mid", "L0.resid_post", "L1.resid_post", "L0.attn_out", "M0", "M1", "L0H1",
         "L1H2", "L1H0.q", "L1H3.k", "L0H2.v", "L1H1.q_input", "L1H0.k_input", "L1H2.v_input", "L1H3.pattern"]


def _row_mask(batch: int, pos: int, seed: int) -> torch.Tensor:
    """Two random positions per row, different in every row."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, pos, dtype=torch.bool)
    for i in range(batch):
        mask[i, torch.randperm(pos, generator=gen)[:2]] = True
    return mask


def _copy_hook(site: str, source_cache, mask: torch.Tensor):
    """A hand-written hook that copies the source activation at the mask's (row, position) pairs."""
    from circuitry.names import parse_site

    s = parse_site(site)
    name = s.hook
    src = source_cache[name]
    rows, pos = mask.nonzero(as_tuple=True)

    def hook(x, hp):
        x = x.clone()
        if s.kind == "pattern":
            x[rows, s.head, pos] = src[rows, s.head, pos]
        elif s.head is not None:
            x[rows, pos, s.head] = src[rows, pos, s.head]
        else:
            x[rows, pos] = src[rows, pos]
        return x
    return name, hook


@pytest.mark.parametrize("denoise", [False, True])
def test_patches_at_row_masks_equal_hand_written_hooks(mlp_model, denoise):
    model = mlp_model
    batch = contrastive(model, n=5, seed=2)
    base, source = (batch.corrupted, batch.tokens) if denoise else (batch.tokens, batch.corrupted)
    b, p = base.shape
    items, expected = [], []
    with torch.inference_mode():
        _, src = model.run_with_cache(source, names=[HOOKS[k].format(l=l) for k in HOOKS for l in range(2)])
        for i, site in enumerate(SITES):
            mask = _row_mask(b, p, seed=i)
            items.append(Patch(site, "corrupted", mask))
            expected.append(model.run_with_hooks(base, [_copy_hook(site, src, mask)]))
        # several sites at once, with different masks: hooks in the order a run meets them
        m1, m2, m3 = _row_mask(b, p, 50), _row_mask(b, p, 51), _row_mask(b, p, 52)
        items.append(Combined((Patch("L0H1", at=m1), Patch("L0.resid_post", at=m2), Patch("L1H0.k", at=m3))))
        expected.append(model.run_with_hooks(base, [_copy_hook("L0H1", src, m1), _copy_hook("L0.resid_post", src, m2),
                                                    _copy_hook("L1H0.k", src, m3)]))
    clean = clean_run(model, base, patterns=False, extra=patched_site_names(items))
    reference = reference_run(model, source, items)
    assert set(reference.cache) == {Patch(s).site.hook for s in SITES}  # what the sites need, no more
    for method in ("batched", "naive"):
        res = run_interventions(model, clean, items, reference=reference, method=method)
        for item, got, want in zip(items, res.values, expected):
            assert (want - clean.logits).abs().max() > 1e-3, item.name
            assert float((got - want).abs().max()) < ATOL, f"{method} {item.name}"
    # tokens as the reference: run_interventions makes the reference run itself
    by_tokens = run_interventions(model, base, items[:3], reference=source)
    for got, want in zip(by_tokens.values, expected[:3]):
        assert float((got - want).abs().max()) < ATOL


def test_zero_mean_and_resample_patches(shipped):
    batch = contrastive(shipped)
    tokens, ref = batch.tokens, batch.corrupted
    mask = _row_mask(*tokens.shape, seed=7)
    rows, pos = mask.nonzero(as_tuple=True)
    with torch.inference_mode():
        _, cache = shipped.run_with_cache(ref, names=["blocks.1.attn.hook_q", "blocks.0.hook_attn_out"])
        _, own = shipped.run_with_cache(tokens, names=["blocks.0.hook_attn_out"])
    q, attn = cache["blocks.1.attn.hook_q"][:, :, 2], cache["blocks.0.hook_attn_out"]  # [batch, pos, ...]

    def set_q(value):
        def hook(x, hp):
            x = x.clone()
            x[rows, pos, 2] = value[rows, pos]
            return x
        return "blocks.1.attn.hook_q", hook

    def set_attn(value):
        def hook(x, hp):
            x = x.clone()
            x[rows, pos] = value[rows, pos]
            return x
        return "blocks.0.hook_attn_out", hook

    # resample from the run's own prompts: row i takes row i + 1 (never itself); from other prompts: row i
    cases = [(Patch("L1H2.q", "zero", mask), set_q(torch.zeros_like(q)), ref),
             (Patch("L1H2.q", "mean", mask), set_q(q.mean(0, keepdim=True).expand_as(q)), ref),
             (Patch("L0.attn_out", "mean", mask), set_attn(attn.mean(0, keepdim=True).expand_as(attn)), ref),
             (Patch("L0.attn_out", "resample", mask), set_attn(own["blocks.0.hook_attn_out"].roll(-1, 0)), tokens),
             (Patch("L0.attn_out", "resample", mask), set_attn(attn), ref)]
    for patch, hook, reference in cases:
        with torch.inference_mode():
            expected = shipped.run_with_hooks(tokens, [hook])
        for method in ("batched", "naive"):
            got = run_interventions(shipped, tokens, [patch], reference=reference, method=method).values[0]
            assert float((got - expected).abs().max()) < ATOL, patch.name


# ------------------------------------------------------------------ bad input
def test_bad_input_gives_usage_errors(shipped):
    batch = contrastive(shipped)
    metric = logit_diff
    tokens = batch.tokens
    bad_mask = torch.ones(3, tokens.shape[1], dtype=torch.bool)
    cases = [
        (lambda: activation_patching(shipped, batch, "mlp_out", metric), "attention-only"),
        (lambda: activation_patching(shipped, batch, "resid_mid", metric), "no L0.resid_mid"),
        (lambda: activation_patching(shipped, batch, "head", metric), "did you mean 'heads'"),
        (lambda: activation_patching(shipped, tokens, "heads", metric), "ContrastiveBatch"),
        (lambda: activation_patching(shipped, batch, "heads", lambda lg, b, c=None: lg[:, 0, 0]), "one number"),
        (lambda: activation_patching(shipped, batch, "heads", lambda lg: lg[0, 0, 0]), r"form fn\(logits\)"),
        (lambda: activation_patching(shipped, batch, "heads", metric, memory_budget=1000), "memory budget"),
        (lambda: Patch("L0H1.query"), "not an activation site"),
        (lambda: Patch("L0H1", "median"), "replacement method"),
        (lambda: Patch("L0H1", at=[[True]]), "bool mask"),
        (lambda: Ablation("L0H1", at=torch.ones(2, 3)), "bool mask"),
        (lambda: Combined((Patch("L0H1"), Ablation("L0H1"))), "L0H1 is replaced more than once"),
        (lambda: Combined((Patch("L0.attn_out"), Patch("L0H1"))), "attn_out is replaced as a whole"),
        (lambda: run_interventions(shipped, tokens, [Patch("L2H0.q")], reference=batch.corrupted), "no head L2H0"),
        (lambda: run_interventions(shipped, tokens, [Patch("L0.mlp_out")], reference=batch.corrupted),
         "attention-only"),
        (lambda: run_interventions(shipped, tokens, [Patch("L0H1")]), "needs a reference run"),
        (lambda: run_interventions(shipped, tokens, [Patch("L0H1")], reference=batch.corrupted[:2]), "row i"),
        (lambda: run_interventions(shipped, tokens, [Patch("L0H1", at=bad_mask)], reference=batch.corrupted),
         r"at has shape \(3, 9\)"),
        (lambda: run_interventions(shipped, clean_run(shipped, tokens), [Patch("L0H1.q", "mean")]),
         "clean run's cache lacks 'blocks.0.attn.hook_q'"),
        (lambda: run_interventions(shipped, tokens, [Patch("L0H1.q")], reference=reference_run(shipped, tokens)),
         "reference run's cache lacks 'blocks.0.attn.hook_q'"),
    ]
    for call, words in cases:
        with pytest.raises(UsageError, match=words):
            call()
    assert reference_names(shipped, [Patch("L1H0.q", "zero"), Ablation("L0H1", "mean")]) == ["blocks.0.attn.hook_z"]
    assert make_grid("pattern", shipped.cfg, 4, 9, True).shape == (2, 4, 9)


# ------------------------------------------------------------------ TransformerLens, where installed
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_transformer_lens_patching_gives_the_same_values(shipped):
    tl = pytest.importorskip("transformer_lens")
    import transformer_lens.patching as tl_patching

    cfg = shipped.cfg
    tl_model = tl.HookedTransformer(tl.HookedTransformerConfig(
        n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_head, d_vocab=cfg.d_vocab,
        n_ctx=cfg.n_ctx, attn_only=True, normalization_type=None, act_fn="relu", seed=0)).eval()
    for p in tl_model.parameters():  # biases the shipped model has none of
        torch.nn.init.zeros_(p)
    _, unexpected = tl_model.load_state_dict(shipped.state_dict(), strict=False)
    assert not unexpected
    batch = contrastive(shipped)
    metric = functools.partial(logit_diff, batch=batch)  # TransformerLens calls metric(logits)
    with torch.no_grad():
        _, clean_cache = tl_model.run_with_cache(batch.tokens)
        pairs = [(tl_patching.get_act_patch_resid_pre, "resid_pre", None),
                 (tl_patching.get_act_patch_attn_head_out_all_pos, "heads", False),
                 (tl_patching.get_act_patch_attn_head_out_by_pos, "heads", True),
                 (tl_patching.get_act_patch_attn_head_pattern_all_pos, "pattern", False)]
        for fn, what, per_position in pairs:
            theirs = fn(tl_model, batch.corrupted, clean_cache, metric)
            if what == "heads" and per_position:
                theirs = theirs.permute(0, 2, 1)  # [layer, pos, head] -> [layer, head, pos]
            ours = activation_patching(shipped, batch, what, logit_diff, denoise=True, per_position=per_position)
            assert float((ours.values - theirs.double()).abs().max()) < 1e-4, what
