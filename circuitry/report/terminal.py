"""Attention heatmaps in the terminal with rich: one coloured cell per (query, key).

A cell shows the attention weight in percent (blank below 1 %, `99` at the
top) on a background from the same colour scale as the HTML and PNG pictures,
so the numbers survive where colour does not (pipes, logs). When the sequence
is too long for the width, cells shrink to one coloured character without a
number. Renders a `Grid` from `circuitry.figures`; computes nothing.
"""

from __future__ import annotations

import math

from rich.console import Group
from rich.style import Style
from rich.text import Text

from circuitry.figures import Figures, Grid
from circuitry.report.colours import ink_for, scale_colour

LABEL_W = 6


def _label(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def cell_text(value: float) -> str:
    """Two characters: the weight in percent, blank below 1 %."""
    if not math.isfinite(value):
        return "  "
    pct = min(99, int(round(value * 100)))
    return "  " if pct < 1 else f"{pct:>2}"


def attention_heatmap(grid: Grid, width: int | None = None) -> Text:
    """Rows: `label │ cells`; a header of key labels written top to bottom, one character per line."""
    n_q, n_k = grid.shape
    wide = width is None or LABEL_W + 2 + 3 * n_k <= width
    step = 3 if wide else 1
    out = Text(no_wrap=True, overflow="crop")
    out.append(f"{grid.head or grid.title}", style="bold")
    if grid.role:
        out.append(f" · {grid.role}", style="dim")
    out.append(f"   query ↓ key →{'   cells: attention × 100' if wide else ''}\n", style="dim")
    labels = [_label(c, 3) for c in grid.col_labels]
    depth = max((len(c) for c in labels), default=0) if wide else 0
    for d in range(depth):  # key labels, one character per line, bottom-aligned
        line = " " * (LABEL_W + 2)
        for c in labels:
            ch = c.rjust(depth)[d]
            line += f" {ch} " if step == 3 else ch
        out.append(line.rstrip() + "\n", style="dim")
    for i, row in enumerate(grid.values):
        out.append(_label(grid.row_labels[i], LABEL_W).rjust(LABEL_W) + " │", style="dim")
        for v in row:
            if not math.isfinite(v):
                out.append(" " * step)
                continue
            bg = scale_colour(v, grid.value_range)
            style = Style(bgcolor=bg, color=ink_for(bg))
            out.append(f"{cell_text(v)} " if step == 3 else " ", style=style)
        out.append("\n")
    return out


def heatmaps(figures: Figures, width: int | None = None) -> Group:
    """Every attention pattern of `figures`, one after another, under a caption line."""
    parts: list = [Text(f"{figures.model} · {figures.data}" if figures.data else figures.model, style="dim")]
    for g in figures.patterns:
        parts.append(attention_heatmap(g, width))
    return Group(*parts)
