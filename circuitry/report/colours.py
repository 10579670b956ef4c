"""Colour scales and palettes shared by the HTML and terminal renderings.

Sequential values use ColorBrewer's "Blues" (matplotlib's `Blues`), ranges
that include negative values its diverging "RdBu" reversed (`RdBu_r`), so the
PNGs drawn with matplotlib read the same as the HTML and terminal pictures.
A scale with a centre (composition scores: the random-matrix baseline, which
random weights score on average and which is well above 0) is diverging and
symmetric about it: white at the centre, red above, blue below.
"""

from __future__ import annotations

import math

from circuitry.names import EDGE_COLOURS  # noqa: F401 - one palette of edge kinds for every picture

BLUES = ("#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c", "#08306b")
RDBU_R = ("#053061", "#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7", "#fddbc7", "#f4a582", "#d6604d",
          "#b2182b", "#67001f")
EMPTY = "#eceef1"  # cells without a value

# node fills by role (in order of first appearance) and their outlines
ROLE_FILLS = ("#fbb4ae", "#b3cde3", "#ccebc5", "#decbe4", "#fed9a6", "#ffffcc", "#e5d8bd", "#fddaec")
ROLE_STROKES = ("#c0392b", "#2f5f8a", "#3d8b37", "#7b4f8e", "#c77c11", "#a39b1f", "#8c6d46", "#b05b86")
FIXED_ROLES = {"input": ("#e8e8e8", "#777777"), "output": ("#e8e8e8", "#777777")}
MPL_SEQUENTIAL, MPL_DIVERGING = "Blues", "RdBu_r"


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return int(hex_colour[1:3], 16), int(hex_colour[3:5], 16), int(hex_colour[5:7], 16)


def diverging(value_range: tuple[float, float]) -> bool:
    return value_range[0] < 0 < value_range[1]


def scale_bounds(value_range: tuple[float, float], centre: float | None = None) -> tuple[float, float, bool]:
    """(lo, hi, diverging) of the colour scale of `value_range`: symmetric about `centre` when one is given
    (about 0 for a range across 0), so equal distances from the centre get equally strong colours."""
    lo, hi = value_range
    if centre is None and diverging(value_range):
        centre = 0.0
    if centre is None:
        return lo, hi, False
    m = max(centre - lo, hi - centre) or 1.0
    return centre - m, centre + m, True


def scale_colour(value: float, value_range: tuple[float, float], centre: float | None = None) -> str:
    """The colour of `value` on the scale of `value_range` (values outside are clipped), diverging about
    `centre` when one is given (see `scale_bounds`)."""
    if value is None or not math.isfinite(value):
        return EMPTY
    lo, hi, two_sided = scale_bounds(value_range, centre)
    stops = RDBU_R if two_sided else BLUES
    x = 0.0 if hi == lo else min(1.0, max(0.0, (value - lo) / (hi - lo)))
    pos = x * (len(stops) - 1)
    i = min(int(pos), len(stops) - 2)
    f = pos - i
    a, b = _rgb(stops[i]), _rgb(stops[i + 1])
    r, g, bl = (round(a[k] + (b[k] - a[k]) * f) for k in range(3))
    return f"#{r:02x}{g:02x}{bl:02x}"


def ink_for(background: str) -> str:
    """Black or white text, whichever reads better on `background`."""
    r, g, b = _rgb(background)
    return "#ffffff" if 0.299 * r + 0.587 * g + 0.114 * b < 140 else "#1a1a1a"


def role_colours(roles) -> dict[str, tuple[str, str]]:
    """role -> (fill, stroke), in the order given."""
    out: dict[str, tuple[str, str]] = {}
    i = 0
    for role in roles:
        if role in FIXED_ROLES:
            out[role] = FIXED_ROLES[role]
        elif role not in out:
            out[role] = (ROLE_FILLS[i % len(ROLE_FILLS)], ROLE_STROKES[i % len(ROLE_STROKES)])
            i += 1
    return out
