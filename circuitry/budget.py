"""The memory budget: the bytes an analysis may allocate, checked before allocating.

Every large allocation (a model's weights, a token batch, a cached run, a
sweep's chunk) is estimated first and compared with the budget; over it, the
work is refused with both numbers instead of crashing the machine or the
process. Chunked loops size their chunks from the same budget.

The budget is, in order: `CIRCUITRY_MEMORY_BUDGET` (bytes, or with a unit:
`512MB`, `8GiB`, `2G`), else half of the memory this machine has available now
(at least 1 GiB; 8 GiB when that cannot be read). Chunked loops size their chunks
from `chunk_budget()`: the budget when it is set, else at most 256 MiB.
"""

from __future__ import annotations

import os
import re

from circuitry.errors import UsageError

ENV = "CIRCUITRY_MEMORY_BUDGET"
FALLBACK = 8 * 2**30
CHUNK_DEFAULT = 256 * 2**20
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """'8GiB' -> 8589934592; a UsageError for anything else than a number with an optional unit."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise UsageError(f"{ENV}={text!r}: expected a number of bytes with an optional unit "
                         f"(e.g. 512MB, 8GiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def available_memory() -> int | None:
    """Bytes of memory available now (Linux /proc/meminfo, else os.sysconf), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def memory_budget() -> int:
    """The budget in bytes (see the module docstring)."""
    raw = os.environ.get(ENV, "").strip()
    if raw:
        return parse_bytes(raw)
    avail = available_memory()
    return FALLBACK if avail is None else max(2**30, avail // 2)


def chunk_budget() -> int:
    """Bytes a chunked loop (sweeps, attribution, composition scores) may hold per chunk: the budget when
    it is set (`CIRCUITRY_MEMORY_BUDGET`, `--memory-budget`), else the smaller of the budget and
    `CHUNK_DEFAULT` (256 MiB): larger chunks are barely faster, and the rest of the memory stays free
    for the model."""
    if os.environ.get(ENV, "").strip():
        return memory_budget()
    return min(memory_budget(), CHUNK_DEFAULT)


def format_bytes(n: float) -> str:
    """A readable size: '1.5 GiB', '300 MiB', '12 KiB', '8 B'."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def require(nbytes: float, what: str, budget: int | None = None) -> None:
    """A UsageError (exit 2) when `what` would need more than the budget, before it is allocated."""
    limit = memory_budget() if budget is None else budget
    if nbytes > limit:
        raise UsageError(f"{what} would need {format_bytes(nbytes)}, over the memory budget of "
                         f"{format_bytes(limit)} (raise it with --memory-budget or {ENV}, or make it smaller)")


def run_bytes(cfg, batch: int, pos: int, patterns: bool = True) -> int:
    """Bytes of a forward pass with a cache, for a model config on batch x pos tokens (float32).

    Per row and position: the logits (d_vocab), and per layer the residual
    stream, normalised input, q/k/v, z and outputs (~12 d_model), the MLP
    (3 d_mlp), and the attention scores and pattern (2 heads x pos, when
    patterns are kept). An estimate of what a cached clean run holds, used to
    refuse data too large before anything is generated.
    """
    per_layer = 12 * cfg.d_model + 3 * (cfg.d_mlp or 0) + (2 * cfg.n_heads * pos if patterns else 0)
    per_pos = cfg.d_vocab + cfg.n_layers * per_layer
    return 4 * int(batch) * int(pos) * per_pos
