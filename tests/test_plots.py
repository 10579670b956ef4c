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
    assert ax.get_ylim() == (0.0, 1.0)  # a fixed score axis
    assert_legend_off_the_axes(fig, ax)
    plots.save_png(fig, tmp_path / "phase.png")
    with pytest.raises(UsageError, match="has 2 values for 5 steps"):
        plots.phase_change_figure(steps, {"x": [1, 2]})


def assert_legend_off_the_axes(fig, ax) -> None:
    """The legend of `ax` lies outside every axes of `fig` (so on no curve) and inside the figure."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    for a in fig.axes:
        assert not legend.overlaps(a.get_window_extent(renderer)), (legend, a.get_window_extent(renderer))
    assert legend.x0 >= 0 and legend.y0 >= 0 and legend.x1 <= fig.bbox.width and legend.y1 <= fig.bbox.height


def test_track_plot_fixed_axis_legend_and_title(mpl, tmp_path):
    """`circuitry track --plot`: scores on 0..1, the legend below the axes, a title that names what is drawn,
    the run and the phase-change threshold; the lines are the tracked numbers."""
    from circuitry.track import MIN_JUMP, CheckpointStats, TrackResult, phase_change, plot_track, track_figure

    run = tmp_path / "run-7" / "checkpoints"
    steps = [0, 200, 400, 600, 800]
    induction = [0.02, 0.05, 0.61, 0.72, 0.74]
    prev = [0.10, 0.55, 0.93, 0.97, 0.98]
    loss = [4.1, 3.6, 1.9, 1.7, 1.6]
    icl = [-0.1, -0.3, -2.4, -2.6, -2.7]
    stats = tuple(CheckpointStats(s, str(run / f"step-{s}.safetensors"), lo, ic, pv, "L0H0", ind, "L1H3", 1.5,
                                  "L0H0 -> L1H3 (K)")
                  for s, lo, ic, pv, ind in zip(steps, loss, icl, prev, induction))
    change, reason = phase_change(stats)
    assert change is not None and change.step == 400  # the largest induction jump, confirmed by the ICL fall
    fig = track_figure(TrackResult(stats, change, reason))
    ax, ax2 = fig.axes
    assert ax.get_ylim() == (0.0, 1.0)
    lines = {ln.get_label(): list(ln.get_ydata()) for a in (ax, ax2) for ln in a.lines}
    assert lines["best induction"] == induction and lines["best previous-token"] == prev
    assert lines["loss on repeats"] == loss and lines["ICL score"] == icl
    assert list(ax.lines[0].get_xdata()) == steps
    title = ax.get_title()
    assert "previous-token and induction scores (0..1)" in title and "loss and ICL score (nats)" in title
    assert f"5 checkpoints of {tmp_path / 'run-7'}" in title  # the run, not its checkpoints/ directory
    assert f"induction jump >= {MIN_JUMP:g}" in title and "step 400 (best induction +0.56)" in title
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "best induction", "best previous-token", "phase change", "loss on repeats", "ICL score"]
    assert_legend_off_the_axes(fig, ax)
    fig.canvas.draw()
    title_box = ax.title.get_window_extent(fig.canvas.get_renderer())
    assert title_box.x0 >= 0 and title_box.x1 <= fig.bbox.width and title_box.y1 <= fig.bbox.height  # not cut off
    path = plot_track(TrackResult(stats, None, "no jump"), tmp_path / "track.png")
    assert png_size(path) == (792, 506)  # 7.2 x 4.6 in at 110 dpi


def test_128_token_heatmap_png_thins_labels(mpl, tmp_path):
    """A 128-token pattern as PNG: every k-th position labelled at >= 10 px (at the PNG's 110 dpi), labels
    that do not overlap, at least 16 an axis; the image is the whole pattern."""
    from conftest import random_model

    from circuitry.report import plots

    model = random_model(0, n_ctx=128)
    ids = [49] + torch.randint(0, 49, (127,), generator=torch.Generator().manual_seed(5)).tolist()
    figs = figures_for_heads(model, ids, ["L0H1", "L1H2"])
    fig = plots.heatmaps_figure(list(figs.patterns))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor([ids]))
    tokens = ["BOS" if t == 49 else str(t) for t in ids]
    axes = [ax for ax in fig.axes if ax.images and ax.get_title()]
    assert len(axes) == 2
    for ax, (layer, head) in zip(axes, ((0, 1), (1, 2))):
        drawn = torch.tensor(ax.images[0].get_array().tolist(), dtype=torch.float64)
        assert torch.allclose(drawn, cache["pattern", layer][0, head].double(), atol=1e-6)
        for ticks, labels in ((ax.get_xticks(), ax.get_xticklabels()), (ax.get_yticks(), ax.get_yticklabels())):
            positions = [int(t) for t in ticks]
            step = positions[1] - positions[0]
            assert positions == list(range(0, 128, step)) and 16 <= len(positions) <= 40
            assert [t.get_text() for t in labels] == [tokens[i] for i in positions]
            assert all(t.get_fontsize() * 110 / 72 >= 10 for t in labels)
            boxes = [t.get_window_extent(renderer) for t in labels]
            assert not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:]))
        assert "every" in ax.get_xlabel()
    plots.save_png(fig, tmp_path / "long.png")


def test_composition_colours_are_centred_on_the_random_baseline(mpl, shipped):
    """Composition scores of random weights average the baseline, not 0: white there, red above, blue below,
    in the PNG (a symmetric colour range about the baseline) and in the HTML (each cell's colour)."""
    import re

    from circuitry.datasets import make_batch
    from circuitry.figures import figures_for_scan
    from circuitry.report import plots
    from circuitry.report.html import render_html
    from circuitry.scan import scan

    result = scan(shipped, make_batch(shipped, "repeated:batch=4"), ["composition"])
    base = float(result.pairs["composition"].baseline["K"])
    d_model = shipped.cfg.d_model
    assert 0.5 / d_model ** 0.5 < base < 2 / d_model ** 0.5  # about 1 / sqrt(d_model), far from 0
    figs = figures_for_scan(result)
    fig = plots.heatmaps_figure(list(figs.composition))
    k = next(ax for ax in fig.axes if ax.get_title() == "K-composition")
    lo, hi = k.images[0].get_clim()
    assert (lo + hi) / 2 == pytest.approx(base, rel=1e-9)
    assert k.images[0].get_cmap().name == "RdBu_r"
    page = render_html(figs)
    cells = re.findall(r'<td[^>]*data-value="([^"]+)"[^>]*style="background:#(..)(..)(..);', page)
    assert len(cells) == 3 * 16  # Q, K, V: 4 senders x 4 receivers with a value each
    scores = result.pairs["composition"].scores
    above = below = 0
    for value, r, g, b in cells:
        v, red, blue = float(value), int(r, 16), int(b, 16)
        if v > base * 1.05:
            assert red > blue, (v, r, g, b)
            above += 1
        elif v < base * 0.95:
            assert blue > red, (v, r, g, b)
            below += 1
    assert above >= 6 and below >= 6  # the shipped model has both (K from the previous-token heads; V low)
    assert float(scores["K"][0, 0, 1, 3]) > base * 1.5
