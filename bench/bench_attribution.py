"""Benchmark: EAP and EAP-IG over every edge of a GPT-2-small-shaped model vs forward+backward and exact patching.

Time and peak memory of attribution patching over all edges, against forward-plus-backward passes of the
model and against exact edge patching (one patched pass per edge), in the same run.

Model: 12 layers, 12 heads, d_model 768, d_head 64, LayerNorm, MLPs of d_mlp 3072 (`--no-mlp`:
attention-only), vocabulary 50257, random weights (seeded): GPT-2 small's shape, 158 senders, 445
receiver inputs, 32936 edges (`Layout.of(cfg).edges`). Data: 16 prompt pairs of 64 tokens, clean = BOS
+ r + r[:31] (the second block repeats the first), corrupted = BOS + r + r'[:31] (a fresh second block);
the metric (`logit_diff`) is read at the positions whose next token lies in the second block (32..62),
answer = the next clean token, wrong = the next corrupted token.

Every measurement runs in a fresh process (this script with `--only JOB`), so that each peak is its own:
peak resident memory is the process's VmHWM (/proc/self/status), reset after the model and the batch are
built and warmed up (/proc/self/clear_refs), and "above the model" is that peak minus the resident memory
at the reset (torch's CPU tensors are invisible to tracemalloc).

- forward: one forward pass on the clean prompts (no gradients); the fastest of `--repeat`.
- forward+backward: forward, the logit_diff metric's tensor form, `.backward()` into every parameter's
  gradient (a training step's two passes; the kind of pass the criterion counts); the fastest of `--repeat`.
- forward+backward (activations): the same with the gradient taken at the input embeddings only
  (`torch.autograd.grad`), the kind of backward pass the gradient methods run; the fastest of `--repeat`.
- EAP: `attribute(model, batch, "logit_diff", method="eap", level="edges")`, timed whole (its clean and
  corrupted metric runs included), with one forward+backward (parameters) timed in the same process right
  before it and one right after: their mean is the unit EAP is divided by, so that a change of load on a
  shared machine between the processes does not decide the verdict (the ratio to the baseline process's
  forward+backward prints too).
- EAP-IG: the same with method="eap-ig", `--steps` (5) interpolation steps.
- exact: one patched forward pass per edge (`run_interventions(..., method="naive")` of the `EdgePatch`
  of one edge, method "corrupted", as `attribute(method="exact")` builds them). Every pass costs about the
  same, so about `--sample` (12) edges, spread over the edge kinds (Q, K, V, mlp_in, direct) in proportion
  (at least one each) and evenly over each kind's edges, are run and the time for all edges is extrapolated
  per kind, plus the clean and corrupted cached runs (measured). A plain forward pass is timed in the same
  process first, for comparison with a patched one. (`attribute(method="exact")` stacks the
  patches in batched passes that skip the layers before each patch, so it costs less than this loop, but
  still one patched pass, from the receiver's layer on, per edge.)
The times print with their ratios: EAP / (forward+backward), EAP-IG / (forward+backward) (each against the
forward+backward passes timed around it),
exact (extrapolated) / EAP, and whether EAP costs at most 4 forward+backward passes. The sampled edges'
exact scores print next to their EAP and EAP-IG scores (random weights: a sanity check, not a test).
Nothing is asserted on times: they depend on the machine and its load (the load average prints first).

Usage: python bench/bench_attribution.py [--batch 16] [--pos 64] [--vocab 50257] [--layers 12]
       [--mlp | --no-mlp] [--steps 5] [--sample 12] [--repeat 2] [--seed 0] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
from measure import code_version, reset_rss_peak, status_kb

from circuitry.attribution import Layout, attribute, pearson
from circuitry.model import HookedTransformer, ModelConfig
from circuitry.tasks import ContrastiveBatch

JOBS = ("baseline", "eap", "eap-ig", "exact")
LIMIT = 4.0  # EAP over all edges: at most this many forward+backward passes


def make_config(args) -> ModelConfig:
    return ModelConfig(n_layers=args.layers, d_model=768, n_heads=12, d_head=64, d_vocab=args.vocab,
                       n_ctx=max(64, args.pos), d_mlp=3072 if args.mlp else None, normalization="LN",
                       act_fn="gelu_new", name=f"{args.layers}x12-768")


def make_batch(cfg, n: int, pos: int, seed: int) -> ContrastiveBatch:
    """BOS + r + r[:second] vs BOS + r + r'[:second]; read where the next token is in the second block."""
    gen = torch.Generator().manual_seed(seed)
    bos = cfg.d_vocab - 1
    first = pos // 2
    second = pos - 1 - first
    r, r2 = (torch.randint(0, bos, (n, first), generator=gen) for _ in range(2))
    start = torch.full((n, 1), bos)
    clean = torch.cat([start, r, r[:, :second]], 1)
    corrupted = torch.cat([start, r, r2[:, :second]], 1)
    read = torch.arange(first, pos - 1)[None].repeat(n, 1)  # p - 1 for every position p of the second block
    none = torch.zeros_like(clean, dtype=torch.bool)
    return ContrastiveBatch(tokens=clean, predictable=none, fresh=none, corrupted=corrupted, read=read,
                            answer=clean.gather(1, read + 1), wrong=corrupted.gather(1, read + 1)[..., None],
                            description=f"{n} prompt pairs x {pos} tokens", task="blocks")


def sample_edges(layout: Layout, n: int) -> list[int]:
    """About n edge indices: per kind (Q, K, V, mlp_in, direct) in proportion to its edges, at least one, evenly
    over its edges (each kind at another phase, so that Q, K and V do not pick the same senders and heads)."""
    kinds: dict[str, list[int]] = {}
    for i, e in enumerate(layout.edges):
        kinds.setdefault(e.kind, []).append(i)
    out = []
    for j, idxs in enumerate(kinds.values()):
        k = max(1, round(n * len(idxs) / len(layout.edges)))
        phase = (j + 1) / (len(kinds) + 1)
        out += [idxs[int((m + phase) * len(idxs) / k)] for m in range(k)]
    return sorted(out)


# ------------------------------------------------------------------ memory
def mib(kb: int) -> float:
    return kb / 1024


# ------------------------------------------------------------------ one measurement (a child process)
def measure(job: str, args) -> dict:
    """Run one job of JOBS in this process; its times and memory (kB) as a dict (printed as JSON)."""
    from circuitry.plugins import get_manager

    torch.set_num_threads(args.threads)
    cfg = make_config(args)
    model = HookedTransformer(cfg, seed=args.seed).eval()
    batch = make_batch(cfg, args.batch, args.pos, args.seed)
    layout = Layout.of(cfg)
    sample = sample_edges(layout, args.sample)
    metric = get_manager().get("circuitry_metrics", "logit_diff", "metric")
    with torch.no_grad():
        model(batch.tokens[:1, :8])  # warm-up
    out: dict = {"job": job, "reset": reset_rss_peak(), "base_kb": status_kb("VmRSS")}

    def timed(name: str, fn, repeat: int = 1) -> None:
        """out[name]: the fastest of `repeat` runs; out[name + "_peak_kb"]: the peak resident memory during them."""
        reset_rss_peak()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name], out[name + "_peak_kb"] = min(times), status_kb("VmHWM")

    def forward() -> None:
        with torch.no_grad():
            model(batch.tokens)

    def fwd_bwd() -> None:  # backward into every parameter's gradient
        model.zero_grad(set_to_none=True)
        metric.tensor(model(batch.tokens), batch, None).backward()
        model.zero_grad(set_to_none=True)

    def fwd_bwd_act() -> None:  # the gradient at the input embeddings only
        leaf = model.embed.W_E[batch.tokens].detach().requires_grad_(True)
        logits = model.run_with_hooks(batch.tokens, [("hook_embed", lambda x, hook: leaf)])
        torch.autograd.grad(metric.tensor(logits, batch, None), [leaf])

    if job == "baseline":
        timed("forward", forward, args.repeat)
        timed("fwd-bwd", fwd_bwd, args.repeat)
        timed("fwd-bwd-act", fwd_bwd_act, args.repeat)
    elif job in ("eap", "eap-ig"):
        box: dict = {}
        timed("fwd-bwd-before", fwd_bwd)
        timed(job, lambda: box.setdefault("res", attribute(model, batch, "logit_diff", method=job, level="edges",
                                                           steps=args.steps)))
        res = box["res"]
        assert res.edge_scores is not None
        out["passes"] = res.n_passes
        out["sample"] = [float(res.edge_scores[i]) for i in sample]
        out["clean"], out["corrupted"] = res.clean, res.corrupted
        timed("fwd-bwd-after", fwd_bwd)
        out["unit"] = (out["fwd-bwd-before"] + out["fwd-bwd-after"]) / 2
    elif job == "exact":
        timed("forward-here", forward)  # a plain forward pass in this process, to compare a patched pass with
        reset_rss_peak()
        out.update(exact_sample(model, batch, layout, sample, metric))
        out["exact_peak_kb"] = status_kb("VmHWM")
    return out


def exact_sample(model, batch, layout: Layout, sample: list[int], metric) -> dict:
    """Setup (clean and corrupted cached runs for every edge) and one naive patched pass per sampled edge."""
    from circuitry.attribution.exact import edge_patches
    from circuitry.interventions import clean_run, patched_site_names, reference_run, run_interventions

    items = edge_patches(layout)
    t0 = time.perf_counter()
    clean = clean_run(model, batch.tokens, patterns=False, extra=patched_site_names(items))
    reference = reference_run(model, batch.corrupted, items)
    setup = time.perf_counter() - t0
    base = float(metric.compute(clean.logits, batch, clean.logits))
    times, scores = [], []
    for i in sample:
        t0 = time.perf_counter()
        res = run_interventions(model, clean, [items[i]], metric, batch=batch, reference=reference,
                                method="naive")
        times.append(time.perf_counter() - t0)
        scores.append(base - float(res.values[0]))  # logit_diff: higher is better, sign +1
    return {"setup": setup, "times": times, "sample": scores}


def run_child(job: str, argv: list[str]) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--only", job]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"bench_attribution: the {job} run failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ the report
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16, help="prompt pairs")
    ap.add_argument("--pos", type=int, default=64, help="tokens per prompt (BOS and two blocks)")
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--mlp", action=argparse.BooleanOptionalAction, default=True,
                    help="MLPs of d_mlp 3072 in every layer (--no-mlp: attention-only)")
    ap.add_argument("--steps", type=int, default=5, help="EAP-IG interpolation steps")
    ap.add_argument("--sample", type=int, default=12,
                    help="about this many edges patched exactly (one pass each; at least one per kind), extrapolated")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each baseline pass (the fastest is used)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads in every measured process")
    ap.add_argument("--only", choices=JOBS, help=argparse.SUPPRESS)  # one measurement, JSON on stdout
    args = ap.parse_args(argv)
    if args.pos < 4 or args.batch < 1 or args.sample < 1 or args.repeat < 1 or args.steps < 1:
        ap.error("--pos must be at least 4; --batch, --sample, --repeat and --steps at least 1")
    if args.only:
        print(json.dumps(measure(args.only, args)))
        return 0

    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = make_config(args)
    layout = Layout.of(cfg)
    n_edges = len(layout.edges)
    sample = sample_edges(layout, args.sample)
    print(f"model: {cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}, "
          f"{f'MLPs {cfg.d_mlp}' if cfg.d_mlp else 'attention-only'}, LN, vocab {cfg.d_vocab}, random weights "
          f"(seed {args.seed}); {args.batch} prompt pairs x {args.pos} tokens, metric logit_diff; "
          f"{len(layout.senders)} senders, {len(layout.receivers)} receiver inputs, {n_edges} edges; "
          f"circuitry at {code_version()}; torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("each measurement in its own process; peak = its peak resident memory (VmHWM), above the model = "
          "peak minus the resident memory once the model and batch were built")
    res = {job: run_child(job, argv) for job in JOBS}
    base, eap, ig, ex = res["baseline"], res["eap"], res["eap-ig"], res["exact"]

    def mem(r: dict, name: str) -> str:
        peak = r[name + "_peak_kb"]
        note = "" if r["reset"] else " (the peak could not be reset: it includes building the model)"
        return f"peak {mib(peak):6.0f} MiB, {mib(peak - r['base_kb']):6.0f} MiB above the model{note}"

    fwd, fb, fba = base["forward"], base["fwd-bwd"], base["fwd-bwd-act"]
    kinds: dict[str, list[float]] = {}
    for i, t in zip(sample, ex["times"]):
        kinds.setdefault(layout.edges[i].kind, []).append(t)
    counts: dict[str, int] = {}
    for e in layout.edges:
        counts[e.kind] = counts.get(e.kind, 0) + 1
    t_exact = ex["setup"] + sum(counts[k] * sum(ts) / len(ts) for k, ts in kinds.items())
    per_pass = sum(ex["times"]) / len(ex["times"])
    rep = f"fastest of {args.repeat}"
    rows = [
        ("forward", fwd, mem(base, "forward"), f"no gradients; {rep}"),
        ("forward+backward", fb, mem(base, "fwd-bwd"), f"backward into every parameter; {rep}"),
        ("forward+backward, activations", fba, mem(base, "fwd-bwd-act"),
         f"gradient at the input embeddings only; {rep}"),
        (f"EAP, all {n_edges} edges", eap["eap"], mem(eap, "eap"), f"attribute's n_passes: {eap['passes']}"),
        (f"EAP-IG, {args.steps} steps, all edges", ig["eap-ig"], mem(ig, "eap-ig"),
         f"attribute's n_passes: {ig['passes']}"),
        ("exact, one pass per edge", t_exact, mem(ex, "exact"),
         f"EXTRAPOLATED: {len(sample)} sampled edges run, {per_pass:.2f} s per patched pass (a plain forward pass "
         f"in the same process: {ex['forward-here']:.2f} s), times each kind's edge count, plus {ex['setup']:.2f} s "
         f"of clean and corrupted cached runs (measured); = {t_exact / 3600:.1f} h"),
    ]
    for name, t, m, note in rows:
        print(f"{name:34s} {t:9.2f} s   {m}   ({note})" if t < 1000 else f"{name:34s} {t:9.0f} s   {m}   ({note})")
    ratio = eap["eap"] / eap["unit"]
    for name, r in (("EAP", eap), ("EAP-IG", ig)):
        t = r[name.lower()]
        print(f"{name} / forward+backward: {t / r['unit']:.2f}   (the forward+backward timed in its process right "
              f"before and after it: {r['fwd-bwd-before']:.2f} s, {r['fwd-bwd-after']:.2f} s; against the baseline "
              f"process's: {t / fb:.2f}, its forward: {t / fwd:.2f}, its forward+backward of activations: "
              f"{t / fba:.2f})")
    print(f"EAP-IG / EAP: {ig['eap-ig'] / eap['eap']:.2f}")
    print(f"exact (extrapolated) / EAP: {t_exact / eap['eap']:.0f}   (exact / EAP-IG: {t_exact / ig['eap-ig']:.0f})")
    print(f"EAP <= {LIMIT:g} forward+backward passes: {'yes' if ratio <= LIMIT else 'no'} (ratio {ratio:.2f})")

    print(f"metric: clean {eap['clean']:.4f}, corrupted {eap['corrupted']:.4f}; sampled edges, score = "
          f"M(clean) - M(edge patched from the corrupted run), and the gradient methods' estimates:")
    print(f"  {'edge':32s} {'exact':>10s} {'EAP':>10s} {'EAP-IG':>10s}")
    for j, i in enumerate(sample):
        print(f"  {str(layout.edges[i]):32s} {ex['sample'][j]:10.2e} {eap['sample'][j]:10.2e} {ig['sample'][j]:10.2e}")
    if len(sample) > 2:
        exact_t = torch.tensor(ex["sample"])
        r_eap, r_ig = (pearson(exact_t, torch.tensor(r["sample"])) for r in (eap, ig))
        print(f"  Pearson r with exact over the {len(sample)} edges: EAP {r_eap:.3f}, EAP-IG {r_ig:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
