"""Benchmark: the composition scan (Q, K and V over every pair of heads) of a large bfloat16 attention stack,
with the peak memory of the process compared with the size of its attention weights.

    python bench/bench_composition_scale.py           # 32 layers x 32 heads, d_model 4096, d_head 128, bfloat16,
                                                      # attention only, d_vocab 1000 (tens of minutes on 2 cores)
    python bench/bench_composition_scale.py --small   # 8 layers x 8 heads, d_model 512 (seconds)

Every measurement runs in a fresh Python process started by this script, so that its peak resident memory
(getrusage(RUSAGE_SELF).ru_maxrss) is its own:

  scan       builds the model (random weights, allocated in bfloat16), runs the composition detector through
             `circuitry.scan.run_detectors` and lists the strongest K-composition pairs
             (`ScanResult.pair_list`). Reported: the time, the peak RSS of the whole process (Python and torch
             included) and its ratio to the bytes of the attention weights W_Q, W_K, W_V, W_O (the target:
             below 1.5).
  reference  on a smaller model (--ref-layers x --ref-heads, d_model --ref-d-model, bfloat16), the
             whole-model way that the chunked scores replace: every layer's weights folded, cast to float32
             and stacked at once, factors formed for every head, one product per sender layer. Timed and
             measured the same way, next to the chunked scan of the same model, whose scores it must equal.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ATTENTION = ("W_Q", "W_K", "W_V", "W_O")
GiB = 2**30


def _rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _build(layers: int, heads: int, d_model: int, d_head: int, kv_heads: int | None, vocab: int):
    import torch

    from circuitry.model import HookedTransformer, ModelConfig

    cfg = ModelConfig(n_layers=layers, d_model=d_model, n_heads=heads, d_head=d_head, d_vocab=vocab, n_ctx=64,
                      d_mlp=None, normalization=None, positional="rotary", n_kv_heads=kv_heads,
                      name=f"attn-{layers}x{heads}-{d_model}")
    model = HookedTransformer(cfg, seed=0, dtype=torch.bfloat16).eval()
    attn_bytes = sum(p.numel() * p.element_size() for name, p in model.named_parameters()
                     if name.rsplit(".", 1)[-1] in ATTENTION)
    return model, attn_bytes


def whole_model_scores(model):
    """The composition scores the whole-model way (every weight in float32 at once), for comparison."""
    import torch

    from circuitry_plugins.detectors.composition import pair_scores, reader_factors, writer_factors
    from circuitry_plugins.detectors.weights import reading_weights

    w = {k: v.float() for k, v in reading_weights(model).items()}  # [layer, head, ...] float32 copies
    L, H = model.cfg.n_layers, model.cfg.n_heads
    A = writer_factors(w["W_V"], w["W_O"])  # [layer, head, d_head, d_model]
    readers = {"Q": reader_factors(w["W_Q"], w["W_K"]), "K": reader_factors(w["W_K"], w["W_Q"]),
               "V": reader_factors(w["W_V"], w["W_O"].transpose(-1, -2))}
    out = {}
    for kind, C in readers.items():
        scores = torch.full((L, H, L, H), float("nan"))
        for l1 in range(L - 1):
            scores[l1, :, l1 + 1:, :] = pair_scores(A[l1], C[l1 + 1:].flatten(0, 1)).reshape(H, L - l1 - 1, H)
        out[kind] = scores
    return out


def child(args) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, attn_bytes = _build(args.layers, args.heads, args.d_model, args.d_head, args.kv_heads, args.vocab)
    t_build = time.perf_counter() - t0
    rss_model = _rss_kib() * 1024
    t0 = time.perf_counter()
    top = []
    with torch.inference_mode():
        if args.child == "whole":
            scores = whole_model_scores(model)
        else:
            from circuitry.scan import ScanResult, run_detectors, select_detectors

            chosen = select_detectors(["composition"])
            _, pairs = run_detectors(model, None, chosen)
            scores = dict(pairs["composition"].scores)
            result = ScanResult(model.cfg.name, "weights only", {}, pairs, chosen)
            top = result.pair_list("composition", "K", top=3)
    t_scan = time.perf_counter() - t0
    if args.save:
        torch.save(scores, args.save)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"build_s": t_build, "scan_s": t_scan, "peak": peak, "rss_model": rss_model,
                      "attn_bytes": attn_bytes, "threads": torch.get_num_threads(), "top": top,
                      "pairs": sum(int((~s.isnan()).sum()) for s in scores.values())}))


def run_child(mode: str, args, shape: tuple[int, int, int, int, int | None], save: str | None = None) -> dict:
    layers, heads, d_model, d_head, kv = shape
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--layers", str(layers), "--heads",
           str(heads), "--d-model", str(d_model), "--d-head", str(d_head), "--vocab", str(args.vocab),
           "--threads", str(args.threads)]
    if kv:
        cmd += ["--kv-heads", str(kv)]
    if save:
        cmd += ["--save", save]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"{mode} run failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def describe(shape) -> str:
    layers, heads, d_model, d_head, kv = shape
    gqa = f", {kv} key/value heads" if kv else ""
    return f"{layers} layers x {heads} heads{gqa}, d_model {d_model}, d_head {d_head}, bfloat16, attention only"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="a small model (a quick run)")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--d-model", type=int, default=4096)
    ap.add_argument("--d-head", type=int, default=128)
    ap.add_argument("--kv-heads", type=int, default=None, help="key/value heads (grouped-query attention)")
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--ref-layers", type=int, default=6, help="layers of the reference comparison's model")
    ap.add_argument("--ref-heads", type=int, default=16)
    ap.add_argument("--ref-d-model", type=int, default=2048)
    ap.add_argument("--no-reference", action="store_true", help="skip the comparison with the whole-model way")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--child", choices=("scan", "whole"), help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.small:
        args.layers, args.heads, args.d_model, args.d_head = 8, 8, 512, 64
        args.ref_layers, args.ref_heads, args.ref_d_model = 4, 8, 512
    shape = (args.layers, args.heads, args.d_model, args.d_head, args.kv_heads)
    print(f"model: {describe(shape)}, d_vocab {args.vocab}, random weights")
    res = run_child("scan", args, shape)
    ratio = res["peak"] / res["attn_bytes"]
    print(f"composition scan (Q, K, V; {res['pairs']} scores), fresh process, {res['threads']} torch threads:")
    print(f"  build the model            {res['build_s']:8.1f} s")
    print(f"  composition scan           {res['scan_s']:8.1f} s")
    print(f"  attention weights          {res['attn_bytes'] / GiB:8.2f} GiB")
    print(f"  RSS after building         {res['rss_model'] / GiB:8.2f} GiB")
    print(f"  peak RSS of the process    {res['peak'] / GiB:8.2f} GiB")
    print(f"  peak RSS / attention weights {ratio:6.2f}  ({'below' if ratio < 1.5 else 'NOT below'} 1.5)")
    for row in res["top"]:
        print(f"  strongest K-composition: {row['from']} -> {row['to']} {row['score']:.4f} "
              f"(baseline {row['baseline']:.4f})")
    if args.no_reference:
        return
    import torch

    ref_shape = (args.ref_layers, args.ref_heads, args.ref_d_model, args.d_head, None)
    print(f"\nreference comparison: {describe(ref_shape)}")
    with tempfile.TemporaryDirectory() as tmp:
        new_path, old_path = os.path.join(tmp, "chunked.pt"), os.path.join(tmp, "whole.pt")
        new = run_child("scan", args, ref_shape, new_path)
        old = run_child("whole", args, ref_shape, old_path)
        a, b = torch.load(new_path), torch.load(old_path)
    err = max(float((a[k] - b[k]).abs().nan_to_num().max()) for k in a)
    same_nan = all(torch.equal(a[k].isnan(), b[k].isnan()) for k in a)
    print(f"  {'':34s} {'time s':>8s} {'peak RSS GiB':>13s} {'peak / attention weights':>25s}")
    for name, r in (("chunked (circuitry, with baseline)", new), ("whole-model float32", old)):
        print(f"  {name:34s} {r['scan_s']:8.1f} {r['peak'] / GiB:13.2f} {r['peak'] / r['attn_bytes']:25.2f}")
    print(f"  scores agree: max |difference| {err:.1e}, undefined (NaN) entries identical: {same_nan}")


if __name__ == "__main__":
    main()
