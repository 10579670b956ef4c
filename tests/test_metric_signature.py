"""One metric signature, fn(logits, batch, clean_logits=None), in every API that takes a metric.

A sweep given a metric plugin's name, its `Metric` record or a function of that signature measures the same
values, and they equal a hook loop written here (one run_with_hooks per ablation, the loss computed by hand).
Patching with `kl` compares every run with the unpatched clean prompts in both directions, as computed here.
Functions of the older forms (fn(logits), fn(logits, tokens)) are usage errors that say what to add.
"""

from __future__ import annotations

import pytest
import torch

from circuitry.data import random_ids, repeated_tokens
from circuitry.errors import UsageError
from circuitry.interventions import Ablation, clean_run, run_interventions
from circuitry.metricfn import metric_fn, resolve_metric
from circuitry.patching import activation_patching
from circuitry.plugins import get_manager
from circuitry.tasks import ContrastiveBatch

HALF = 4  # contrastive prompts: BOS + r + r (clean), BOS + r + r' (corrupted)


def answer_loss(logits: torch.Tensor, batch, clean_logits=None) -> torch.Tensor:
    """Mean cross-entropy of the next token at the predictable positions, written out: [batch, pos, vocab] -> 0-d."""
    logp = torch.log_softmax(logits[:, :-1].float(), -1)  # [batch, pos-1, vocab]; row t predicts token t+1
    nll = -logp.gather(-1, batch.tokens[:, 1:, None])[..., 0]  # [batch, pos-1]
    return nll[batch.predictable[:, :-1]].mean()


def ablated_loop(model, batch, heads) -> list[float]:
    """The loss with each head's output zeroed: one hooked forward pass per head."""
    out = []
    for l, h in heads:
        def zero(z, hook, h=h):  # z [batch, pos, head, d_head]
            z = z.clone()
            z[:, :, h] = 0.0
            return z
        with torch.inference_mode():
            logits = model.run_with_hooks(batch.tokens, [(f"blocks.{l}.attn.hook_z", zero)])
        out.append(float(answer_loss(logits, batch)))
    return out


def test_a_name_a_record_and_a_function_give_the_hook_loops_values(shipped):
    batch = repeated_tokens(shipped.cfg.d_vocab, shipped.cfg.bos_token_id, batch=8, seq_len=8, seed=3)
    assert not bool(batch.predictable[:, -1].any())  # the last position predicts nothing (no next token)
    heads = [(l, h) for l in range(shipped.cfg.n_layers) for h in range(shipped.cfg.n_heads)]
    items = [Ablation(f"L{l}H{h}") for l, h in heads]
    clean = clean_run(shipped, batch.tokens)
    record = get_manager().get("circuitry_metrics", "loss")
    results = {form: run_interventions(shipped, clean, items, metric, batch=batch)
               for form, metric in (("name", "loss"), ("record", record), ("function", answer_loss))}
    want = torch.tensor(ablated_loop(shipped, batch, heads))
    for form, res in results.items():
        got = torch.tensor([float(v) for v in res.values])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=lambda m, form=form: f"{form}: {m}")
    assert [float(v) for v in results["name"].values] == [float(v) for v in results["record"].values]
    assert float(want.max()) > float(answer_loss(clean.logits, batch)) + 1.0  # the induction heads matter
    # the naive engine calls the metric the same way
    naive = run_interventions(shipped, clean, items[:2], "loss", batch=batch, method="naive")
    torch.testing.assert_close(torch.tensor([float(v) for v in naive.values]), want[:2], atol=1e-5, rtol=0)
    # the bound form, for code that wants fn(logits)
    assert metric_fn("loss", batch)(clean.logits) == pytest.approx(float(answer_loss(clean.logits, batch)), abs=1e-6)


def test_a_sweep_without_a_batch_gives_the_metric_the_tokens(shipped):
    tokens = repeated_tokens(shipped.cfg.d_vocab, shipped.cfg.bos_token_id, batch=4, seq_len=6, seed=1).tokens
    seen: list = []

    def first_token(logits, batch, clean_logits=None):
        seen.append((batch, clean_logits))
        return logits[:, 0, 0].mean()

    clean = clean_run(shipped, tokens)
    run_interventions(shipped, clean, [Ablation("L1H3")], first_token)
    (batch, clean_logits), = seen
    assert batch is clean.tokens and clean_logits is clean.logits


def contrastive(model, n: int = 4, seed: int = 0) -> ContrastiveBatch:
    cfg = model.cfg
    gen = torch.Generator().manual_seed(seed)
    r = random_ids((n, HALF), cfg.d_vocab, [cfg.bos_token_id], gen)
    fresh = random_ids((n, HALF), cfg.d_vocab, [cfg.bos_token_id], gen)
    bos = torch.full((n, 1), cfg.bos_token_id)
    clean, corrupted = torch.cat([bos, r, r], 1), torch.cat([bos, r, fresh], 1)
    read = torch.tensor([[HALF + 2, 2 * HALF - 1]]).repeat(n, 1)  # [batch, 2]
    none = torch.zeros_like(clean, dtype=torch.bool)
    return ContrastiveBatch(tokens=clean, predictable=none, fresh=none, corrupted=corrupted, read=read,
                            answer=clean.gather(1, read + 1), wrong=corrupted.gather(1, read + 1)[..., None])


def kl_by_hand(logits: torch.Tensor, clean_logits: torch.Tensor, read: torch.Tensor) -> float:
    """KL(clean || run) of the next-token distributions at the read positions, mean over them."""
    rows = torch.arange(logits.shape[0])[:, None]
    p = torch.log_softmax(clean_logits[rows, read].double(), -1)  # [batch, n_read, vocab]
    q = torch.log_softmax(logits[rows, read].double(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


@pytest.mark.parametrize("denoise", [False, True], ids=["noising", "denoising"])
def test_patching_with_kl_compares_with_the_clean_prompts_run(shipped, denoise):
    batch = contrastive(shipped)
    res = activation_patching(shipped, batch, "heads", "kl", denoise=denoise)
    with torch.inference_mode():
        clean_logits = shipped(batch.tokens)
        corrupted_logits = shipped(batch.corrupted)
        _, source = shipped.run_with_cache(batch.tokens if denoise else batch.corrupted)
    base = batch.corrupted if denoise else batch.tokens
    want = torch.zeros(shipped.cfg.n_layers, shipped.cfg.n_heads, dtype=torch.float64)
    for l in range(shipped.cfg.n_layers):
        for h in range(shipped.cfg.n_heads):
            name = f"blocks.{l}.attn.hook_z"

            def copy(z, hook, h=h, name=name):  # z [batch, pos, head, d_head]
                z = z.clone()
                z[:, :, h] = source[name][:, :, h]
                return z
            with torch.inference_mode():
                want[l, h] = kl_by_hand(shipped.run_with_hooks(base, [(name, copy)]), clean_logits, batch.read)
    assert res.clean == pytest.approx(0.0, abs=1e-6)
    assert res.corrupted == pytest.approx(kl_by_hand(corrupted_logits, clean_logits, batch.read), abs=1e-5)
    assert res.corrupted > 0.1  # the corrupted prompts change the predictions (measured 0.21 nats)
    torch.testing.assert_close(res.values, want, atol=1e-5, rtol=0)


def test_functions_of_the_older_forms_are_usage_errors(shipped):
    tokens = repeated_tokens(shipped.cfg.d_vocab, shipped.cfg.bos_token_id, batch=2, seq_len=4, seed=0).tokens
    batch = contrastive(shipped)

    def old(logits, tokens):
        return logits.mean()

    with pytest.raises(UsageError, match=r"metrics take \(logits \[batch, pos, d_vocab\], batch, clean_logits=None\)"
                                         r".*the old fn\(logits, tokens\) form: add a batch parameter"):
        run_interventions(shipped, tokens, [Ablation("L0H0")], old)
    with pytest.raises(UsageError, match=r"'old' takes \(logits, tokens\)"):
        activation_patching(shipped, batch, "heads", old)
    with pytest.raises(UsageError, match=r"form fn\(logits\): add the parameters batch and clean_logits=None"):
        activation_patching(shipped, batch, "heads", lambda logits: logits.mean())
    with pytest.raises(UsageError, match=r"a metric is a metric plugin's name, a Metric record or a function"):
        run_interventions(shipped, tokens, [Ablation("L0H0")], 3)
    with pytest.raises(UsageError, match="did you mean 'logit_diff'"):
        resolve_metric("logit_dif")
    assert resolve_metric(lambda logits, *rest: 0.0)(None, None, None) == 0.0  # *args take the three arguments


def test_the_patch_command_measures_kl_as_the_library_does(shipped, capsys):
    """`circuitry patch --metric kl` reads the clean prompts' logits like `activation_patching` (checked against
    the hand computation above): the same values."""
    import json
    from pathlib import Path

    from circuitry.cli import main
    from circuitry.tasks.build import build_batch
    from circuitry.tasks.format import load_task

    task = str(Path(__file__).resolve().parents[1] / "specs/tasks/induction.yaml")
    assert main(["patch", "builtin:attn-only-2l", "--task", task, "--what", "heads", "--metric", "kl", "--json"]) == 0
    (heads,) = json.loads(capsys.readouterr().out)["results"]
    want = activation_patching(shipped, build_batch(load_task(task), shipped), "heads", "kl")
    assert heads["clean"] == pytest.approx(0.0, abs=1e-6) and heads["corrupted"] > 1.0
    assert heads["corrupted"] == pytest.approx(want.corrupted, abs=1e-6)
    torch.testing.assert_close(torch.tensor(heads["values"], dtype=torch.float64), want.values, atol=1e-6, rtol=0)
