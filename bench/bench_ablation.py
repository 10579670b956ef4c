"""Benchmark: exact zero-ablation sweeps of a GPT-2-small-shaped model's heads, layer by layer, against one
forward pass per head.

Model: 12 layers, 12 heads, d_model 768, d_head 64, d_mlp 3072, LayerNorm, learned positions, gelu_new,
random weights (seeded); a reduced vocabulary (default 1024, `--vocab 50257` for GPT-2's) so that the
unembedding, which neither side can skip, does not dominate both. Data: 16 x 128 random tokens (`--batch`,
`--pos`). Metric: the mean next-token loss. Interventions: zero-ablation of each head of layers
0, 6 and 11 (`--layers`). `--small`: 12 layers of d_model 256, 8 heads, d_mlp 1024 (a quick run, each
layer timed 3 times; its passes are short, so the load of a shared machine shows more in its times).

- engine: `sweep_clean_run` once for all the interventions (timed; it caches only what they read: the
  residual stream entering each ablated layer's MLP and that layer's z), then per layer
  `run_interventions(model, clean, [Ablation(L{l}H{h}) for every h], metric)`: each pass starts from the
  cached residual entering the MLP of layer l, adds the head's change of the attention output there, and
  computes the rest of the model; as many heads share a pass as fit in one head's pass (`pass_rows`).
- loop (the TransformerLens way, written here independently of the engine): per head one full forward pass,
  `run_with_hooks(tokens, [("blocks.{l}.attn.hook_z", hook)])` with a hook that zeros the head's slice of z
  in place, full logits, then the metric.

Time: both sides in this process (after a warm-up pass of the full size), the loop's passes interleaved with
the engine's (after each of the engine's passes its progress callback runs the loop for the heads the engine
has just done, timed apart), so that both see the same load on a shared machine. Per layer: the loop's time,
the engine's (without the clean run, which every layer shares, as all checks of a spec share theirs) and
loop / engine; "per pass": the median over the engine's passes of the loop's time for the same heads, run
right after the pass, over the pass's time (a load spike that hits a few passes of one side moves the sums,
not the median); with `--repeat N` each layer is measured N times and each side's fastest is used. Overall:
the loop's passes over the engine's work counted in loop passes: each layer's engine time in units of the
loop passes timed alongside it (its heads / its ratio), the clean run in units of a loop pass timed right before it
and one right after; so that a change of the machine's load from one layer to the next does not weigh the
layers differently on the two sides. The plain sums (loop seconds over engine seconds with the clean run)
print too; under a steady load the two agree.

Peak memory: each side once more in a fresh process (this script with `--only loop|engine`): the process's
peak resident memory (VmHWM of /proc/self/status; resident memory counts every byte the process holds,
whoever allocated it, while tracemalloc does not see torch's tensors), reset through /proc/self/clear_refs
once the model and the tokens are built (and a tiny pass run), so that it is the peak of the work alone;
"above the model" is that peak minus the resident memory at the reset. Every pass of the loop is the same
computation on the same shapes, so its process runs one head per layer; the engine's process makes the same
clean run as the timed one and runs the heads of one full pass per layer. On CUDA (`--device cuda`) the peak
is torch's peak allocated device memory instead.

The values of both sides must agree within 1e-4 on every head (exit 1 otherwise). Whether loop / engine >=
1.0 at every layer, >= 1.8 overall, and the engine's peak within 1.3 x the loop's print last; nothing is
asserted on times: they depend on the machine and its load (the load average prints first).

Usage: python bench/bench_ablation.py [--small] [--vocab N] [--batch B] [--pos P] [--layers 0,6,11]
       [--repeat N] [--seed S] [--threads T] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from measure import code_version, reset_rss_peak, status_kb

from circuitry.interventions import Ablation, Node, run_interventions
from circuitry.interventions.sweep import pass_rows, sweep_clean_run
from circuitry.model import HookedTransformer, ModelConfig

JOBS = ("loop", "engine")
PER_LAYER, OVERALL, MEMORY = 1.0, 1.8, 1.3  # what the last lines check: loop / engine, engine peak / loop peak


def make_config(args) -> ModelConfig:
    d_model, n_heads, d_mlp = (256, 8, 1024) if args.small else (768, 12, 3072)
    return ModelConfig(n_layers=12, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads,
                       d_vocab=args.vocab, n_ctx=max(128, args.pos), d_mlp=d_mlp, normalization="LN",
                       positional="learned", act_fn="gelu_new", attn_bias=True, mlp_bias=True,
                       name="gpt2-small-shape" if not args.small else "small")


def setup(args, warm_up: bool = True) -> tuple[HookedTransformer, torch.Tensor]:
    """The model and the tokens; warm_up: one pass of the full size, so that neither timed side pays for the first
    (the memory processes run a tiny one, so that their resident memory at the reset holds no freed activations)."""
    torch.set_num_threads(args.threads)
    cfg = make_config(args)
    model = HookedTransformer(cfg, seed=args.seed).eval().to(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(0, cfg.d_vocab, (args.batch, args.pos), generator=gen).to(args.device)
    with torch.inference_mode():
        model(tokens if warm_up else tokens[:1, :8])
    return model, tokens


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def zero_head(h: int):
    def hook(z, hp):  # z [batch, pos, head, d_head], zeroed in place as TransformerLens users do
        z[:, :, h] = 0.0
    return hook


def loop_value(model, tokens: torch.Tensor, node: Node) -> torch.Tensor:
    """One full forward pass with the head's z zeroed, full logits, the mean next-token loss."""
    logits = model.run_with_hooks(tokens, [(f"blocks.{node.layer}.attn.hook_z", zero_head(node.head))])
    return model.loss(tokens, logits)


# ------------------------------------------------------------------ memory (a child process)
def reset_peak(device: str) -> bool:
    """Reset the peak: torch's peak device memory (CUDA), else the process's peak resident memory (Linux)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return True
    return reset_rss_peak()


def memory_now(device: str) -> tuple[int, int]:
    """(now, peak) in kB: torch's allocated device memory (CUDA), else VmRSS and VmHWM."""
    if device.startswith("cuda"):
        return torch.cuda.memory_allocated() // 1024, torch.cuda.max_memory_allocated() // 1024
    return status_kb("VmRSS"), status_kb("VmHWM")


def measure_memory(job: str, args) -> dict:
    """The peak memory of one side's work, in this (fresh) process."""
    model, tokens = setup(args, warm_up=False)
    layers = parse_layers(args.layers)
    heads = [Node(l, h) for l in layers for h in range(model.cfg.n_heads)]
    sync(args.device)
    out: dict = {"job": job, "reset": reset_peak(args.device)}
    out["base_kb"] = memory_now(args.device)[0]
    with torch.inference_mode():
        if job == "loop":
            for l in layers:  # every pass of the loop is the same computation on the same shapes
                loop_value(model, tokens, Node(l, 0))
        else:
            clean = sweep_clean_run(model, tokens, [Ablation(n) for n in heads])
            per_pass = max(1, pass_rows(model.cfg, *tokens.shape) // tokens.shape[0])
            for l in layers:  # one full pass per layer
                nodes = [Node(l, h) for h in range(min(per_pass, model.cfg.n_heads))]
                run_interventions(model, clean, [Ablation(n) for n in nodes], lambda lg, t, _=None: model.loss(t, lg))
    sync(args.device)
    out["peak_kb"] = memory_now(args.device)[1]
    return out


def run_child(job: str, argv: list[str]) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--only", job]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"bench_ablation: the {job} memory run failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ time (this process)
def time_layer(model, tokens: torch.Tensor, clean, layer: int, device: str) -> dict:
    """The heads of one layer: the engine's sweep with the loop's passes interleaved; seconds, values, passes, and
    for each of the engine's passes the loop's time for the same heads, run right after it, over the pass's."""
    nodes = [Node(layer, h) for h in range(model.cfg.n_heads)]
    naive: list[float] = []
    pairs: list[float] = []
    inside = last = 0.0

    def run_loop(upto: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        while len(naive) < upto:
            naive.append(float(loop_value(model, tokens, nodes[len(naive)])))
        sync(device)
        return time.perf_counter() - t0

    def interleave(done: int, total: int) -> None:
        nonlocal inside, last
        sync(device)
        now = time.perf_counter()
        loop = run_loop(done)  # the heads the engine has done so far, timed apart
        if loop > 0:
            pairs.append(loop / (now - last))
        last = time.perf_counter()
        inside += last - now

    t0 = last = time.perf_counter()
    res = run_interventions(model, clean, [Ablation(n) for n in nodes], lambda lg, t, _=None: model.loss(t, lg),
                            progress=interleave)
    sync(device)
    t_engine = time.perf_counter() - t0 - inside
    t_loop = inside + run_loop(len(nodes))
    return {"loop": t_loop, "engine": t_engine, "passes": res.n_passes, "row_layers": res.row_layers,
            "pairs": pairs, "engine_values": [float(v) for v in res.values], "loop_values": naive}


def measure_time(model, tokens: torch.Tensor, layers: list[int], device: str, repeat: int) -> dict:
    """Per layer (`time_layer`, each side's fastest of `repeat`); the seconds of the engine's clean run, shared by
    the layers, and the mean of a loop pass timed right before it and one right after it."""
    heads = [Node(l, h) for l in layers for h in range(model.cfg.n_heads)]

    def timed(fn):
        sync(device)
        t0 = time.perf_counter()
        value = fn()
        sync(device)
        return value, time.perf_counter() - t0

    with torch.inference_mode():
        _, before = timed(lambda: float(loop_value(model, tokens, heads[0])))
        clean, t_clean = timed(lambda: sweep_clean_run(model, tokens, [Ablation(n) for n in heads]))
        _, after = timed(lambda: float(loop_value(model, tokens, heads[0])))
        out: dict = {"clean": t_clean, "clean_unit": (before + after) / 2, "layers": {}}
        for l in layers:
            runs = [time_layer(model, tokens, clean, l, device) for _ in range(repeat)]
            out["layers"][l] = {**runs[0], "loop": min(r["loop"] for r in runs),
                                "engine": min(r["engine"] for r in runs),
                                "pairs": [p for r in runs for p in r["pairs"]]}
        return out


def parse_layers(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


# ------------------------------------------------------------------ the report
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="d_model 256, 8 heads, d_mlp 1024")
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16, help="sequences")
    ap.add_argument("--pos", type=int, default=128, help="tokens per sequence")
    ap.add_argument("--layers", default="0,6,11", help="the layers whose heads are ablated (comma-separated)")
    ap.add_argument("--repeat", type=int, help="timed runs of each layer, each side's fastest used (default 1; "
                                               "3 with --small)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads in every process")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", choices=JOBS, help=argparse.SUPPRESS)  # one memory measurement, JSON on stdout
    args = ap.parse_args(argv)
    args.repeat = args.repeat or (3 if args.small else 1)
    layers = parse_layers(args.layers)
    if args.batch < 1 or args.pos < 2 or args.repeat < 1 or not layers or any(not 0 <= l < 12 for l in layers):
        ap.error("--batch and --repeat must be at least 1, --pos at least 2, --layers a list of layers in 0..11")
    if args.only:
        print(json.dumps(measure_memory(args.only, args)))
        return 0

    argv = list(sys.argv[1:] if argv is None else argv)
    model, tokens = setup(args)
    cfg = model.cfg
    b, pos = tokens.shape
    per_pass = max(1, pass_rows(cfg, b, pos) // b)
    print(f"model: {cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}, d_mlp {cfg.d_mlp}, LN, "
          f"learned positions, vocab {cfg.d_vocab}, random weights (seed {args.seed}); tokens {b} x {pos}; metric: "
          f"mean next-token loss; circuitry at {code_version()}; torch {torch.__version__}, {args.threads} threads "
          f"on {args.device}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"engine: up to {per_pass} heads ({per_pass * b} rows) per pass; the loop: one full pass per head; "
          f"times: {'fastest of ' + str(args.repeat) if args.repeat > 1 else 'one run'} per layer")

    timed = measure_time(model, tokens, layers, args.device, args.repeat)
    del model, tokens
    mem = {job: run_child(job, argv) for job in JOBS}

    print(f"{'layer':>5s} {'loop (s)':>9s} {'engine (s)':>10s} {'loop/engine':>11s} {'per pass':>8s} {'passes':>6s} "
          f"{'blocks computed':>15s}   max |engine - loop|")
    diff, ratios, medians = 0.0, [], []
    t_loop = t_engine = 0.0
    for l in layers:
        r = timed["layers"][l]
        d = max(abs(a - c) for a, c in zip(r["engine_values"], r["loop_values"]))
        diff = max(diff, d)
        ratios.append(r["loop"] / r["engine"])
        medians.append(statistics.median(r["pairs"]))
        t_loop, t_engine = t_loop + r["loop"], t_engine + r["engine"]
        blocks = r["row_layers"] / (b * cfg.n_layers * cfg.n_heads)
        print(f"{l:5d} {r['loop']:9.2f} {r['engine']:10.2f} {ratios[-1]:11.2f} {medians[-1]:8.2f} {r['passes']:6d} "
              f"{blocks:15.1%}   {d:.1e}")
    overall = len(layers) * cfg.n_heads / (sum(cfg.n_heads / r for r in ratios) + timed["clean"] / timed["clean_unit"])
    print(f"clean run of the engine (shared by the layers): {timed['clean']:.2f} s (a loop pass timed around it: "
          f"{timed['clean_unit']:.2f} s)")
    print(f"overall: loop/engine {overall:.2f} ({len(layers) * cfg.n_heads} loop passes against the engine's work "
          f"in loop passes timed alongside it, the clean run included); plain sums: loop {t_loop:.2f} s, engine "
          f"{t_engine + timed['clean']:.2f} s with its clean run: {t_loop / (t_engine + timed['clean']):.2f} "
          f"(without the clean run: {t_loop / t_engine:.2f})")

    def peak(r: dict) -> str:
        note = "" if r["reset"] else " (the peak could not be reset: it includes building the model)"
        return (f"peak {r['peak_kb'] / 1024:7.0f} MiB, {(r['peak_kb'] - r['base_kb']) / 1024:6.0f} MiB above the "
                f"model{note}")

    lp, ep = mem["loop"], mem["engine"]
    mem_ratio = ep["peak_kb"] / lp["peak_kb"]
    added = (ep["peak_kb"] - ep["base_kb"]) / max(1, lp["peak_kb"] - lp["base_kb"])
    what = "torch's device memory" if args.device.startswith("cuda") else "resident memory (VmHWM)"
    print(f"peak memory, each side in a fresh process ({what}):")
    print(f"  loop  : {peak(lp)}")
    print(f"  engine: {peak(ep)} (its clean run's cache included)")
    print(f"  engine / loop: {mem_ratio:.2f} (above the model: {added:.2f})")
    print(f"values: max |engine - loop| = {diff:.2e} over {len(layers) * cfg.n_heads} heads")
    yes = {True: "yes", False: "no"}
    print(f"loop/engine >= {PER_LAYER:g} at every layer: {yes[min(ratios) >= PER_LAYER]} (lowest {min(ratios):.2f}; "
          f"per pass, the median: {yes[min(medians) >= PER_LAYER]}, lowest {min(medians):.2f}); "
          f">= {OVERALL:g} overall: {yes[overall >= OVERALL]} ({overall:.2f}); "
          f"engine peak <= {MEMORY:g} x the loop's: {yes[mem_ratio <= MEMORY]} ({mem_ratio:.2f})")
    if diff > 1e-4:
        print("FAIL: values differ by more than 1e-4", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
