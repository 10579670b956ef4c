"""Keep the C heap from holding freed tensor memory (glibc on Linux).

glibc's malloc serves allocations below its mmap threshold from the heap and
raises that threshold (up to 32 MiB) each time a larger mmapped block is freed.
Loading a model frees thousands of buffers of a few MiB (tensors read from a
checkpoint, then converted): with the raised threshold they land in the heap,
which keeps them resident, and the process ends up holding the model about one
and a half times. Fixing the threshold at 4 MiB (which also turns the dynamic
raising off) returns each large buffer to the system when it is freed.
Elsewhere than glibc this does nothing; `MALLOC_MMAP_THRESHOLD_` set in the
environment is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_MMAP_THRESHOLD = -3
THRESHOLD = 4 * 2**20
_done = False


def bound_heap() -> bool:
    """Fix glibc's mmap threshold at THRESHOLD (once per process); whether it was set."""
    global _done
    if _done or not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _done = bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        _done = False
    return _done
