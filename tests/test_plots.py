"""PNG plots (matplotlib, optional) and what happens without matplotlib.

The drawn data is read back from the matplotlib artists (image arrays, line
data) and compared with independent computations.
"""

from __future__ import annotations

import pytest
import torch

from circuitry.errors import UsageError
from circuitry.figures import figures_for_heads

HINT = "pip install 'circuitry[plot]'"


# fixtures from conftest: `mpl` (matplotlib, or skip) and `no_matplotlib` (import fails)


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_without_matplotlib_every_plot_gives_the_hint(no_matplotlib, tmp_path, shipped):
    from circuitry.report import plots

    assert plots.available() is False
    for call in (lambda: plots.require(),
                 lambda: plots.loss_curve_png([3.0, 2.0], tmp_path / "loss.png"),
                 lambda: plots.phase_change_png([0, 1], {"induction L1H3": [0.1, 0.6]}, tmp_path / "p.png"),
                 lambda: plots.figures_png(figures_for_heads(shipped, [64, 1, 2], ["L0H0"]), tmp_path / "h.png")):
        with pytest.raises(UsageError, match=r"pip install 'circuitry\[plot\]'"):
            call()
    assert list(tmp_path.iterdir()) == []
    # the other renderers do not need matplotlib
    from circuitry.report.html import render_html
    from circuitry.report.terminal import heatmaps

    figs = figures_for_heads(shipped, [64, 1, 2, 1, 2], ["L0H0"])
    assert 'data-head="L0H0"' in render_html(figs)
    assert heatmaps(figs).renderables[1].plain.startswith("L0H0")


def test_attention_heatmaps_draw_the_patterns(mpl, tmp_path, shipped):
    from circuitry.report import plots

    ids = [64, 7, 3, 9, 7, 3, 9]
    figs = figures_for_heads(shipped, ids, ["L0H0", "L1H3"])
    fig = plots.heatmaps_figure(list(figs.patterns))
    with torch.no_grad():
        _, cache = shipped.run_with_cache(torch.tensor([ids]))
    axes = [ax for ax in fig.axes if ax.images and ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["L0H0", "L1H3"]
    for ax, (l, h) in zip(axes, ((0, 0), (1, 3))):
        drawn = torch.tensor(ax.images[0].get_array().tolist(), dtype=torch.float64)
        assert torch.allclose(drawn, cache["pattern", l][0, h].double(), atol=1e-6)
        assert [t.get_text() for t in ax.get_xticklabels()] == ["BOS", "7", "3", "9", "7", "3", "9"]
        assert ax.images[0].get_clim() == (0.0, 1.0)
    path = plots.save_png(fig, tmp_path / "heads.png")
    w, h = png_size(path)
    assert w > 600 and h > 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heads.png"]


def test_scan_grids_with_numbers_and_outlines(mpl, tmp_path, shipped):
    from circuitry.datasets import make_batch
    from circuitry.figures import figures_for_scan
    from circuitry.report import plots
    from circuitry.scan import scan

    result = scan(shipped, make_batch(shipped, "repeated:batch=8"), ["previous_token", "composition"])
    figs = figures_for_scan(result)
    fig = plots.heatmaps_figure([*figs.head_scores, *figs.composition])
    prev = next(ax for ax in fig.axes if ax.get_title() == "previous_token")
    drawn = torch.tensor(prev.images[0].get_array().tolist())
    assert torch.allclose(drawn, result.heads["previous_token"], atol=1e-6)
    texts = {t.get_text() for t in prev.texts}
    assert f"{float(result.heads['previous_token'][0, 0]):.2f}" in texts
    assert len(prev.patches) == int((result.heads["previous_token"] >= 0.5).sum())  # outlined cells
    k = next(ax for ax in fig.axes if ax.get_title() == "K-composition")
    assert torch.allclose(torch.tensor(k.images[0].get_array().tolist()),
                          result.pairs["composition"].scores["K"][0, :, 1, :], atol=1e-6)
    plots.figures_png(figs, tmp_path / "scan.png")
    assert png_size(tmp_path / "scan.png")[0] > 600


def test_loss_curve_and_phase_change(mpl, tmp_path):
    from circuitry.report import plots

    losses = [4.2 - 0.002 * i for i in range(300)]
    fig = plots.loss_curve_figure(losses)
    line = fig.axes[0].lines[0]
    assert list(line.get_xdata()) == list(range(1, 301)) and list(line.get_ydata()) == losses
    plots.save_png(fig, tmp_path / "loss.png")
    assert png_size(tmp_path / "loss.png") == (704, 396)  # 6.4 x 3.6 in at 110 dpi

    steps = [0, 200, 400, 600, 800]
    series = {"induction L1H3": [0.02, 0.05, 0.41, 0.70, 0.74], "previous_token L0H0": [0.1, 0.5, 0.9, 0.97, 0.98]}
    fig = plots.phase_change_figure(steps, series, loss=[4.2, 3.9, 2.5, 1.9, 1.8], thresholds={"induction": 0.5})
    ax, ax2 = fig.axes
    assert [ln.get_label() for ln in ax.lines if not ln.get_label().startswith("_")] == list(series)
    assert [list(ln.get_ydata()) for ln in ax.lines[:2]] == list(series.values())
    assert list(ax2.lines[0].get_ydata()) == [4.2, 3.9, 2.5, 1.9, 1.8]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [*series, "loss"]
    plots.save_png(fig, tmp_path / "phase.png")
    with pytest.raises(UsageError, match="has 2 values for 5 steps"):
        plots.phase_change_figure(steps, {"x": [1, 2]})
