"""Command-line options shared by every command that loads a model: --device, --dtype, --device-map,
--memory-budget."""

from __future__ import annotations

import argparse

DTYPE_CHOICES = ("float32", "bfloat16", "float16")


def add_model_options(p: argparse.ArgumentParser, device_map: bool = True) -> None:
    """--device and --dtype (both checked when the model loads: an unknown or absent device, an unknown
    dtype are usage errors with the choices) and --memory-budget."""
    p.add_argument("--device", default=None, help="torch device (cpu, cuda, cuda:1, mps ...)")
    p.add_argument("--dtype", default=None, metavar="DTYPE",
                   help="dtype of the weights and the forward pass: float32 (default), bfloat16 or float16; "
                        "scores, norms and metrics are accumulated in float32")
    if device_map:
        p.add_argument("--device-map", default=None, metavar="MAP",
                       help="spread the blocks over several devices: auto, or layer ranges such as "
                            "cuda:0=0-11,cuda:1=12-23 (needs accelerate: pip install 'circuitry[devices]')")
    p.add_argument("--memory-budget", default=None, metavar="BYTES",
                   help="memory this command may allocate (e.g. 4GiB); larger work is refused with the number "
                        "and chunked work is split to fit (default: CIRCUITRY_MEMORY_BUDGET, else half the "
                        "available memory, with chunks of at most 256 MiB)")
