"""Which axis labels of a heatmap are shown: every k-th, so that labels at a readable size never overlap.

A label written across the axis (a row label, or a column label turned on its
side) needs `label_px` along the axis; cells are `pitch_px` apart. `label_stride`
picks the smallest step of a round series (1, 2, 4, 5, 8, 10, 16, 20, ...) whose
labels are at least that far apart, so a 128-token axis of 6 px cells shows
positions 0, 4, 8, ... at full size instead of 128 labels too small to read.
The hidden labels stay in the picture's data (hover titles, the DOM).
"""

from __future__ import annotations

import math

ROUND_STEPS = (1, 2, 4, 5, 8, 10, 16, 20, 25, 32, 50, 64, 100, 128, 200, 250, 256, 500, 512, 1000)


def label_stride(pitch_px: float, label_px: float) -> int:
    """The smallest round step k with k * pitch_px >= label_px."""
    if pitch_px <= 0:
        raise ValueError(f"pitch_px must be positive, got {pitch_px}")
    need = max(1, math.ceil(label_px / pitch_px - 1e-9))
    return next((k for k in ROUND_STEPS if k >= need), need)


def shown(n: int, stride: int) -> range:
    """The indices of the labels shown on an axis of n cells: 0, stride, 2 * stride, ..."""
    return range(0, n, stride)


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ... 32nd (for "every 4th position labelled")."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
