"""Self-contained HTML pages of `Figures`: inline CSS and inline SVG, no scripts, no network.

`render_html(figures)` returns one page (a sequence of `Figures` gives one
section each); `write_html(figures, path)` writes it atomically. Heatmaps are
HTML tables whose cells carry their numbers in `data-value` (full precision,
`nan` for empty cells), so what a page shows can be read back from its DOM.
The circuit graph is drawn as SVG with a small layered layout: one column per
layer, nodes coloured by role, edges coloured by kind and labelled with their
composition scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from pathlib import Path

from circuitry.figures import CircuitGraph, Claim, Figures, GraphEdge, Grid
from circuitry.report.colours import EDGE_COLOURS, ink_for, role_colours, scale_bounds, scale_colour
from circuitry.report.ticks import label_stride, ordinal

CSS = """
:root { --ink: #1d2433; --muted: #5b6478; --line: #dfe3ea; --card: #ffffff; --bg: #f4f6f9;
  --pass: #1e8e3e; --fail: #c5221f; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1360px; margin: 0 auto; padding: 28px 32px 48px; }
header.page { margin-bottom: 18px; }
h1 { font-size: 26px; margin: 0 0 4px; letter-spacing: -0.01em; }
h2 { font-size: 18px; margin: 0 0 12px; }
h3 { font-size: 14px; margin: 0 0 8px; }
p.sub { color: var(--muted); margin: 0 0 8px; max-width: 920px; }
.meta { color: var(--muted); font-size: 13px; display: flex; flex-wrap: wrap; gap: 6px 18px; }
.meta b { color: var(--ink); font-weight: 600; }
.badge { display: inline-block; padding: 3px 10px; border-radius: 999px; font-weight: 700; font-size: 13px;
  color: #fff; vertical-align: middle; }
.badge.pass { background: var(--pass); } .badge.fail { background: var(--fail); }
section.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 18px 20px; margin: 0 0 18px; box-shadow: 0 1px 2px rgba(20, 30, 50, .05); }
.hint { color: var(--muted); font-size: 12.5px; margin: -6px 0 12px; }
table.claims { border-collapse: collapse; width: 100%; }
table.claims th { text-align: left; font-size: 12px; text-transform: uppercase; letter-spacing: .04em;
  color: var(--muted); border-bottom: 2px solid var(--line); padding: 6px 10px; }
table.claims td { border-bottom: 1px solid var(--line); padding: 8px 10px; vertical-align: top; }
table.claims td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.claims td.id { font-weight: 600; white-space: nowrap; }
table.claims td.kind { color: var(--muted); font-size: 12.5px; }
table.claims tr.failed td { background: #fdf1f0; }
.result { font-weight: 700; font-size: 12px; padding: 2px 8px; border-radius: 4px; color: #fff; }
.result.pass { background: var(--pass); } .result.fail { background: var(--fail); }
ul.values { list-style: none; margin: 4px 0 0; padding: 0; display: flex; flex-wrap: wrap; gap: 4px 12px;
  font-size: 12px; color: var(--muted); }
ul.values b { color: var(--ink); font-weight: 600; font-variant-numeric: tabular-nums; }
.graph-wrap { overflow-x: auto; }
svg.graph text { font-family: inherit; }
.legend { display: flex; flex-wrap: wrap; gap: 8px 20px; font-size: 12.5px; color: var(--muted); margin-top: 8px; }
.legend span.sw { display: inline-block; width: 14px; height: 14px; border-radius: 3px; vertical-align: -2px;
  margin-right: 6px; border: 1.5px solid; }
.legend span.ln { display: inline-block; width: 22px; height: 0; border-top: 3px solid; vertical-align: 3px;
  margin-right: 6px; }
.grids { display: flex; flex-wrap: wrap; gap: 18px 22px; align-items: flex-start; }
figure.heatmap { margin: 0; }
figure.heatmap figcaption { font-weight: 600; margin-bottom: 6px; }
figure.heatmap figcaption .role { color: var(--muted); font-weight: 500; }
figure.heatmap .note { color: var(--muted); font-size: 12px; margin-top: 4px; max-width: 460px; }
.hm-wrap { overflow-x: auto; max-width: 100%; }
table.hm { border-collapse: separate; border-spacing: var(--gap); font-size: 11px; color: var(--muted); }
table.hm td { width: var(--c); height: var(--c); min-width: var(--c); padding: 0; border-radius: 2px; }
table.hm.dense td { border-radius: 0; }
table.hm td:hover { outline: 2px solid #1d2433; }
table.hm th { font-weight: 500; white-space: nowrap; line-height: var(--c); padding: 0; overflow: visible; }
table.hm tbody th { text-align: right; padding-right: 5px; height: var(--c); }
table.hm thead th { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left; padding-top: 5px;
  vertical-align: bottom; width: var(--c); }
table.hm th.skip { visibility: hidden; }
table.hm th.axis { writing-mode: horizontal-tb; transform: none; color: #8a92a3; font-style: italic;
  line-height: 1.25; width: auto; vertical-align: bottom; text-align: right; padding: 0 5px 5px 0; }
table.hm td.hi { outline: 2px solid #ffb000; outline-offset: -2px; }
table.mx { border-collapse: separate; border-spacing: 2px; font-size: 12px; }
table.mx td { min-width: 58px; height: 38px; text-align: center; border-radius: 4px; padding: 2px 6px;
  font-variant-numeric: tabular-nums; line-height: 1.15; }
table.mx td small { display: block; font-size: 10px; opacity: .85; }
table.mx td.hi { box-shadow: inset 0 0 0 3px #ffb000; font-weight: 700; }
table.mx td.na { color: #9aa1ae; }
table.mx th { font-weight: 600; font-size: 12px; padding: 2px 6px; color: var(--ink); }
table.mx th.axis { color: #8a92a3; font-weight: 500; font-style: italic; }
.scale { display: flex; align-items: center; gap: 6px; font-size: 11px; color: var(--muted); margin-top: 6px; }
.scale i { display: inline-block; width: 120px; height: 9px; border-radius: 2px; }
.scale .centre { margin-left: 8px; }
footer { color: #8a92a3; font-size: 12px; margin-top: 24px; }
"""


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"


def _data(value: float | None) -> str:
    """A number for a data- attribute: full precision, `nan` when there is none."""
    if value is None or not math.isfinite(value):
        return "nan"
    return repr(float(value))


def _e(text: object) -> str:
    return escape(str(text), quote=True)


# ------------------------------------------------------------------ claims
def _claims(claims: Sequence[Claim]) -> str:
    rows = []
    for c in claims:
        state = "pass" if c.passed else "fail"
        values = ""
        if c.values:
            items = "".join(f'<li data-name="{_e(k)}" data-value="{_data(v)}">{_e(k)} <b>{_fmt(v)}</b></li>'
                            for k, v in c.values)
            values = f'<ul class="values">{items}</ul>'
        rows.append(
            f'<tr class="claim{"" if c.passed else " failed"}" data-check-id="{_e(c.id)}" data-kind="{_e(c.kind)}" '
            f'data-value="{_data(c.value)}" data-passed="{str(c.passed).lower()}">'
            f'<td><span class="result {state}">{"pass" if c.passed else "FAIL"}</span></td>'
            f'<td class="id">{_e(c.id)}</td><td class="kind">{_e(c.kind)}</td>'
            f'<td class="claim-text">{_e(c.claim)}{values}</td>'
            f'<td class="num measured">{_fmt(c.value)}</td><td class="num expected">{_e(c.expect)}</td>'
            f'<td class="num">{c.seconds * 1000:.0f} ms</td></tr>')
    return ('<table class="claims"><thead><tr><th>result</th><th>check</th><th>kind</th><th>claim</th>'
            '<th style="text-align:right">measured</th><th style="text-align:right">expected</th>'
            '<th style="text-align:right">time</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>")


# ------------------------------------------------------------------ heatmaps
LABEL_PX = 11  # font size of heatmap labels, whatever the sequence length (never below 10 px)
LABEL_SPAN = 15  # px a label needs across its line: its glyph box and a gap to the next label
LABEL_CHARS = 12  # characters of a token label drawn; the full label is in the hover title
GRID_PX = 768  # long sequences: cells shrink until the grid is about this wide, down to MIN_CELL_PX
MIN_CELL_PX = 5


def cell_px(n: int) -> int:
    """The side of a heatmap cell for an n x n pattern."""
    return 20 if n <= 16 else 14 if n <= 48 else max(MIN_CELL_PX, GRID_PX // n)


def _short(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"


def _scale_bar(grid: Grid) -> str:
    lo, hi, _ = scale_bounds(grid.value_range, grid.centre)
    stops = ", ".join(scale_colour(lo + (hi - lo) * i / 8, (lo, hi), grid.centre) for i in range(9))
    centre = (f'<span class="centre">white: {"random baseline" if grid.baseline == grid.centre else "centre"} '
              f"{_fmt(grid.centre)}</span>" if grid.centre is not None else "")
    return (f'<div class="scale">{_fmt(lo)} <i style="background: linear-gradient(90deg, {stops})"></i> '
            f"{_fmt(hi)}{centre}</div>")


def attention_table(grid: Grid) -> str:
    """A [q, k] pattern as a table of coloured cells; numbers in data-value, tokens in the headers.

    Every cell's title (its hover tooltip) names the query and key positions, their tokens and the weight.
    Labels keep LABEL_PX whatever the length: on long sequences only every k-th is shown (`label_stride`),
    the others stay in the table hidden (class "skip"), with their titles."""
    n_q, n_k = grid.shape
    c = cell_px(max(n_q, n_k))
    gap = 1 if c >= 10 else 0
    stride = label_stride(c + gap, LABEL_SPAN)

    def th(axis: str, i: int, label: str) -> str:
        skip = ' class="skip"' if i % stride else ""
        return f'<th data-{axis}="{i}"{skip} title="{i}: {_e(label)}">{_e(_short(label))}</th>'

    head = "".join(th("k", j, t) for j, t in enumerate(grid.col_labels))
    body = []
    hi = set(grid.highlight)
    for i, row in enumerate(grid.values):
        cells = []
        for j, v in enumerate(row):
            bg = scale_colour(v, grid.value_range, grid.centre)
            tip = f"query {i} ({grid.row_labels[i]}) → key {j} ({grid.col_labels[j]}): {_fmt(v)}"
            cls = ' class="hi"' if (i, j) in hi else ""
            cells.append(f'<td{cls} data-q="{i}" data-k="{j}" data-value="{_data(v)}" style="background:{bg}" '
                         f'title="{_e(tip)}"></td>')
        body.append(f"<tr>{th('q', i, grid.row_labels[i])}" + "".join(cells) + "</tr>")
    dense = " dense" if c < 10 else ""
    return (f'<div class="hm-wrap"><table class="hm{dense}" style="--c:{c}px;--gap:{gap}px" '
            f'data-grid="{_e(grid.id)}" data-head="{_e(grid.head or "")}" data-rows="{n_q}" data-cols="{n_k}" '
            f'data-label-stride="{stride}"><thead><tr><th class="axis">key →<br>query ↓</th>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>'
            + (f'<div class="note">labels: every {ordinal(stride)} position (0, {stride}, {2 * stride}, …); '
               "hover a cell for its query and key tokens and its weight</div>" if stride > 1 else ""))


def matrix_table(grid: Grid) -> str:
    """A small grid (head scores, composition) with its numbers written in the cells."""
    head = "".join(f"<th>{_e(c)}</th>" for c in grid.col_labels)
    hi = set(grid.highlight)
    body = []
    for i, row in enumerate(grid.values):
        cells = []
        for j, v in enumerate(row):
            if not math.isfinite(v):
                cells.append(f'<td class="na" data-row="{i}" data-col="{j}" data-value="nan" '
                             f'style="background:#f1f3f6">–</td>')
                continue
            bg = scale_colour(v, grid.value_range, grid.centre)
            extra = f"<small>{v / grid.baseline:.1f}×</small>" if grid.baseline else ""
            tip = f"{grid.row_labels[i]} → {grid.col_labels[j]}: {_fmt(v)}" + (
                f" ({v / grid.baseline:.2f}× baseline)" if grid.baseline else "")
            cls = ' class="hi"' if (i, j) in hi else ""
            cells.append(f'<td{cls} data-row="{i}" data-col="{j}" data-value="{_data(v)}" '
                         f'style="background:{bg};color:{ink_for(bg)}" title="{_e(tip)}">{v:.2f}{extra}</td>')
        body.append(f"<tr><th>{_e(grid.row_labels[i])}</th>{''.join(cells)}</tr>")
    corner = f"{grid.row_title} ↓ {grid.col_title} →" if grid.row_title else ""
    return (f'<table class="mx" data-grid="{_e(grid.id)}" data-rows="{len(grid.values)}" '
            f'data-cols="{len(grid.col_labels)}"><thead><tr><th class="axis">{_e(corner)}</th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _figure(grid: Grid, table: str) -> str:
    role = f' <span class="role">· {_e(grid.role)}</span>' if grid.role else ""
    title = _e(grid.head) if grid.head else _e(grid.title)
    note = f'<div class="note">{_e(grid.note)}</div>' if grid.note else ""
    return (f'<figure class="heatmap" data-kind="{_e(grid.kind)}" data-grid="{_e(grid.id)}" '
            f'data-head="{_e(grid.head or "")}"><figcaption>{title}{role}</figcaption>{table}'
            f"{_scale_bar(grid)}{note}</figure>")


# ------------------------------------------------------------------ circuit graph
NODE_W, NODE_H, ROW_GAP, MARGIN = 150, 62, 100, 36
MAX_WIDTH = 1250  # the graph fits the page's content width when it can
LANE = 24  # vertical spacing of the lanes above the nodes that edges skipping a column take


Point = tuple[float, float]
Segment = tuple[Point, Point, Point, Point]  # a cubic Bézier: start, two control points, end
# where along its edge (0: sender, 1: receiver) a label may sit, best first
LABEL_T = (0.5, 0.42, 0.58, 0.34, 0.66, 0.26, 0.74, 0.2, 0.8, 0.15, 0.85)
MIN_W, MAX_W = 1.5, 6.0  # stroke widths of the weakest and the strongest scored edge


def _bezier(p0: Point, p1: Point, p2: Point, p3: Point, t: float) -> Point:
    u = 1 - t
    return (u ** 3 * p0[0] + 3 * u * u * t * p1[0] + 3 * u * t * t * p2[0] + t ** 3 * p3[0],
            u ** 3 * p0[1] + 3 * u * u * t * p1[1] + 3 * u * t * t * p2[1] + t ** 3 * p3[1])


def _line(a: Point, b: Point) -> Segment:
    return (a, (a[0] + (b[0] - a[0]) / 3, a[1] + (b[1] - a[1]) / 3),
            (a[0] + 2 * (b[0] - a[0]) / 3, a[1] + 2 * (b[1] - a[1]) / 3), b)


def _at(segments: Sequence[Segment], t: float) -> Point:
    """The point at t in [0, 1] of a path of segments, each segment an equal share of t."""
    i = min(int(t * len(segments)), len(segments) - 1)
    return _bezier(*segments[i], t * len(segments) - i)


def _d(segments: Sequence[Segment]) -> str:
    """The SVG path data of a chain of segments."""
    (x, y) = segments[0][0]
    return f"M{x:.1f},{y:.1f} " + " ".join(
        f"C{a[0]:.1f},{a[1]:.1f} {b[0]:.1f},{b[1]:.1f} {c[0]:.1f},{c[1]:.1f}" for _, a, b, c in segments)


def _gap(box: tuple[float, float, float, float], points: Sequence[Point]) -> float:
    """How far the nearest of `points` is from the box (0 inside it)."""
    return min((math.hypot(max(box[0] - x, 0.0, x - box[2]), max(box[1] - y, 0.0, y - box[3])) for x, y in points),
               default=math.inf)


def _box(centre: Point, w: float, h: float) -> tuple[float, float, float, float]:
    return (centre[0] - w / 2, centre[1] - h / 2, centre[0] + w / 2, centre[1] + h / 2)


def _overlaps(a, b) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


def edge_width(score: float | None, strongest: float) -> float:
    """Stroke width of an edge: proportional to its score over the strongest edge's (MIN_W..MAX_W); 2 px for
    an edge without a score."""
    if score is None or not math.isfinite(score) or strongest <= 0:
        return 2.0
    return MIN_W + (MAX_W - MIN_W) * max(0.0, score) / strongest


def _edge_text(e) -> str:
    if e.score is None:
        return e.kind
    return f"{e.kind} {e.score:.2f}" + (f" · {e.ratio:.1f}×" if e.ratio is not None else "")


def _label_w(text: str) -> float:
    """The width of an edge label's box (11.5 px bold text)."""
    return 7.0 * len(text) + 12


def graph_svg(graph: CircuitGraph, uid: str = "g") -> str:
    """The circuit as SVG: one column per layer (left to right), edges as curves into the receiver;
    an edge that skips columns runs in a lane above the nodes instead of through them."""
    layers = sorted({n.layer for n in graph.nodes})
    column_of = {layer: c for c, layer in enumerate(layers)}
    columns = {layer: [n for n in graph.nodes if n.layer == layer] for layer in layers}
    layer_of = {n.name: n.layer for n in graph.nodes}
    tallest = max((len(c) for c in columns.values()), default=1)
    # columns far enough apart for a label between them (the picture scrolls when that is wider than the page)
    label_w = max((_label_w(_edge_text(e)) for e in graph.edges), default=0.0)
    gap = 420.0 if len(layers) < 2 else min(420.0, max(NODE_W + label_w + 90, 230.0,
                                                       (MAX_WIDTH - 2 * MARGIN - NODE_W) / (len(layers) - 1)))
    skipping = [e for e in graph.edges if e.sender in layer_of and e.receiver in layer_of
                and column_of[layer_of[e.receiver]] - column_of[layer_of[e.sender]] > 1]
    lanes_h = LANE * len(skipping) + (12 if skipping else 0)
    top0 = MARGIN + 24 + lanes_h
    height = top0 + tallest * NODE_H + (tallest - 1) * (ROW_GAP - NODE_H) + MARGIN + 16
    width = round(2 * MARGIN + (len(layers) - 1) * gap + NODE_W)
    pos: dict[str, tuple[float, float]] = {}
    for c, layer in enumerate(layers):
        nodes = columns[layer]
        top = top0 + (tallest - len(nodes)) * ROW_GAP / 2
        for r, n in enumerate(nodes):
            pos[n.name] = (MARGIN + c * gap, top + r * ROW_GAP)
    colours = role_colours(graph.roles)
    parts = [f'<svg class="graph" data-nodes="{len(graph.nodes)}" data-edges="{len(graph.edges)}" '
             f'width="{width}" height="{height:.0f}" viewBox="0 0 {width} {height:.0f}" role="img" '
             f'aria-label="circuit graph">']
    parts.append("<defs>" + "".join(
        f'<marker id="{uid}-arrow-{k}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="12" markerHeight="12" '
        f'markerUnits="userSpaceOnUse" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{c}"/></marker>'
        for k, c in EDGE_COLOURS.items()) + "</defs>")
    for c, layer in enumerate(layers):  # column captions
        x = MARGIN + c * gap + NODE_W / 2
        label = ("inputs" if layer < 0 else "output" if layer == max(layers) and
                 all(n.name == "logits" for n in columns[layer]) else
                 f"MLP {int(layer)}" if layer != int(layer) else f"layer {int(layer)}")
        parts.append(f'<text x="{x:.1f}" y="{MARGIN}" text-anchor="middle" font-size="12" fill="#8a92a3" '
                     f'letter-spacing="0.06em">{_e(label.upper())}</text>')
    # edges: each leaves its sender and enters its receiver at its own port (ports ordered by the other
    # end's height, lane edges on top), so edges into one node stay apart and each label has a line of its own
    drawn = [(i, e) for i, e in enumerate(graph.edges) if e.sender in pos and e.receiver in pos]
    lane_of = {i: k for k, i in enumerate(i for i, e in drawn if e in skipping)}
    port: dict[tuple[int, str], float] = {}
    for end, other in (("sender", "receiver"), ("receiver", "sender")):
        by_node: dict[str, list[tuple[int, GraphEdge]]] = {}
        for i, e in drawn:
            by_node.setdefault(getattr(e, end), []).append((i, e))
        for items in by_node.values():
            items.sort(key=lambda ie: (ie[0] not in lane_of, pos[getattr(ie[1], other)][1], ie[0]))
            step = min(22.0, (NODE_H - 12) / max(1, len(items) - 1))
            for k, (i, _) in enumerate(items):
                port[i, end] = (k - (len(items) - 1) / 2) * step
    paths: list[tuple[GraphEdge, list[Segment]]] = []
    for i, e in drawn:
        sx, sy = pos[e.sender]
        rx, ry = pos[e.receiver]
        p0 = (sx + NODE_W, sy + NODE_H / 2 + port[i, "sender"])
        p3 = (rx - 2, ry + NODE_H / 2 + port[i, "receiver"])
        if i in lane_of:  # up into a lane, along it, down into the receiver
            y_lane = MARGIN + 24 + LANE * lane_of[i] + 6.0
            a, b = p0[0] + 36, p3[0] - 36
            paths.append((e, [(p0, (a, p0[1]), (p0[0] + 8, y_lane), (a + 24, y_lane)),
                              _line((a + 24, y_lane), (b - 24, y_lane)),
                              ((b - 24, y_lane), (p3[0] - 8, y_lane), (b, p3[1]), p3)]))
        else:
            dx = max(40.0, (p3[0] - p0[0]) * 0.45)
            paths.append((e, [(p0, (p0[0] + dx, p0[1]), (p3[0] - dx, p3[1]), p3)]))
    samples = [[_at(segs, i / 96) for i in range(97)] for _, segs in paths]
    strongest = max((e.score for e in graph.edges if e.score is not None and math.isfinite(e.score)), default=0.0)
    placed: list[tuple[float, float, float, float]] = [
        (x - 4, y - 4, x + NODE_W + 4, y + NODE_H + 4) for x, y in pos.values()]
    edge_parts, label_parts = [], []
    for i, (e, segs) in enumerate(paths):
        colour = EDGE_COLOURS.get(e.kind, "#555555")
        text = _edge_text(e)
        w, h = _label_w(text), 18.0
        others = [pt for m, pts in enumerate(samples) if m != i for pt in pts]
        # the first place (nearest the middle) where the label covers no node, label or other edge; failing
        # that, the free place where other edges pass farthest from it
        free = [t for t in LABEL_T if not any(_overlaps(_box(_at(segs, t), w, h), b) for b in placed)] or [0.5]
        at = max(free, key=lambda t: (min(_gap(_box(_at(segs, t), w, h), others), 4.0), -LABEL_T.index(t)))
        box = _box(_at(segs, at), w, h)
        placed.append(box)
        line_w = edge_width(e.score, strongest)
        edge_parts.append(
            f'<path class="edge-line" d="{_d(segs)}" data-from="{_e(e.sender)}" data-to="{_e(e.receiver)}" '
            f'data-kind="{_e(e.kind)}" data-score="{_data(e.score)}" fill="none" stroke="{colour}" '
            f'stroke-width="{line_w:.2f}" stroke-opacity="0.85" marker-end="url(#{uid}-arrow-{_e(e.kind)})"/>')
        label_parts.append(
            f'<g class="edge" data-from="{_e(e.sender)}" data-to="{_e(e.receiver)}" data-kind="{_e(e.kind)}" '
            f'data-score="{_data(e.score)}" data-baseline="{_data(e.baseline)}">'
            f'<title>{_e(e.name)}' + (f": composition {e.score:.3f}, baseline {e.baseline:.3f}"
                                      if e.score is not None and e.baseline else "") + "</title>"
            f'<rect x="{box[0]:.1f}" y="{box[1]:.1f}" width="{w:.1f}" height="{h:.1f}" rx="9" fill="#ffffff" '
            f'stroke="{colour}" stroke-width="1.2"/>'
            f'<text x="{(box[0] + box[2]) / 2:.1f}" y="{box[1] + 13:.1f}" text-anchor="middle" font-size="11.5" '
            f'font-weight="600" fill="{colour}">{_e(text)}</text></g>')
    parts.extend(edge_parts)
    for n in graph.nodes:
        x, y = pos[n.name]
        fill, stroke = colours.get(n.role, ("#eeeeee", "#777777"))
        score = f"{n.score_name} {n.score:.2f}" if n.score is not None else ""
        parts.append(
            f'<g class="node" data-name="{_e(n.name)}" data-role="{_e(n.role)}" data-score="{_data(n.score)}">'
            f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="10" fill="{fill}" stroke="{stroke}" '
            f'stroke-width="2"/>'
            f'<text x="{x + NODE_W / 2}" y="{y + 24}" text-anchor="middle" font-size="16" font-weight="700" '
            f'fill="#1d2433">{_e(n.name)}</text>'
            f'<text x="{x + NODE_W / 2}" y="{y + 43}" text-anchor="middle" font-size="11.5" fill="#3b4252">'
            f'{_e(score or n.role)}</text></g>')
    parts.extend(label_parts)
    parts.append("</svg>")
    legend = ['<div class="legend">']
    for role, (fill, stroke) in colours.items():
        legend.append(f'<span><span class="sw" style="background:{fill};border-color:{stroke}"></span>'
                      f"{_e(role or 'node')}</span>")
    for kind in dict.fromkeys(e.kind for e in graph.edges):
        legend.append(f'<span><span class="ln" style="border-color:{EDGE_COLOURS.get(kind, "#555")}"></span>'
                      f"{_e(kind)}{' edge' if kind == 'direct' else '-composition edge'}</span>")
    if strongest > 0:
        legend.append(f"<span>labels: composition score · ratio to the random baseline; line width: the score "
                      f"(widest {strongest:.2f})</span>")
    legend.append("</div>")
    return '<div class="graph-wrap">' + "".join(parts) + "</div>" + "".join(legend)


# ------------------------------------------------------------------ page
def _section(fig: Figures, uid: str) -> str:
    out = ['<header class="page">']
    badge = ""
    if fig.passed is not None:
        n = len(fig.claims)
        ok = sum(c.passed for c in fig.claims)
        badge = (f' <span class="badge {"pass" if fig.passed else "fail"}" data-passed="{str(fig.passed).lower()}">'
                 f'{ok} of {n} checks passed</span>')
    out.append(f"<h1>{_e(fig.title)}{badge}</h1>")
    if fig.subtitle:
        out.append(f'<p class="sub">{_e(fig.subtitle)}</p>')
    meta = [f"model <b>{_e(fig.model)}</b>"]
    if fig.data:
        meta.append(f"data <b>{_e(fig.data)}</b>")
    if fig.seconds is not None:
        meta.append(f"verified in <b>{fig.seconds:.2f} s</b>")
    meta.extend(_e(line) for line in fig.header)
    out.append('<div class="meta">' + "".join(f"<span>{m}</span>" for m in meta) + "</div></header>")
    if fig.claims:
        out.append(f'<section class="card" id="{uid}-claims"><h2>Claims</h2>{_claims(fig.claims)}</section>')
    if fig.graph is not None and fig.graph.nodes:
        out.append(f'<section class="card" id="{uid}-graph"><h2>Circuit</h2>'
                   '<p class="hint">Each edge: the sender writes into the residual stream what the receiver reads '
                   f"as its query (Q), key (K) or value (V) input.</p>{graph_svg(fig.graph, uid)}</section>")
    if fig.patterns:
        seq = " ".join(fig.tokens)
        out.append(f'<section class="card" id="{uid}-patterns"><h2>Attention patterns</h2>'
                   f'<p class="hint">Rows: query positions, columns: key positions; the sequence: '
                   f'<code>{_e(seq)}</code></p><div class="grids">'
                   + "".join(_figure(g, attention_table(g)) for g in fig.patterns) + "</div></section>")
    if fig.composition:
        out.append(f'<section class="card" id="{uid}-composition"><h2>Composition scores</h2>'
                   '<p class="hint">‖W_A W_B‖ / (‖W_A‖ ‖W_B‖) from each sender head to each receiver head, with the '
                   "ratio to the random-matrix baseline"
                   + ("; outlined: the circuit's edges" if any(g.highlight for g in fig.composition) else "")
                   + '.</p><div class="grids">'
                   + "".join(_figure(g, matrix_table(g)) for g in fig.composition) + "</div></section>")
    if fig.head_scores:
        out.append(f'<section class="card" id="{uid}-scores"><h2>Head scores</h2><div class="grids">'
                   + "".join(_figure(g, matrix_table(g)) for g in fig.head_scores) + "</div></section>")
    if fig.patching:
        out.append(f'<section class="card" id="{uid}-patching"><h2>Activation patching</h2>'
                   '<p class="hint">Each cell: the normalised effect of patching that activation, the fraction of '
                   "the clean-corrupted difference of the metric it carries (1: all of it, 0: none).</p>"
                   '<div class="grids">' + "".join(_figure(g, matrix_table(g)) for g in fig.patching)
                   + "</div></section>")
    return "\n".join(out)


def render_html(figures: Figures | Sequence[Figures], title: str | None = None) -> str:
    """One self-contained page; several `Figures` become consecutive sections."""
    from circuitry import __version__

    figs = [figures] if isinstance(figures, Figures) else list(figures)
    page_title = title or " · ".join(f.title for f in figs) or "circuitry"
    body = '\n<hr style="border:0;border-top:1px solid #dfe3ea;margin:28px 0">\n'.join(
        _section(f, f"s{i}") for i, f in enumerate(figs))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(page_title)}</title><style>{CSS}</style></head>\n<body><main>\n{body}\n"
            f"<footer>circuitry {_e(__version__)}</footer></main></body></html>\n")


def write_html(figures: Figures | Sequence[Figures], path: str | Path) -> Path:
    """Write the page atomically (a temporary file renamed into place)."""
    from circuitry.fileio import atomic_write_text

    atomic_write_text(path, render_html(figures))
    return Path(path)
