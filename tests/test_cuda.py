"""The same analyses on a CUDA device: values equal the CPU's, and forward passes never wait on the host.

Every test here is marked `cuda` and skips where torch sees no CUDA device (conftest.py)."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import REPO

from circuitry.attribution import attribute
from circuitry.data import repeated_tokens
from circuitry.interventions import Ablation, run_interventions
from circuitry.model import HookedTransformer, ModelConfig
from circuitry.patching import activation_patching
from circuitry.scan import scan
from circuitry.sources import load_model
from circuitry.spec import load_spec
from circuitry.tasks.build import build_batch
from circuitry.tasks.format import load_task
from circuitry.verify import verify

pytestmark = pytest.mark.cuda
# CIRCUITRY_TEST_DEVICE=cpu runs these tests on the CPU against itself (a check of the tests, not of CUDA)
DEVICE = os.environ.get("CIRCUITRY_TEST_DEVICE", "cuda")

MLP = ModelConfig(n_layers=3, d_model=64, n_heads=4, d_head=16, d_vocab=200, n_ctx=64, d_mlp=128,
                  normalization="RMS", positional="rotary", n_kv_heads=2, gated_mlp=True, act_fn="silu")


def test_logits_on_cuda_equal_the_cpu_ones():
    cpu = HookedTransformer(MLP, seed=0)
    gpu = HookedTransformer(MLP, seed=0, device=DEVICE)
    tokens = torch.randint(0, 200, (4, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(gpu(tokens.to(DEVICE)).cpu(), cpu(tokens), atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(DEVICE != "cuda", reason="host synchronisation is a CUDA matter")
def test_a_forward_pass_does_not_synchronise_with_the_host():
    model = HookedTransformer(MLP, seed=0, device=DEVICE, dtype=torch.bfloat16)
    tokens = torch.randint(0, 200, (4, 40), device=DEVICE)
    with torch.no_grad():
        model(tokens)  # warm-up (kernels, allocator)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(tokens)
            model.run_with_cache(tokens)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_verify_on_cuda_gives_the_cpu_values():
    spec = load_spec(REPO / "specs/induction.yaml")
    cpu, gpu = verify(spec), verify(spec, device=DEVICE)
    assert gpu.passed
    for a, b in zip(cpu.checks, gpu.checks):
        assert b.value == pytest.approx(a.value, abs=1e-3, rel=1e-3), a.id


def test_scan_and_sweeps_on_cuda_equal_the_cpu_ones():
    cpu = load_model("builtin:attn-only-2l")
    gpu = load_model("builtin:attn-only-2l", device=DEVICE)
    batch = repeated_tokens(cpu.cfg.d_vocab, cpu.cfg.bos_token_id, batch=16, seq_len=10, n_repeats=2, seed=0)
    a, b = scan(cpu, batch), scan(gpu, batch.to(DEVICE))
    for name in a.heads:
        torch.testing.assert_close(b.heads[name].cpu(), a.heads[name], atol=1e-4, rtol=1e-4)
    items = [Ablation(f"L{l}H{h}") for l in range(2) for h in range(4)]

    def loss(logits, tokens, clean_logits=None):
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())
    want = run_interventions(cpu, batch.tokens, items, loss).values
    got = run_interventions(gpu, batch.tokens.to(DEVICE), items, loss).values
    torch.testing.assert_close(torch.tensor([float(v) for v in got]), torch.tensor([float(v) for v in want]),
                               atol=1e-4, rtol=1e-4)


def test_patching_and_attribution_on_cuda_equal_the_cpu_ones():
    cpu = load_model("builtin:attn-only-2l")
    gpu = load_model("builtin:attn-only-2l", device=DEVICE)
    batch = build_batch(load_task(REPO / "specs/tasks/induction.yaml"), cpu)
    gpu_batch = batch.map_tensors(lambda t: t.to(DEVICE))

    def logit_diff(logits, b, clean_logits=None):  # [batch, pos, vocab] -> 0-d
        rows = torch.arange(logits.shape[0], device=logits.device)[:, None]
        at = logits[rows, b.read]
        return (at.gather(-1, b.answer[..., None])[..., 0] - at.gather(-1, b.wrong).mean(-1)).mean()
    a = activation_patching(cpu, batch, "heads", logit_diff)
    b = activation_patching(gpu, gpu_batch, "heads", logit_diff)
    torch.testing.assert_close(torch.as_tensor(b.values).cpu(), torch.as_tensor(a.values), atol=1e-4, rtol=1e-4)
    ea = attribute(cpu, batch, method="eap")
    eb = attribute(gpu, gpu_batch, method="eap")
    torch.testing.assert_close(eb.edge_scores.cpu(), ea.edge_scores, atol=1e-4, rtol=1e-3)
