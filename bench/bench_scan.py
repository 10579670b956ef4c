"""Benchmark: the full scan of a GPT-2-small-shaped model against a naive reference.

Model: 12 layers, 12 heads, d_model 768, d_head 64, d_mlp 3072, LayerNorm,
vocabulary 50257, random weights. Data: 16 x 128 tokens (BOS + 2 x 63 repeated).

circuitry: one cached run (patterns only), vectorised attention detectors,
copying from d_head x d_head products, composition from factored
d_head x d_head products.

naive reference (the notebook way): one forward pass with a full cache, then
per-head Python loops for the attention detectors, copying from the
eigenvalues of the d_model x d_model matrix W_OV W_U W_E per head, and one
d_model x d_model product per head pair and kind for composition. The naive
composition over all 3 x 9504 pairs would take tens of minutes on a laptop CPU,
so it is timed on a random sample of pairs and extrapolated (the time per pair
is constant); the output says so.

Run: python bench/bench_scan.py [--pairs N] [--vocab V]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from circuitry.data import repeated_tokens
from circuitry.model import HookedTransformer, ModelConfig
from circuitry.scan import scan
from circuitry_plugins.detectors.attention import duplicate_mask, induction_mask
from circuitry_plugins.detectors.weights import reading_weights, unembed_weights


def naive_attention(model, tokens):
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    dup_m, ind_m = duplicate_mask(tokens), induction_mask(tokens)
    has = dup_m.any(-1)
    out = torch.zeros(3, L, H)
    for l in range(L):
        pat = cache[f"blocks.{l}.attn.hook_pattern"]
        for h in range(H):
            p = pat[:, h]
            out[0, l, h] = p.diagonal(-1, -2, -1).mean()
            out[1, l, h] = (p * dup_m).sum(-1)[has].mean()
            out[2, l, h] = (p * ind_m).sum(-1)[has].mean()
    return out


def naive_copying(model):
    w = reading_weights(model)
    UE = unembed_weights(model) @ model.W_E.detach()
    L, H = model.cfg.n_layers, model.cfg.n_heads
    out = torch.zeros(L, H)
    for l in range(L):
        for h in range(H):
            full = (w["W_V"][l, h] @ w["W_O"][l, h] @ UE).double()  # d_model x d_model
            eig = torch.linalg.eigvals(full)
            out[l, h] = eig.real.sum() / eig.abs().sum()
    return out


def naive_pair(w, l1, h1, l2, h2):
    W_OV1 = w["W_V"][l1, h1] @ w["W_O"][l1, h1]
    W_QK = w["W_Q"][l2, h2] @ w["W_K"][l2, h2].T
    W_OV2 = w["W_V"][l2, h2] @ w["W_O"][l2, h2]
    n1 = W_OV1.norm()
    return [float((W_OV1 @ B).norm() / (n1 * B.norm())) for B in (W_QK, W_QK.T, W_OV2)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=150, help="head pairs sampled for the naive composition")
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--layers", type=int, default=12)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = ModelConfig(n_layers=args.layers, d_model=768, n_heads=12, d_head=64, d_vocab=args.vocab, n_ctx=1024,
                      d_mlp=3072, act_fn="gelu_new", normalization="LN", attn_bias=True, mlp_bias=True,
                      bos_token_id=args.vocab - 1, name="gpt2-small-shape")
    model = HookedTransformer(cfg, seed=0).eval()
    batch = repeated_tokens(cfg.d_vocab, cfg.bos_token_id, batch=16, seq_len=63, n_repeats=2, seed=0)
    print(f"model: {cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}, vocab {cfg.d_vocab}; "
          f"data {tuple(batch.tokens.shape)}; torch threads {torch.get_num_threads()}")

    scan(model, batch)  # warm-up (also fills the random-baseline cache, as any second scan would)
    t = time.perf_counter()
    res = scan(model, batch)
    t_fast = time.perf_counter() - t
    print(f"circuitry scan (all detectors, composition of all pairs): {t_fast:.2f} s")

    t = time.perf_counter()
    att = naive_attention(model, batch.tokens)
    t_att = time.perf_counter() - t
    t = time.perf_counter()
    cop = naive_copying(model)
    t_cop = time.perf_counter() - t
    w = {k: v.float() for k, v in reading_weights(model).items()}
    L, H = cfg.n_layers, cfg.n_heads
    pairs = [(l1, h1, l2, h2) for l1 in range(L) for h1 in range(H) for l2 in range(l1 + 1, L) for h2 in range(H)]
    sample = random.Random(0).sample(pairs, min(args.pairs, len(pairs)))
    t = time.perf_counter()
    ref = [naive_pair(w, *p) for p in sample]
    t_pairs = (time.perf_counter() - t) / len(sample) * len(pairs)
    t_naive = t_att + t_cop + t_pairs
    print(f"naive reference: attention detectors {t_att:.2f} s, copying {t_cop:.2f} s, composition "
          f"{t_pairs:.1f} s (timed on {len(sample)} of {len(pairs)} pairs, extrapolated) = {t_naive:.1f} s")

    # same values
    for i, name in enumerate(("previous_token", "duplicate_token", "induction")):
        assert torch.allclose(res.heads[name], att[i], atol=1e-5), name
    assert torch.allclose(res.heads["copying"], cop, atol=1e-3)
    comp = res.pairs["composition"].scores
    err = max(abs(float(comp[k][p]) - r[i]) for p, r in zip(sample, ref) for i, k in enumerate("QKV"))
    print(f"values agree: attention detectors within 1e-5, copying within 1e-3, composition max |diff| {err:.1e}")
    print(f"speed-up: {t_naive / t_fast:.1f}x  (naive {t_naive:.1f} s / circuitry {t_fast:.2f} s)")


if __name__ == "__main__":
    main()
