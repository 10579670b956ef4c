"""Benchmark: head x position activation patching (`heads`, per_position) of a 12-layer, 12-head model,
batched sweep vs one forward pass per patch.

Model: 12 layers, 12 heads, d_model 768, d_head 64, LayerNorm, random weights,
attention-only by default (`--mlp` adds GPT-2-sized MLPs, d_mlp 3072); a
vocabulary of 1024 (`--vocab`) so that the unembedding stays light. Data: 32
prompt pairs of 24 tokens, clean = BOS + r + r[:11] (the second block repeats
the first), corrupted = BOS + r + r'[:11] (a fresh second block; `--contrast
all` draws a fresh first block too, so the prompts differ from position 1 on).
Metric: the logit difference between the clean and the corrupted next token
at positions 20 and 22, averaged over prompts. Patches: 12 x 12 x 24 = 3456
(noising: the corrupted run's z of one head at one position, in every prompt).

- batched: `activation_patching(model, batch, "heads", metric,
  per_position=True)`: the clean run (cached) and the corrupted run (caching
  z only) once, then the patches stacked along the batch, each pass starting
  after the patched head's layer; patches that change nothing (positions
  where clean and corrupted prompts and hence activations are still the
  same) are not run. Timed whole, both cached runs included.
- one pass per patch (the notebook loop, TransformerLens's
  `get_act_patch_attn_head_out_by_pos`): the corrupted run cached once, then
  per (layer, head, position) `run_with_hooks` on the clean prompts with a
  hook that copies z[:, pos, head] from the corrupted cache, full logits, the
  metric. Its cost is the same for every patch, so by default it runs 2
  patches per layer (24 passes) and the time for 3456 is extrapolated;
  `--all` runs all 3456. Its passes are interleaved with the batched
  sweep's (a few after each of the sweep's passes, from its progress
  callback, timed apart), so that both see the same load on a shared machine.
The values of both must agree within 1e-4 on every patch both ran.

Usage: python bench/bench_patch.py [--all] [--mlp] [--contrast block|all] [--vocab N] [--seed S]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from circuitry.model import HookedTransformer, ModelConfig
from circuitry.patching import activation_patching
from circuitry.tasks import ContrastiveBatch

N_PROMPTS, N_POS, BLOCK = 32, 24, 12


def make_batch(cfg, contrast: str, seed: int) -> ContrastiveBatch:
    gen = torch.Generator().manual_seed(seed)
    bos = cfg.d_vocab - 1

    def draw(n: int) -> torch.Tensor:
        return torch.randint(0, bos, (N_PROMPTS, n), generator=gen)

    r, r2, r3 = draw(BLOCK), draw(BLOCK), draw(BLOCK)
    start = torch.full((N_PROMPTS, 1), bos)
    clean = torch.cat([start, r, r[:, : N_POS - 1 - BLOCK]], 1)
    first = r if contrast == "block" else r3
    corrupted = torch.cat([start, first, r2[:, : N_POS - 1 - BLOCK]], 1)
    read = torch.tensor([[20, 22]]).repeat(N_PROMPTS, 1)
    none = torch.zeros_like(clean, dtype=torch.bool)
    return ContrastiveBatch(tokens=clean, predictable=none, fresh=none, corrupted=corrupted, read=read,
                            answer=clean.gather(1, read + 1), wrong=corrupted.gather(1, read + 1)[..., None])


def logit_diff(batch: ContrastiveBatch):
    rows = torch.arange(N_PROMPTS)[:, None]

    def metric(logits: torch.Tensor, _batch=None, _clean_logits=None) -> torch.Tensor:  # [batch, pos, vocab] -> 0-d
        at = logits[rows, batch.read]  # [batch, n_read, vocab]
        return (at.gather(-1, batch.answer[..., None])[..., 0] - at.gather(-1, batch.wrong).mean(-1)).mean()
    return metric


def copy_z(source: torch.Tensor, head: int, pos: int):
    def hook(z, hp):  # z [batch, pos, head, d_head]
        z = z.clone()
        z[:, pos, head] = source[:, pos, head]
        return z
    return hook


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--all", action="store_true", help="run the one-pass-per-patch loop for all 3456 patches")
    ap.add_argument("--mlp", action="store_true", help="add MLPs (d_mlp 3072) to every layer")
    ap.add_argument("--contrast", choices=("block", "all"), default="block",
                    help="block: the prompts differ in their second block; all: from position 1 on")
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    cfg = ModelConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_vocab=args.vocab, n_ctx=64,
                      d_mlp=3072 if args.mlp else None, normalization="LN", act_fn="gelu_new",
                      name="12x12-768")
    model = HookedTransformer(cfg, seed=args.seed).eval()
    batch = make_batch(cfg, args.contrast, args.seed)
    metric = logit_diff(batch)
    L, H = cfg.n_layers, cfg.n_heads
    cells = [(l, h, p) for l in range(L) for h in range(H) for p in range(N_POS)]
    two_per_layer = [c for l in range(L) for c in ((l, l % H, 13 + l % 11), (l, (l + 5) % H, (2 * l) % N_POS))]
    loop = cells if args.all else two_per_layer
    print(f"model: 12 layers x 12 heads, d_model 768, {'MLPs 3072' if args.mlp else 'attention-only'}, LN, "
          f"vocab {cfg.d_vocab}; {N_PROMPTS} prompt pairs x {N_POS} tokens (contrast: {args.contrast}); "
          f"{len(cells)} patches; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}")

    naive: dict[tuple[int, int, int], float] = {}
    with torch.inference_mode():
        model(batch.tokens[:1, :8])  # warm-up
        t0 = time.perf_counter()
        _, corrupted_cache = model.run_with_cache(batch.corrupted, names=[f"blocks.{l}.attn.hook_z" for l in range(L)])
        t_cache = time.perf_counter() - t0

        def run_loop(part: list[tuple[int, int, int]]) -> float:
            t0 = time.perf_counter()
            for l, h, p in part:
                name = f"blocks.{l}.attn.hook_z"
                logits = model.run_with_hooks(batch.tokens, [(name, copy_z(corrupted_cache[name], h, p))])
                naive[(l, h, p)] = float(metric(logits, batch))
            return time.perf_counter() - t0

        # the loop's passes are interleaved with the sweep's (run from its progress callback, after each of its
        # passes, and timed apart), so that both see the same load on a shared machine
        todo = list(loop)
        per_call = max(1, len(loop) // 12)
        inside = 0.0

        def interleave(done: int, total: int) -> None:
            nonlocal inside
            if done < total and todo:
                inside += run_loop([todo.pop(0) for _ in range(min(per_call, len(todo)))])

        t0 = time.perf_counter()
        res = activation_patching(model, batch, "heads", metric, per_position=True, progress=interleave)
        t_batched = time.perf_counter() - t0 - inside
        t_loop = inside + run_loop(todo)

    per_pass = t_loop / len(loop)
    t_naive = t_cache + per_pass * len(cells)
    diff = max(abs(float(res.values[c]) - naive[c]) for c in loop)
    label = "measured" if args.all else f"extrapolated from {len(loop)} patches, 2 per layer"
    print(f"batched : {t_batched:7.1f} s for {len(cells)} patches ({res.n_passes} forward passes, the clean and "
          f"corrupted runs included; {res.n_unchanged} patches change nothing and were not run)")
    print(f"per patch: {t_naive:7.1f} s for {len(cells)} patches ({label}: {per_pass:.3f} s per pass, "
          f"corrupted cache {t_cache:.2f} s)")
    print(f"speed-up: {t_naive / t_batched:.2f}x")
    print(f"metric: clean {res.clean:.4f}, corrupted {res.corrupted:.4f}; max |batched - per-patch| difference: "
          f"{diff:.2e} over {len(loop)} patches (values {float(res.values.min()):.4f}..{float(res.values.max()):.4f})")
    if diff > 1e-4:
        print("FAIL: values differ by more than 1e-4", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
