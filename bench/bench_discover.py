"""Benchmark: `discover` with batched pruning sweeps against one forward pass per candidate, same run.

Models: the shipped builtin:attn-only-2l, and a 4-layer, 8-head attention-only
model (the shipped model's d_model, d_head, vocabulary and context) that hides
the shipped circuit among random heads: layers 0 and 1 hold the shipped
model's eight heads as heads 0-3, every other head (24) is random (seed 0)
with its W_O scaled by 0.3, and the embeddings are the shipped ones; or a
trained model given with `--model PATH`. A model with only random weights
does not do the task, so `discover` refuses it (exit 1): the hidden circuit
gives the pruning 32 heads to sweep over while the task is still done.
Task: induction (64 x 21 tokens). For each model, `discover` runs twice:
sweeps "batched" (copies stacked along the batch, runs starting at the
earliest changed layer) and "naive" (one full forward pass per intervention,
i.e. per candidate node / edge / prefix); both must find the same circuit
with the same recovered fraction (1e-4). Printed: wall time of the pruning and
of the whole discovery, forward passes of the pruning sweeps and in all, and
the naive / batched ratios, with the time of the node and the edge stages.

Every removed edge is one path patch applied to its copy's rows in both
methods, so when hundreds of edges are removed (a circuit of 20+ heads, as a
trained model given with `--model` may have) the edge stage costs about the
same either way: batching saves forward passes, not the per-edge patching.

Usage: python bench/bench_discover.py [--model PATH] [--repeat N]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import torch

from circuitry.discovery import discover
from circuitry.model import HookedTransformer
from circuitry.sources import load_model


def hidden_circuit_model(shipped: HookedTransformer, seed: int = 0, scale: float = 0.3) -> HookedTransformer:
    """4 layers x 8 heads: the shipped model's heads as heads 0-3 of layers 0 and 1, every other head random
    (W_O scaled by `scale`), the shipped embeddings and unembedding (see the module docstring)."""
    cfg = dataclasses.replace(shipped.cfg, n_layers=4, n_heads=8, name="attn-only-4l-hidden")
    model = HookedTransformer(cfg, seed=seed)
    with torch.no_grad():
        for mine, theirs in ((model.embed.W_E, shipped.embed.W_E), (model.pos_embed.W_pos, shipped.pos_embed.W_pos),
                             (model.unembed.W_U, shipped.unembed.W_U)):
            mine.copy_(theirs)
        for layer, block in enumerate(model.blocks):
            block.attn.W_O.mul_(scale)
            if layer < shipped.cfg.n_layers:
                source = shipped.blocks[layer].attn
                for w in ("W_Q", "W_K", "W_V", "W_O"):
                    getattr(block.attn, w)[: shipped.cfg.n_heads].copy_(getattr(source, w))
    return model.eval()


def bench(name: str, model: HookedTransformer, repeat: int) -> None:
    rows: dict = {}
    for _ in range(repeat):  # the methods alternate, so both see the same load on a shared machine
        for method in ("batched", "naive"):
            t = time.perf_counter()
            c = discover(model, "induction", method=method)
            wall = time.perf_counter() - t
            if method not in rows or wall < rows[method][1]:
                rows[method] = (c, wall)
    (b, tb), (n, tn) = rows["batched"], rows["naive"]
    assert [x.name for x in b.nodes] == [x.name for x in n.nodes], "batched and naive found different nodes"
    assert [x.name for x in b.edges] == [x.name for x in n.edges], "batched and naive found different edges"
    assert abs(b.recovered - n.recovered) < 1e-4
    print(f"\n{name}: {model.cfg.n_layers} layers x {model.cfg.n_heads} heads; circuit of {len(b.nodes)} nodes, "
          f"{len(b.edges)} edges, recovered {b.recovered_nodes:.3f} (nodes) / {b.recovered:.3f}; "
          f"{len(b.rounds)} rounds, {b.interventions} interventions")
    print(f"  {'sweeps':<8} {'nodes s':>9} {'edges s':>9} {'prune s':>9} {'total s':>9} {'prune passes':>13} "
          f"{'all passes':>11}")
    for method, (c, wall) in rows.items():
        stage = {k: sum(r.seconds for r in c.rounds if r.stage == k) for k in ("nodes", "edges")}
        print(f"  {method:<8} {stage['nodes']:9.3f} {stage['edges']:9.3f} {c.prune_seconds:9.3f} {wall:9.3f} "
              f"{c.prune_passes:13d} {c.total_passes:11d}")
    nb = {k: sum(r.seconds for r in c.rounds if r.stage == "nodes") for k, (c, _) in rows.items()}
    print(f"  naive / batched: node pruning time {nb['naive'] / nb['batched']:.1f}x, "
          f"pruning time {n.prune_seconds / b.prune_seconds:.1f}x, whole discovery "
          f"{tn / tb:.1f}x, pruning passes {n.prune_passes / b.prune_passes:.1f}x, all passes "
          f"{n.total_passes / b.total_passes:.1f}x")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None,
                    help="a trained model instead of the 4-layer one that hides the shipped circuit")
    ap.add_argument("--repeat", type=int, default=3, help="runs per method on the shipped model; the fastest "
                                                           "is shown (the 4-layer model runs once)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    shipped = load_model("builtin:attn-only-2l").eval()
    bench("builtin:attn-only-2l", shipped, args.repeat)
    big = load_model(args.model).eval() if args.model else hidden_circuit_model(shipped)
    bench(args.model or "4-layer model hiding the shipped circuit among 24 random heads (seed 0)", big, 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
