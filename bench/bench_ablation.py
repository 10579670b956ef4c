"""Benchmark: zero-ablation of every head of a GPT-2-small-shaped model, batched vs one pass per head.

Model: 12 layers, 12 heads, d_model 768, d_head 64, d_mlp 3072, LayerNorm,
gelu_new, random weights; a reduced vocabulary (default 1024, `--vocab 50257`
for GPT-2's) so that the unembedding does not dominate both sides. Data:
16 x 128 random tokens. Metric: the mean next-token loss, computed per
intervention, so the batched run never keeps full logits for all copies.

- batched: `clean_run` once (timed), then `run_interventions(...)` over the
  12 heads of each layer: copies stacked along the batch, each pass starting
  at the residual entering the MLP of the ablated layer (one call over all
  144 heads makes the same passes; per-layer calls let the two methods
  alternate layer by layer, so both see the same load on a shared machine).
- one pass per head (the TransformerLens way): `run_with_hooks` with a hook
  that zeros the head's z, full logits, then the loss. Its cost is the same
  for every head, so by default it runs for one head per layer (12 passes)
  and the total for 144 heads is extrapolated; `--all` runs all 144.
The values of both must agree within 1e-4 on every head both ran.

Usage: python bench/bench_ablation.py [--vocab N] [--all] [--seed S]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from circuitry.interventions import Ablation, all_heads, clean_run, run_interventions
from circuitry.model import HookedTransformer, ModelConfig


def zero_head(h: int):
    def hook(z, hp):  # z [batch, pos, head, d_head]
        z = z.clone()
        z[:, :, h] = 0.0
        return z
    return hook


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--all", action="store_true", help="run the per-head loop for all 144 heads")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    cfg = ModelConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_vocab=args.vocab, n_ctx=128,
                      d_mlp=3072, normalization="LN", act_fn="gelu_new", attn_bias=True, mlp_bias=True,
                      name="gpt2-small-shape")
    model = HookedTransformer(cfg, seed=args.seed).eval()
    tokens = torch.randint(0, cfg.d_vocab, (16, 128), generator=torch.Generator().manual_seed(args.seed))
    heads = all_heads(cfg)

    def metric(logits, toks):  # mean next-token loss [scalar]
        return model.loss(toks, logits)

    print(f"model: 12 layers x 12 heads, d_model 768, d_mlp 3072, LN, vocab {cfg.d_vocab}; "
          f"tokens 16 x 128; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}")

    loop = heads if args.all else [n for n in heads if n.head == n.layer % cfg.n_heads]
    batched: dict = {}
    naive: dict = {}
    t_batched = t_loop = 0.0
    passes, row_layers = 0, 0.0
    with torch.inference_mode():
        model(tokens[:1, :8])  # warm-up
        t0 = time.perf_counter()
        clean = clean_run(model, tokens, patterns=False)
        t_clean = time.perf_counter() - t0
        t_batched += t_clean
        # layer by layer, alternating the two methods so that both see the same load on a shared machine
        for layer in range(cfg.n_layers):
            nodes = [n for n in heads if n.layer == layer]
            t0 = time.perf_counter()
            res = run_interventions(model, clean, [Ablation(n) for n in nodes], metric)
            t_batched += time.perf_counter() - t0
            batched.update(zip(nodes, res.values))
            passes, row_layers = passes + res.n_passes, row_layers + res.row_layers
            t0 = time.perf_counter()
            for n in (n for n in loop if n.layer == layer):
                logits = model.run_with_hooks(tokens, [(f"blocks.{n.layer}.attn.hook_z", zero_head(n.head))])
                naive[n] = model.loss(tokens, logits)
            t_loop += time.perf_counter() - t0

    t_naive = t_loop / len(loop) * len(heads)
    diff = max(abs(float(batched[n]) - float(naive[n])) for n in loop)
    label = "measured" if args.all else f"extrapolated from {len(loop)} heads, one per layer"
    print(f"batched : {t_batched:7.1f} s for {len(heads)} heads ({passes} passes, clean run "
          f"{t_clean:.1f} s included); blocks computed: {row_layers / (16 * 12 * len(heads)):.1%} "
          f"of the per-head loop's")
    print(f"per head: {t_naive:7.1f} s for {len(heads)} heads ({label}: {t_loop / len(loop):.2f} s per pass)")
    print(f"speed-up: {t_naive / t_batched:.2f}x")
    print(f"max |batched - per-head| loss difference: {diff:.2e} over {len(loop)} heads "
          f"(loss range {min(float(v) for v in batched.values()):.4f}..{max(float(v) for v in batched.values()):.4f})")
    if diff > 1e-4:
        print("FAIL: values differ by more than 1e-4", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
