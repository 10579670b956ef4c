"""Benchmark: `discover` with batched pruning sweeps against one forward pass per candidate, same run.

Models: the shipped builtin:attn-only-2l, and a 4-layer, 8-head attention-only
model (d_model 64, d_head 8, the shipped model's vocabulary and context) with
random weights (seed 0), or a trained one given with `--model PATH`.
Task: induction (64 x 21 tokens). For each model, `discover` runs twice:
sweeps "batched" (copies stacked along the batch, runs starting at the
earliest changed layer) and "naive" (one full forward pass per intervention,
i.e. per candidate node / edge / prefix); both must find the same circuit
with the same recovered fraction (1e-4). Printed: wall time of the pruning and
of the whole discovery, forward passes of the pruning sweeps and in all, and
the naive / batched ratios, with the time of the node and the edge stages.

Every removed edge is one path patch applied to its copy's rows in both
methods, so when hundreds of edges are removed (a circuit of 20+ heads) the
edge stage costs about the same either way: batching saves forward passes,
not the per-edge patching.

Usage: python bench/bench_discover.py [--model PATH] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from circuitry.discovery import discover
from circuitry.model import HookedTransformer
from circuitry.sources import load_model


def four_layer_model(seed: int = 0) -> HookedTransformer:
    from circuitry.train import TrainRecipe

    cfg = TrainRecipe(n_layers=4, n_heads=8).model_config()
    return HookedTransformer(cfg, seed=seed).eval()


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
    ap.add_argument("--model", default=None, help="a trained 4-layer model instead of the random one")
    ap.add_argument("--repeat", type=int, default=3, help="runs per method on the shipped model; the fastest "
                                                           "is shown (the 4-layer model runs once)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    bench("builtin:attn-only-2l", load_model("builtin:attn-only-2l").eval(), args.repeat)
    big = load_model(args.model).eval() if args.model else four_layer_model()
    bench(args.model or "random 4-layer model (seed 0)", big, 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
