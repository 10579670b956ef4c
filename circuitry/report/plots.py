"""PNG plots with matplotlib (the optional `plot` extra, imported only when a plot is made).

- `heatmaps_figure(grids)` / `figures_png(figures, path)`: attention patterns,
  head-score grids and composition matrices of a `Figures`;
- `loss_curve_figure(losses)` / `loss_curve_png(losses, path)`: `circuitry train`;
- `phase_change_figure(steps, series)` / `phase_change_png(...)`: detector scores
  across training checkpoints, with the loss on a second axis.

Without matplotlib every entry point raises a UsageError with the install
hint (the CLI's exit code 2). PNGs are written to a temporary file and
renamed. Plots draw what they are given; they compute nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from circuitry.errors import UsageError
from circuitry.figures import Figures, Grid
from circuitry.report.colours import EDGE_COLOURS, MPL_DIVERGING, MPL_SEQUENTIAL, scale_bounds
from circuitry.report.ticks import label_stride, ordinal, shown

INSTALL_HINT = "PNG output needs matplotlib: pip install 'circuitry[plot]'"


def available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend, or a UsageError with the install hint."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return plt


def require() -> None:
    """Fail early (before any model is loaded) when PNG output cannot be made."""
    pyplot()


def save_png(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write `fig` as PNG atomically and close it."""
    from circuitry.fileio import atomic_write

    plt = pyplot()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png", facecolor="white"))
    finally:
        plt.close(fig)


# ------------------------------------------------------------------ heatmaps
LABEL_PT = 7  # smallest tick-label size (7 pt at 110 dpi: 10.7 px)
LABEL_SPAN_PT = 11  # points a tick label needs across its line, gap included


def _tick_stride(ax, n: int, vertical: bool) -> int:
    """Every how many cells an axis of n cells gets a label, from the axes' size in points."""
    box = ax.get_position()  # in figure fractions
    w, h = ax.figure.get_size_inches()
    length_pt = (box.height * h if vertical else box.width * w) * 72 * 0.85  # layouts shrink the axes a little
    return label_stride(length_pt / max(1, n), LABEL_SPAN_PT)


def _draw_grid(ax, grid: Grid, annotate: bool) -> None:
    from matplotlib.patches import Rectangle

    lo, hi, two_sided = scale_bounds(grid.value_range, grid.centre)
    cmap = MPL_DIVERGING if two_sided else MPL_SEQUENTIAL
    rows = [[v if math.isfinite(v) else float("nan") for v in row] for row in grid.values]
    im = ax.imshow(rows, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest", aspect="equal")
    n_r, n_c = grid.shape
    small = max(n_r, n_c) <= 12
    size = 9 if small else 8 if max(n_r, n_c) <= 32 else LABEL_PT
    x_step, y_step = _tick_stride(ax, n_c, False), _tick_stride(ax, n_r, True)
    ax.set_xticks(list(shown(n_c, x_step)))
    ax.set_yticks(list(shown(n_r, y_step)))
    ax.set_xticklabels([grid.col_labels[j] for j in shown(n_c, x_step)],
                       rotation=90 if not small or grid.kind == "attention" else 0, fontsize=size)
    ax.set_yticklabels([grid.row_labels[i] for i in shown(n_r, y_step)], fontsize=size)
    every = max(x_step, y_step)
    ax.set_xlabel(grid.col_title + (f" (every {ordinal(every)} labelled)" if every > 1 else ""), fontsize=9)
    ax.set_ylabel(grid.row_title, fontsize=9)
    ax.set_title(grid.head + (f" · {grid.role}" if grid.role else "") if grid.head else grid.title, fontsize=11)
    if annotate:
        for i, row in enumerate(grid.values):
            for j, v in enumerate(row):
                if math.isfinite(v):
                    shade = abs(v - (lo + hi) / 2) / ((hi - lo) / 2) if two_sided else (v - lo) / (hi - lo or 1)
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if shade > 0.6 else "#1a1a1a")
    for i, j in grid.highlight:
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#ffb000", lw=2.2))
    bar = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if grid.centre is not None:  # the value the scale is centred on (composition: the random baseline)
        bar.ax.axhline(grid.centre, color="#333333", lw=1)
        bar.set_label(f"white: {'random baseline' if grid.baseline == grid.centre else 'centre'} "
                      f"{grid.centre:.3f}", fontsize=8)


def heatmaps_figure(grids: Sequence[Grid], title: str = "", columns: int | None = None):
    """One panel per grid; small grids (head scores, composition) get their numbers written in."""
    plt = pyplot()
    if not grids:
        raise UsageError("nothing to plot: no heatmaps")
    n = len(grids)
    cols = columns or min(n, 2 if max(max(g.shape) for g in grids) > 12 else 3)
    rows = math.ceil(n / cols)
    side = 5.2 if max(max(g.shape) for g in grids) > 12 else 3.6
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols + 0.6, side * rows + (0.5 if title else 0.1)),
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k < n:
            g = grids[k]
            _draw_grid(ax, g, annotate=g.kind != "attention" and max(g.shape) <= 12)
        else:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=12)
        fig.tight_layout(rect=(0, 0, 1, 0.97))
    else:
        fig.tight_layout()
    return fig


def figures_png(figures: Figures, path: str | Path) -> Path:
    """The attention patterns of `figures` (or, without them, its patching or score grids) as one PNG."""
    grids = list(figures.patterns) or list(figures.patching) or [*figures.head_scores, *figures.composition]
    title = f"{figures.title} — {figures.model}" + (f" · {figures.data}" if figures.data else "")
    return save_png(heatmaps_figure(grids, title=title), path)


# ------------------------------------------------------------------ training curves
def loss_curve_figure(losses: Sequence[float], title: str = "training loss"):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(range(1, len(losses) + 1), list(losses), lw=1.1, color="#2171b5")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def loss_curve_png(losses: Sequence[float], path: str | Path, title: str = "training loss") -> Path:
    return save_png(loss_curve_figure(losses, title), path)


def phase_change_figure(steps: Sequence[int], series: Mapping[str, Sequence[float]],
                        loss: Sequence[float] | None = None, thresholds: Mapping[str, float] | None = None,
                        title: str = "detector scores across training", score_range: tuple[float, float] = (0.0, 1.0)):
    """One line per series (e.g. `induction L1H3`) over checkpoint steps on a fixed score axis
    (`score_range`, 0..1: the detectors' range, so runs can be compared by eye); the loss on a second axis.
    The legend sits below the axes, off the curves."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.6), layout="constrained")
    palette = ["#2171b5", "#e66101", "#1b9e77", "#6a3d9a", "#c5221f", "#8c6d46", "#e7298a", "#666666"]
    for k, (name, values) in enumerate(series.items()):
        if len(values) != len(steps):
            raise UsageError(f"series {name!r} has {len(values)} values for {len(steps)} steps")
        ax.plot(list(steps), list(values), marker="o", ms=3, lw=1.5, color=palette[k % len(palette)], label=name,
                clip_on=False)
    for name, thr in (thresholds or {}).items():
        ax.axhline(thr, ls="--", lw=0.8, color="#999999")
        ax.text(steps[0] if steps else 0, thr, f" {name} {thr:g}", va="bottom", fontsize=7, color="#777777")
    ax.set_ylim(*score_range)
    ax.set_xlabel("step")
    ax.set_ylabel("score")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if loss is not None:
        if len(loss) != len(steps):
            raise UsageError(f"loss has {len(loss)} values for {len(steps)} steps")
        ax2 = ax.twinx()
        ax2.plot(list(steps), list(loss), lw=1.2, ls=":", color=EDGE_COLOURS["direct"], label="loss")
        ax2.set_ylabel("loss (nats)")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        place_legend(ax, handles, labels)
    return fig


def place_legend(ax, handles, labels):
    """The legend of `ax` below it (under the x label), off every curve."""
    return ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14),
                     ncol=min(3, len(labels)), frameon=False)


def phase_change_png(steps: Sequence[int], series: Mapping[str, Sequence[float]], path: str | Path,
                     loss: Sequence[float] | None = None, thresholds: Mapping[str, float] | None = None,
                     title: str = "detector scores across training") -> Path:
    return save_png(phase_change_figure(steps, series, loss, thresholds, title), path)


def faithfulness_curve_png(curve, path: str | Path, title: str = "faithfulness curve") -> Path:
    """The faithfulness curve of discovery by attribution: exact faithfulness against the top % of edges kept
    (log scale), with the full-faithfulness line; the legend gives CPR and CMD."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [p.percent for p in curve.points]
    ax.plot(xs, [p.faithfulness for p in curve.points], marker="o",
            label=f"CPR {curve.cpr:.3f}, CMD {curve.cmd:.3f}")
    ax.axhline(1.0, color="#888888", linewidth=0.8, linestyle="--")
    ax.set_xscale("log")
    ax.set_xlabel("top % of edges kept")
    ax.set_ylabel("faithfulness")
    ax.set_title(title)
    ax.legend(loc="lower right")
    return save_png(fig, path)
