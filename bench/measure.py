"""What the benchmarks share: the process's resident memory (now and peak, resettable; Linux) and the code
version a run measured."""

from __future__ import annotations

import os
import subprocess


def status_kb(key: str) -> int:
    """A field of /proc/self/status in kB (VmRSS, VmHWM); -1 where there is none."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def reset_rss_peak() -> bool:
    """Reset the process's peak resident memory (VmHWM) to its current resident memory (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def code_version() -> str:
    """The git commit of the checkout this script runs from ("+ changes" when circuitry/ differs from it), if any."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "circuitry"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' + changes' if dirty else ''}" if head else "unknown"
