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

from circuitry.figures import CircuitGraph, Claim, Figures, Grid
from circuitry.report.colours import EDGE_COLOURS, diverging, ink_for, role_colours, scale_colour

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
table.hm { border-collapse: separate; border-spacing: 1px; font-size: 10px; color: var(--muted); }
table.hm td { width: 20px; height: 20px; min-width: 20px; padding: 0; border-radius: 2px; }
table.hm.c15 td { width: 15px; height: 15px; min-width: 15px; }
table.hm.c11 td { width: 11px; height: 11px; min-width: 11px; }
table.hm.c7 td { width: 7px; height: 7px; min-width: 7px; border-radius: 1px; }
table.hm.c11 { font-size: 8px; } table.hm.c7 { font-size: 6px; border-spacing: 0; }
table.hm th { font-weight: 500; padding: 0 4px 0 0; text-align: right; white-space: nowrap;
  max-width: 90px; overflow: hidden; text-overflow: ellipsis; }
table.hm thead th { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left; padding: 0 0 4px;
  height: 40px; vertical-align: bottom; }
table.hm th.axis { writing-mode: horizontal-tb; transform: none; color: #8a92a3; font-style: italic;
  vertical-align: bottom; text-align: right; padding-right: 4px; }
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
def _scale_bar(value_range: tuple[float, float]) -> str:
    lo, hi = value_range
    if diverging(value_range):
        m = max(-lo, hi)
        lo, hi = -m, m
    stops = ", ".join(scale_colour(lo + (hi - lo) * i / 8, (lo, hi)) for i in range(9))
    return f'<div class="scale">{_fmt(lo)} <i style="background: linear-gradient(90deg, {stops})"></i> {_fmt(hi)}</div>'


def attention_table(grid: Grid) -> str:
    """A [q, k] pattern as a table of coloured cells; numbers in data-value, tokens in the headers."""
    n_q, n_k = grid.shape
    n = max(n_q, n_k)
    size = "" if n <= 16 else " c15" if n <= 24 else " c11" if n <= 40 else " c7"
    head = "".join(f'<th data-k="{j}" title="{j}: {_e(t)}">{_e(t)}</th>' for j, t in enumerate(grid.col_labels))
    body = []
    hi = set(grid.highlight)
    for i, row in enumerate(grid.values):
        cells = []
        for j, v in enumerate(row):
            bg = scale_colour(v, grid.value_range)
            tip = f"query {i} ({grid.row_labels[i]}) → key {j} ({grid.col_labels[j]}): {_fmt(v)}"
            cls = ' class="hi"' if (i, j) in hi else ""
            cells.append(f'<td{cls} data-q="{i}" data-k="{j}" data-value="{_data(v)}" style="background:{bg}" '
                         f'title="{_e(tip)}"></td>')
        body.append(f'<tr><th data-q="{i}" title="{i}: {_e(grid.row_labels[i])}">{_e(grid.row_labels[i])}</th>'
                    + "".join(cells) + "</tr>")
    return (f'<table class="hm{size}" data-grid="{_e(grid.id)}" data-head="{_e(grid.head or "")}" '
            f'data-rows="{n_q}" data-cols="{n_k}"><thead><tr><th class="axis">key →<br>query ↓</th>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


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
            bg = scale_colour(v, grid.value_range)
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
            f"{_scale_bar(grid.value_range)}{note}</figure>")


# ------------------------------------------------------------------ circuit graph
NODE_W, NODE_H, ROW_GAP, MARGIN = 150, 62, 100, 36
MAX_WIDTH = 1250  # the graph fits the page's content width when it can
LANE = 20  # vertical spacing of the lanes above the nodes that edges skipping a column take


def _bezier(p0, p1, p2, p3, t: float) -> tuple[float, float]:
    u = 1 - t
    return (u ** 3 * p0[0] + 3 * u * u * t * p1[0] + 3 * u * t * t * p2[0] + t ** 3 * p3[0],
            u ** 3 * p0[1] + 3 * u * u * t * p1[1] + 3 * u * t * t * p2[1] + t ** 3 * p3[1])


def _overlaps(a, b) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


def _edge_text(e) -> str:
    if e.score is None:
        return e.kind
    return f"{e.kind} {e.score:.2f}" + (f" · {e.ratio:.1f}×" if e.ratio is not None else "")


def graph_svg(graph: CircuitGraph, uid: str = "g") -> str:
    """The circuit as SVG: one column per layer (left to right), edges as curves into the receiver;
    an edge that skips columns runs in a lane above the nodes instead of through them."""
    layers = sorted({n.layer for n in graph.nodes})
    column_of = {layer: c for c, layer in enumerate(layers)}
    columns = {layer: [n for n in graph.nodes if n.layer == layer] for layer in layers}
    layer_of = {n.name: n.layer for n in graph.nodes}
    tallest = max((len(c) for c in columns.values()), default=1)
    gap = 420.0 if len(layers) < 2 else min(420.0, max(230.0, (MAX_WIDTH - 2 * MARGIN - NODE_W) / (len(layers) - 1)))
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
        f'<marker id="{uid}-arrow-{k}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{c}"/></marker>'
        for k, c in EDGE_COLOURS.items()) + "</defs>")
    for c, layer in enumerate(layers):  # column captions
        x = MARGIN + c * gap + NODE_W / 2
        label = ("inputs" if layer < 0 else "output" if layer == max(layers) and
                 all(n.name == "logits" for n in columns[layer]) else
                 f"MLP {int(layer)}" if layer != int(layer) else f"layer {int(layer)}")
        parts.append(f'<text x="{x:.1f}" y="{MARGIN}" text-anchor="middle" font-size="12" fill="#8a92a3" '
                     f'letter-spacing="0.06em">{_e(label.upper())}</text>')
    # edges: parallel edges between the same two nodes fan out
    groups: dict[tuple[str, str], list] = {}
    for e in graph.edges:
        groups.setdefault((e.sender, e.receiver), []).append(e)
    placed: list[tuple[float, float, float, float]] = [
        (x - 4, y - 4, x + NODE_W + 4, y + NODE_H + 4) for x, y in pos.values()]
    edge_parts, label_parts = [], []
    lane = 0
    for (sender, receiver), edges in groups.items():
        if sender not in pos or receiver not in pos:
            continue
        sx, sy = pos[sender]
        rx, ry = pos[receiver]
        for k, e in enumerate(edges):
            off = (k - (len(edges) - 1) / 2) * 14
            p0 = (sx + NODE_W, sy + NODE_H / 2 + off)
            p3 = (rx - 2, ry + NODE_H / 2 + off)
            colour = EDGE_COLOURS.get(e.kind, "#555555")
            text = _edge_text(e)
            w, h = 7.0 * len(text) + 12, 18.0
            if e in skipping:  # up into a lane, along it, down into the receiver
                y_lane = MARGIN + 24 + LANE * lane + 6
                lane += 1
                a, b = p0[0] + 36, p3[0] - 36
                d = (f"M{p0[0]:.1f},{p0[1]:.1f} C{a:.1f},{p0[1]:.1f} {p0[0] + 8:.1f},{y_lane:.1f} {a + 24:.1f},"
                     f"{y_lane:.1f} L{b - 24:.1f},{y_lane:.1f} C{p3[0] - 8:.1f},{y_lane:.1f} {b:.1f},{p3[1]:.1f} "
                     f"{p3[0]:.1f},{p3[1]:.1f}")
                points: list[tuple[float, float]] = [(a + 24 + (b - a - 48) * t, float(y_lane))
                                                     for t in (0.5, 0.35, 0.65, 0.2, 0.8)]
            else:
                dx = max(40.0, (p3[0] - p0[0]) * 0.45)
                p1, p2 = (p0[0] + dx, p0[1]), (p3[0] - dx, p3[1])
                d = (f"M{p0[0]:.1f},{p0[1]:.1f} C{p1[0]:.1f},{p1[1]:.1f} {p2[0]:.1f},{p2[1]:.1f} "
                     f"{p3[0]:.1f},{p3[1]:.1f}")
                points = [_bezier(p0, p1, p2, p3, t) for t in (0.7, 0.78, 0.62, 0.55, 0.85, 0.45, 0.35, 0.66, 0.74)]
            for cx, cy in points:
                box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
                if not any(_overlaps(box, b) for b in placed):
                    break
            placed.append(box)
            edge_parts.append(
                f'<path class="edge-line" d="{d}" fill="none" stroke="{colour}" stroke-width="2.2" '
                f'stroke-opacity="0.85" marker-end="url(#{uid}-arrow-{_e(e.kind)})"/>')
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
    legend.append("<span>labels: composition score · ratio to the random baseline</span></div>")
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
