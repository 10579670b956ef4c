"""Benchmark: the path decomposition projected on the correct-token logit, against a plain forward
pass and against full-vocabulary terms, on a GPT-2-small-shaped model with random weights.

    python bench/bench_decompose.py            # 12 layers x 12 heads, d_model 768, d_mlp 3072, LN,
                                               # d_vocab 50257, 8 x 128 tokens
    python bench/bench_decompose.py --small    # a tiny model, to check that the script runs

Three phases run in one process, one after the other:
  forward    one plain forward pass (inference mode), after one warm-up pass
  projected  decompose(model, tokens) (one cached run + the frozen propagation) and
             project("correct"): every term (direct, 144 heads, 9504 virtual heads, MLPs,
             bias, remainder) as [n_terms, batch, pos]
  one path   project("correct", paths=[one virtual head]): what a decomposition check asks for
  top paths  top_paths(10): every term ranked, each chunk reduced to its means as it is computed
  full-vocab the [batch, pos, d_vocab] logits of a subset of the terms, all kept in memory;
             there are too many terms to do all of them (9665 x 206 MB), so the time and
             memory are extrapolated linearly to every term and marked as such.
The full-vocabulary terms of the subset are dotted with the correct-token direction and
compared with the projected values, as a check that both compute the same numbers.

Peak memory: torch's CPU tensors live in ordinary process memory, which tracemalloc does
not see. Before each phase the script resets the kernel's peak-RSS counter (writing 5 to
/proc/self/clear_refs, Linux) and reports VmHWM - VmRSS at the start of the phase: the
extra resident memory the phase needed at its peak. Where that reset is unavailable it
falls back to getrusage(RUSAGE_SELF).ru_maxrss deltas, which only show growth beyond the
process's earlier peak. With glibc the script fixes malloc's mmap threshold at 1 MiB
(mallopt): glibc otherwise raises the threshold as large blocks are freed and keeps freed
heap chunks of later tensors resident, which adds about 1 GB of allocator retention to the
measured peak of the projected phase on the full-size model; with the fixed threshold the
RSS follows the live tensors.
"""

from __future__ import annotations

import argparse
import gc
import resource
import time
from pathlib import Path

import torch

from circuitry.data import repeated_tokens
from circuitry.graph import decompose
from circuitry.model import HookedTransformer, ModelConfig

MB = 1024 * 1024


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def fix_mmap_threshold(size: int = 1 << 20) -> bool:
    """Ask glibc to serve every block above `size` bytes by mmap (freed memory leaves the process)."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, size))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


class PeakMemory:
    """Extra resident memory (MB) at the peak of a `with` block, relative to its start."""

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        self.exact = False
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.exact = _status_kb("VmHWM") is not None
        except OSError:
            pass
        self.start_kb = _status_kb("VmRSS") if self.exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc) -> None:
        end = _status_kb("VmHWM") if self.exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.mb = max(0, (end or 0) - (self.start_kb or 0)) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="a tiny model (smoke test)")
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--pos", type=int, default=128)
    ap.add_argument("--subset", type=int, default=12, help="full-vocabulary terms computed (default 12)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fixed = fix_mmap_threshold()
    if args.small:
        cfg = ModelConfig(n_layers=3, d_model=64, n_heads=4, d_head=16, d_vocab=500, n_ctx=128, d_mlp=256,
                          normalization="LN", act_fn="gelu_new", attn_bias=True, mlp_bias=True, name="small")
    else:
        cfg = ModelConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_vocab=args.vocab, n_ctx=1024,
                          d_mlp=3072, normalization="LN", act_fn="gelu_new", attn_bias=True, mlp_bias=True,
                          name="gpt2-small-shape")
    t0 = time.perf_counter()
    model = HookedTransformer(cfg, seed=0).eval()
    print(f"model {cfg.name}: {cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}, "
          f"d_mlp {cfg.d_mlp}, d_vocab {cfg.d_vocab}, {model.n_params() / 1e6:.1f}M parameters, random "
          f"weights (built in {time.perf_counter() - t0:.1f} s); {torch.get_num_threads()} threads; "
          f"malloc mmap threshold {'fixed at 1 MiB' if fixed else 'default'}")
    half = args.pos // 2
    tokens = repeated_tokens(cfg.d_vocab, None, batch=args.batch, seq_len=half, n_repeats=2, seed=0).tokens
    print(f"tokens: {tuple(tokens.shape)} (random block of {half} repeated twice)")

    with torch.inference_mode():
        model(tokens[:, :8])  # warm-up
        with PeakMemory() as mem_fwd:
            t = time.perf_counter()
            logits = model(tokens)
            t_fwd = time.perf_counter() - t
        del logits

        with PeakMemory() as mem_proj:
            t = time.perf_counter()
            dec = decompose(model, tokens)
            t_dec = time.perf_counter() - t
            t = time.perf_counter()
            proj = dec.project("correct")
            t_proj = time.perf_counter() - t
        n_terms = len(proj.paths)
        pair = ("L0H0", f"L{cfg.n_layers - 1}H0")
        with PeakMemory() as mem_one:
            t = time.perf_counter()
            one = dec.project("correct", paths=[pair])
            t_one = time.perf_counter() - t
        one_err = float((one[pair] - proj[pair]).abs().max())
        with PeakMemory() as mem_top:
            t = time.perf_counter()
            top = dec.top_paths(10, "correct")
            t_top = time.perf_counter() - t
        same_top = [s.path for s in top] == [s.path for s in proj.top(10)]
        total_err = (proj.total()[:, :-1] - dec.logits[:, :-1].gather(-1, dec.tokens[:, 1:, None])[..., 0]).abs().max()

        # a subset of the full-vocabulary terms: direct, heads, virtual heads, an MLP, bias, remainder
        k = max(args.subset - (3 if cfg.attn_only else 4), 2)  # heads + virtual heads in the subset
        heads = [p for p in proj.paths if len(p) == 1 and p[0][0] == "L"]
        pairs = [p for p in proj.paths if len(p) == 2]
        subset = ([("direct",)] + heads[:: max(1, len(heads) // (k // 2))][: k // 2]
                  + pairs[:: max(1, len(pairs) // (k - k // 2))][: k - k // 2]
                  + ([] if cfg.attn_only else [("M0",)]) + [("bias",), ("remainder",)])
        with PeakMemory() as mem_full:
            t = time.perf_counter()
            full = [dec.term(p) for p in subset]  # each [batch, pos, d_vocab], all kept
            t_full = time.perf_counter() - t
        correct = torch.zeros_like(full[0])
        correct[:, :-1].scatter_(-1, dec.tokens[:, 1:, None], 1.0)
        check = max(float(((f * correct).sum(-1) - proj[p]).abs().max()) for p, f in zip(subset, full))
        term_mb = full[0].numel() * full[0].element_size() / MB
        del full, correct

    per_term = t_full / len(subset)
    t_full_all = per_term * n_terms
    mem_full_all = mem_full.mb / len(subset) * n_terms
    t_cheap = t_dec + t_proj
    note = "" if mem_fwd.exact else " (ru_maxrss fallback: growth beyond the earlier peak only)"
    print(f"\nterms: {n_terms} (1 direct, {len(heads)} heads, {len(pairs)} virtual heads, "
          f"{cfg.n_layers if not cfg.attn_only else 0} MLPs, bias, remainder)")
    print(f"{'phase':44s} {'time s':>9s} {'peak MB':>10s}{note}")
    print(f"{'forward pass':44s} {t_fwd:9.2f} {mem_fwd.mb:10.0f}")
    print(f"{'decompose (cached run + propagation)':44s} {t_dec:9.2f}")
    print(f"{'project(correct), all terms':44s} {t_proj:9.2f}")
    print(f"{'decompose + project (one phase)':44s} {t_cheap:9.2f} {mem_proj.mb:10.0f}")
    print(f"{'project(correct, paths=[one virtual head])':44s} {t_one:9.3f} {mem_one.mb:10.0f}")
    print(f"{'top_paths(10), streamed':44s} {t_top:9.2f} {mem_top.mb:10.0f}")
    print(f"{f'full-vocab, {len(subset)} terms measured (kept)':44s} {t_full:9.2f} {mem_full.mb:10.0f}")
    print(f"{f'full-vocab, all {n_terms} terms (extrapolated)':44s} {t_full_all:9.1f} {mem_full_all:10.0f}"
          f"   ({term_mb:.0f} MB per term)")
    print("\nratios")
    print(f"  projected decomposition / forward pass:     time {t_cheap / t_fwd:6.1f}x   "
          f"memory {mem_proj.mb / max(mem_fwd.mb, 1):6.1f}x")
    print(f"  full-vocab (all terms, extrapolated) / projected: time {t_full_all / t_cheap:8.3g}x   "
          f"memory {mem_full_all / max(mem_proj.mb, 1):8.3g}x")
    print(f"  full-vocab per term / forward pass:          time {per_term / t_fwd:6.2f}x")
    print(f"\nchecks: projected terms sum to the correct-token logit within {float(total_err):.1e}; "
          f"full-vocab subset dotted with the target matches the projection within {check:.1e}; "
          f"one path projected alone matches within {one_err:.1e}; top_paths ranks as project().top: {same_top}")


if __name__ == "__main__":
    main()
