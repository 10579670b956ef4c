"""Tests of the batched sweep engine's passes: how many copies share a pass (`pass_rows`, the memory
budget), the lean clean run of a sweep (`sweep_clean_run`), and values of chunked sweeps against a loop
of hand-written hooks, one full forward pass per intervention, written here independently of the engine.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import random_model

from circuitry.budget import ENV
from circuitry.interventions import Ablation, Node, clean_run, patched_site_names, run_interventions
from circuitry.interventions.plan import read_names
from circuitry.interventions.sweep import MIN_PASS_BYTES, pass_bytes, pass_rows, sweep_clean_run
from circuitry.model import ModelConfig

LN_MLP3 = dict(n_layers=3, normalization="LN", d_mlp=64, attn_bias=True, mlp_bias=True)
B, P = 4, 12


@pytest.fixture(scope="module")
def model():
    return random_model(seed=5, **LN_MLP3)


@pytest.fixture(scope="module")
def tokens(model):
    return torch.randint(0, model.cfg.d_vocab, (B, P), generator=torch.Generator().manual_seed(7))


def per_sequence_loss(model):
    def metric(logits, toks, clean_logits=None):  # [batch]: the mean next-token loss of each sequence
        lp = torch.log_softmax(logits[:, :-1], -1)
        return -lp.gather(-1, toks[:, 1:, None])[..., 0].mean(-1)
    return metric


def _mask() -> torch.Tensor:
    at = torch.zeros(B, P, dtype=torch.bool)
    at[:, 5:] = True
    at[0, 2] = True  # rows differ
    return at


def _items(cfg) -> list[Ablation]:
    """Zero, mean and masked zero ablations of every head, zero ablations of every MLP."""
    items = []
    for l in range(cfg.n_layers):
        for h in range(cfg.n_heads):
            items += [Ablation(Node(l, h)), Ablation(Node(l, h), "mean"), Ablation(Node(l, h), at=_mask())]
        items.append(Ablation(Node(l)))
    return items


def hook_loop(model, tokens, items) -> list[torch.Tensor]:
    """One full forward pass per ablation, the change made by a hook on z or the MLP output."""
    metric = per_sequence_loss(model)
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens)
        out = []
        for it in items:
            l, h = it.node.layer, it.node.head
            name = f"blocks.{l}.attn.hook_z" if h is not None else f"blocks.{l}.hook_mlp_out"
            clean = cache[name]  # z [batch, pos, head, d_head] or mlp_out [batch, pos, d_model]
            part = clean[:, :, h] if h is not None else clean
            new = part.mean(0, keepdim=True).expand_as(part) if it.method == "mean" else torch.zeros_like(part)
            if it.at is not None:
                new = torch.where(it.at[:, :, None], new, part)

            def hook(x, hp, h=h, new=new):
                x = x.clone()
                if h is None:
                    x[:] = new
                else:
                    x[:, :, h] = new
                return x

            out.append(metric(model.run_with_hooks(tokens, [(name, hook)]), tokens))
    return out


def _expected_passes(model, items, copies_per_pass: int) -> int:
    """Passes of a sweep: per start stage (a head's: the MLP input of its layer; an MLP's: the next block's
    input), ceil(interventions / copies per pass)."""
    stages: dict[int, int] = {}
    for it in items:
        stage = 2 * it.node.layer + (1 if it.node.is_head else 2)
        stages[stage] = stages.get(stage, 0) + 1
    return sum(math.ceil(n / copies_per_pass) for n in stages.values())


# ------------------------------------------------------------------ chunked sweeps against the hook loop
@pytest.mark.parametrize("copies", [1, 3, 5])
def test_chunked_sweep_equals_the_hook_loop(model, tokens, monkeypatch, copies):
    """The memory budget (CIRCUITRY_MEMORY_BUDGET) caps the copies in a pass; every chunking gives the loop's
    values within 1e-5."""
    items = _items(model.cfg)
    expected = hook_loop(model, tokens, items)
    monkeypatch.setenv(ENV, str(copies * pass_bytes(model.cfg, B, P)))
    res = run_interventions(model, tokens, items, per_sequence_loss(model))
    assert res.n_passes == _expected_passes(model, items, copies)
    assert res.n_unchanged == 0
    for name, got, want in zip(res.names, res.values, expected):
        assert got.shape == (B,)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=lambda m, name=name: f"{name}: {m}")


def test_budget_parameter_and_max_batch_chunk_the_same_way(model, tokens):
    items = _items(model.cfg)[:14]  # the heads of layer 0 (three ablations each) and M0, and one of layer 1
    clean = clean_run(model, tokens)
    metric = per_sequence_loss(model)
    by_budget = run_interventions(model, clean, items, metric, memory_budget=2 * pass_bytes(model.cfg, B, P))
    by_rows = run_interventions(model, clean, items, metric, max_batch=2 * B)
    one_each = run_interventions(model, clean, items, metric, max_batch=1)  # less than a copy: one copy per pass
    assert by_budget.n_passes == by_rows.n_passes == _expected_passes(model, items, 2)
    assert one_each.n_passes == len(items)
    expected = hook_loop(model, tokens, items)
    for res in (by_budget, by_rows, one_each):
        for got, want in zip(res.values, expected):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_a_budget_below_one_copy_still_runs_whole_copies(model, tokens):
    items = [Ablation(Node(1, h)) for h in range(model.cfg.n_heads)]
    res = run_interventions(model, tokens, items, per_sequence_loss(model), memory_budget=1)
    assert res.n_passes == len(items)
    for got, want in zip(res.values, hook_loop(model, tokens, items)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ how many copies share a pass
def test_pass_rows_holds_one_copy_of_a_large_batch():
    """A GPT-2-small-shaped pass of 16 x 128 tokens is larger than MIN_PASS_BYTES: one copy per pass, so
    that a sweep's peak memory stays near one forward pass's, whatever the budget."""
    cfg = ModelConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_vocab=50257, n_ctx=1024, d_mlp=3072,
                      normalization="LN")
    one = pass_bytes(cfg, 16, 128)
    assert one == 4 * 16 * 128 * (12 * 768 + 3 * 3072 + 3 * 12 * 128) > MIN_PASS_BYTES
    assert pass_rows(cfg, 16, 128, budget=2**40) == 16
    assert pass_rows(cfg, 16, 128, budget=one - 1) == 15  # fewer rows than a copy: the sweep runs one copy


def test_pass_rows_stacks_small_batches_up_to_the_floor_and_the_budget():
    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_vocab=50, n_ctx=32, d_mlp=64)
    one = pass_bytes(cfg, B, P)
    copies = MIN_PASS_BYTES // one
    assert copies > 100
    assert pass_rows(cfg, B, P, budget=2**40) == copies * B
    assert pass_rows(cfg, B, P, budget=3 * one) == 3 * B
    assert pass_bytes(cfg, copies * B, P) <= MIN_PASS_BYTES < pass_bytes(cfg, (copies + 1) * B, P)
    # Q/K/V edge patches materialise per-head inputs: a larger estimate, fewer copies
    assert pass_rows(cfg, B, P, budget=2**40, per_head_inputs=True) < copies * B


# ------------------------------------------------------------------ the clean run of a sweep
def test_sweep_clean_run_caches_only_what_the_sweep_reads(model, tokens):
    items = [Ablation(Node(1, h)) for h in range(model.cfg.n_heads)] + [Ablation(Node(2), "mean")]
    lean = sweep_clean_run(model, tokens, items)
    assert set(lean.cache) == {"blocks.1.hook_resid_mid", "blocks.1.attn.hook_z", "blocks.2.hook_mlp_out",
                               "blocks.2.hook_resid_post"}
    assert read_names(model.cfg, [Ablation("L0H1", preserve_patterns=True)]) == (
        ["blocks.0.hook_resid_mid", "blocks.0.attn.hook_z"]
        + [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)])
    full = clean_run(model, tokens)
    torch.testing.assert_close(lean.logits, full.logits, atol=0, rtol=0)
    for name in lean.cache:
        torch.testing.assert_close(lean.cache[name], full.cache[name], atol=0, rtol=0)
    metric = per_sequence_loss(model)
    a = run_interventions(model, lean, items, metric)
    b = run_interventions(model, full, items, metric)
    torch.testing.assert_close(a.stacked(), b.stacked(), atol=0, rtol=0)
    for got, want in zip(a.values, hook_loop(model, tokens, items)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_sweeps_given_tokens_read_a_lean_clean_run_with_every_kind_of_part(model, tokens):
    """run_interventions given tokens caches only what its interventions read; every kind of part (edges from
    embeddings, direct edges, site patches inside a layer, frozen patterns, combinations) gives the values of
    a sweep over the full clean run, and of one hooked pass per intervention."""
    from circuitry.interventions import Combined, Edge, EdgePatch, Patch

    ref = torch.randint(0, model.cfg.d_vocab, (B, P), generator=torch.Generator().manual_seed(8))
    at = _mask()
    # (a resampled or corrupted position embedding is the same at the same positions: it would change nothing)
    items = [EdgePatch(Edge("embed", "L1H0", "K")), EdgePatch(Edge("pos_embed", "M0", "mlp_in"), "zero", at=at),
             EdgePatch(Edge("L0H1", "logits", "direct"), "corrupted"), EdgePatch(Edge("M0", "L2H3", "Q"), "mean"),
             Patch("L1.resid_post"), Patch("L0H2.q_input", at=at), Patch("L2.attn_out", "mean"),
             Patch("L1H3.pattern"), Patch("L2H1.k", "resample"), Ablation("L1H2", preserve_patterns=True),
             Combined((Ablation("L0H1"), Patch("L2H0.pattern"), EdgePatch(Edge("L0H3", "L1H1", "V")))),
             Ablation("M1", "resample", at=at)]
    metric = per_sequence_loss(model)
    lean = run_interventions(model, tokens, items, metric, reference=ref)
    full = run_interventions(model, clean_run(model, tokens, patterns=True, extra=patched_site_names(items)), items,
                             metric, reference=ref)
    naive = run_interventions(model, tokens, items, metric, reference=ref, method="naive")
    assert lean.n_unchanged == 0 and lean.n_passes < len(items)
    for name, a, b, c in zip(lean.names, lean.values, full.values, naive.values):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=lambda m, name=name: f"{name}: {m}")
        torch.testing.assert_close(a, c, atol=1e-5, rtol=0, msg=lambda m, name=name: f"{name}: {m}")


def test_passes_do_not_wait_for_the_device(model, tokens, monkeypatch):
    """Between the first and the last pass nothing asks for a mask's positions or a tensor's values on the host
    (nonzero, item, tolist: on an accelerator each waits for every queued pass); they are found before."""
    from circuitry.interventions import Edge, EdgePatch, Patch

    at = _mask()
    items = [Ablation(Node(l, h), "mean", at=at) for l in range(model.cfg.n_layers) for h in range(2)]
    items += [EdgePatch(Edge("L0H1", "L2H0", "K"), "zero", at=at), Patch("L1.resid_pre", "mean", at=at),
              EdgePatch(Edge("M1", "logits", "direct"), "mean", at=at)]
    events: list[str] = []

    def spy(name):
        real = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            events.append(name)
            return real(self, *args, **kwargs)
        return wrapper

    for name in ("nonzero", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, spy(name))
    res = run_interventions(model, tokens, items, per_sequence_loss(model), max_batch=B,
                            progress=lambda done, total: events.append("pass"))
    monkeypatch.undo()
    assert res.n_passes == len(items) > 2
    passes = [i for i, e in enumerate(events) if e == "pass"]
    assert "nonzero" in events[: passes[0]]  # the masks' positions, found before the first pass
    assert events[passes[0]: passes[-1]] == ["pass"] * (len(passes) - 1)
    for got, want in zip(res.values[:6], hook_loop(model, tokens, items[:6])):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
