"""Benchmark: a billion-parameter Llama-3-shaped checkpoint in bfloat16, loaded from its shards and analysed.

Builds (once, in `--dir`) a random-weight Llama-3-shaped model with transformers, saved with
save_pretrained in bfloat16 as several safetensors shards (`--shard` MB each):

- default: 22 layers, 32 heads, 4 key/value heads, d_model 2048, d_mlp 5632, vocabulary 32000, llama3
  rope scaling (factor 8, low/high frequency factors 1 and 4, original context 8192, rope_theta 500000):
  about 1.1 B parameters, 2.2 GB of bfloat16;
- `--small`: 4 layers, 8 heads, 2 key/value heads, d_model 256, d_mlp 704, vocabulary 4096, same rotary.

Weights are N(0, 0.02) (norm weights 1), drawn from a seeded generator.

Then runs, each in a fresh process (`python -m circuitry ...`), with its wall time and peak resident memory
(the child's ru_maxrss from os.wait4) and that peak as a multiple of the checkpoint's size on disk:

- `info hf:DIR --dtype bfloat16`: the load alone;
- `scan hf:DIR --dtype bfloat16`: every detector and the composition scores over all head pairs;
- `verify SPEC --dtype bfloat16`: a five-check spec (detectors, composition, an ablation, a metric);
- `attribute hf:DIR --task specs/tasks/induction.yaml --method eap --dtype bfloat16`: EAP over every edge;
- the transformers load path in one process: `AutoModelForCausalLM.from_pretrained(dtype=bfloat16)`
  (time and peak), converted in memory (`convert_hf_model`), and the logits of transformers and of the
  model circuitry loads from the shards on one batch (8 x 32 random tokens): the largest difference and
  the largest logit, in bfloat16 and with both models cast to float32.

Usage: python bench/bench_scale.py [--small] [--dir DIR] [--shard 500] [--threads 2] [--only JOB]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}
FULL = dict(num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4, hidden_size=2048,
            intermediate_size=5632, vocab_size=32000)
SMALL = dict(num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, hidden_size=256,
             intermediate_size=704, vocab_size=4096)
SPEC = """apiVersion: circuitry/v1
kind: CircuitSpec
metadata:
  name: scale-random-llama
  description: a random-weight model has no induction circuit; five claims that say so
model: {{ref: "hf:{dir}", dtype: bfloat16}}
data: {{name: repeated, seq_len: 8, n_repeats: 2, batch: 8, seed: 1}}
circuit:
  nodes: {{L0H0: previous_token, L1H0: induction}}
  edges: [L0H0 -> L1H0 (K)]
checks:
  - {{id: no-previous-token-head, kind: detector, detector: previous_token, nodes: [L0H0], expect: "< 0.5"}}
  - {{id: no-induction-head, kind: detector, detector: induction, nodes: [L1H0], expect: "< 0.5"}}
  - {{id: k-composition-at-chance, kind: composition, expect: {{ratio_to_baseline: "< 1.5"}}}}
  - {{id: ablation-changes-little, kind: intervention, intervention: zero, target: L1H0, metric: loss,
     expect: {{change: "< 1.0"}}}}
  - {{id: loss-near-uniform, kind: metric, metric: loss, expect: "> 1.0"}}
"""


def build(directory: Path, small: bool, shard_mb: int) -> None:
    """The random checkpoint, saved in bfloat16 shards (skipped when `directory` already holds one)."""
    if (directory / "config.json").exists():
        return
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights

    config = LlamaConfig(**(SMALL if small else FULL), max_position_embeddings=131072, rope_theta=500000.0,
                         rope_scaling=dict(ROPE), tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.set_default_dtype(torch.bfloat16)
    with no_init_weights():
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    model.save_pretrained(directory, max_shard_size=f"{shard_mb}MB")


def checkpoint_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.glob("*.safetensors"))


def run(argv: list[str], threads: int) -> tuple[float, int, int, str]:
    """(seconds, peak resident bytes, exit code, last output line) of one command in a fresh process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    assert proc.stdout is not None
    output = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return time.perf_counter() - start, usage.ru_maxrss * 1024, proc.returncode, (lines[-1] if lines else "")


def transformers_job(directory: Path) -> None:
    """In this process: the transformers load path, and logits of both loads on one batch (JSON on stdout)."""
    import resource

    import torch
    from transformers import AutoModelForCausalLM

    from circuitry.sources import load_model
    from circuitry_plugins.hf.source import convert_hf_model

    start = time.perf_counter()
    hf = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.bfloat16, attn_implementation="eager")
    hf.eval()
    load_s = time.perf_counter() - start
    peak_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    converted = convert_hf_model(hf, dtype=torch.bfloat16)
    convert_s = time.perf_counter() - start
    ours = load_model(f"hf:{directory}", dtype="bfloat16")
    tokens = torch.randint(0, ours.cfg.d_vocab, (8, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(tokens).logits
        got = ours(tokens)
        same = converted(tokens)
        want32 = hf.float()(tokens).logits
        got32 = ours.float()(tokens)
    print(json.dumps({
        "load_s": load_s, "peak_load": peak_load, "convert_s": convert_s,
        "bf16_diff": float((got.float() - want.float()).abs().max()), "bf16_max": float(want.float().abs().max()),
        "converted_diff": float((same.float() - want.float()).abs().max()),
        "f32_diff": float((got32 - want32).abs().max()), "f32_max": float(want32.abs().max()),
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--shard", type=int, default=500, help="shard size in MB")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    directory = args.dir or Path("/tmp") / ("circuitry-llama3-small" if args.small else "circuitry-llama3-1b")
    if args.only == "transformers":
        transformers_job(directory)
        return
    start = time.perf_counter()
    build(directory, args.small, args.shard)
    size = checkpoint_bytes(directory)
    shards = len(list(directory.glob("*.safetensors")))
    print(f"checkpoint {directory}: {size / 2**30:.2f} GiB in {shards} safetensors shards "
          f"(built or found in {time.perf_counter() - start:.1f} s); load average {os.getloadavg()[0]:.2f}")
    spec = directory / "scale.yaml"
    spec.write_text(SPEC.format(dir=directory), encoding="utf-8")
    cli = [sys.executable, "-m", "circuitry"]
    ref = f"hf:{directory}"
    jobs = {
        "info": [*cli, "info", ref, "--dtype", "bfloat16"],
        "scan": [*cli, "scan", ref, "--dtype", "bfloat16"],
        "verify": [*cli, "verify", str(spec)],
        "attribute eap": [*cli, "attribute", ref, "--task", "specs/tasks/induction.yaml", "--method", "eap",
                          "--dtype", "bfloat16"],
    }
    print(f"{'job':<16}{'seconds':>10}{'peak RSS':>12}{'x checkpoint':>14}  exit  last line")
    for name, argv in jobs.items():
        seconds, peak, code, last = run(argv, args.threads)
        print(f"{name:<16}{seconds:>10.1f}{peak / 2**30:>10.2f} G{peak / size:>14.2f}  {code:>4}  {last[:70]}")
    seconds, peak, code, last = run([sys.executable, __file__, "--only", "transformers", "--dir", str(directory)],
                                    args.threads)
    if code != 0:
        print(f"transformers path failed ({code}): {last}")
        return
    r = json.loads(last)
    print(f"{'transformers':<16}{r['load_s']:>10.1f}{r['peak_load'] / 2**30:>10.2f} G{r['peak_load'] / size:>14.2f}"
          f"  from_pretrained alone (its weights memory-mapped, paged in when used)")
    print(f"{'  whole job':<16}{seconds:>10.1f}{peak / 2**30:>10.2f} G{peak / size:>14.2f}  from_pretrained, "
          f"converting in memory ({r['convert_s']:.1f} s), circuitry's own load and both forward passes")
    print(f"logits vs transformers, 8 x 32 tokens: bfloat16 max |diff| {r['bf16_diff']:.4f} of max |logit| "
          f"{r['bf16_max']:.3f}; float32 {r['f32_diff']:.2e} of {r['f32_max']:.3f}; converted in memory "
          f"(bfloat16) {r['converted_diff']:.4f}")


if __name__ == "__main__":
    main()
