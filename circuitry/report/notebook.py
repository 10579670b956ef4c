"""HTML for notebooks: results that show themselves inline in Jupyter (`_repr_html_`).

The pictures are the HTML report's (`circuitry.report.html.render_html` of a `circuitry.figures.Figures`),
made into a fragment that sits inside a notebook: its stylesheet is scoped to one wrapping element (so it
neither restyles the notebook nor is restyled by it), and its element ids are unique per fragment. Like the
report, a fragment is self-contained: inline CSS and SVG, no scripts, no network resources. Each renderer
draws what a result already holds and runs no model, except `html(report, full=True)` (the full page of
`circuitry verify --html`, which may run the model for patterns and scores).

- `report_html(report)`: the claims (each check's id, measured value and expectation), the circuit graph
  with the detector and composition scores the checks computed, and the attention patterns of the
  circuit's heads when the run kept them (`verify(..., keep_patterns=True)`).
- `scan_html(result)`: the strongest heads of each detector, the head-score grids and, for models of at most
  `MAX_MATRIX_HEADS` heads, the composition matrices (else the strongest pairs).
- `graph_html(graph)`: a `ResidualGraph`'s counts, its circuit drawn when it has at most `MAX_DRAWN_EDGES`
  edges, its strongest composition edges and its heads' scores.
- `html(obj)`: any of these, a `PatchingResult`, an `AttributionResult` or a `Figures`, as an `Html`.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from circuitry.figures import CircuitGraph, Figures, GraphEdge, GraphNode, Grid

SCOPE = "circuitry-nb"  # the class of the element every fragment is wrapped in
MAX_MATRIX_HEADS = 64  # composition matrices are drawn for models with at most this many heads
MAX_DRAWN_EDGES = 60  # a ResidualGraph with more edges is summarised, not drawn
TOP = 8  # rows of the "strongest" tables
EXTRA_CSS = f""".{SCOPE} {{ padding: 12px 14px; border-radius: 8px; }}
.{SCOPE} h1 {{ font-size: 20px; }}
.{SCOPE} table.top {{ border-collapse: collapse; margin: 0 0 12px; font-size: 13px; }}
.{SCOPE} table.top th {{ text-align: left; color: var(--muted); font-weight: 600; padding: 3px 12px 3px 0;
  border-bottom: 1px solid var(--line); }}
.{SCOPE} table.top td {{ padding: 3px 12px 3px 0; font-variant-numeric: tabular-nums; }}
"""
_ids = itertools.count()


@dataclass(frozen=True)
class Html:
    """An HTML fragment Jupyter shows inline; `save(path)` writes the full page (of `figures` when it has them)."""

    fragment: str
    figures: Figures | None = None

    @classmethod
    def of(cls, figures: Figures, extra: str = "") -> Html:
        return cls(fragment(figures, extra), figures)

    def _repr_html_(self) -> str:
        return self.fragment

    def __str__(self) -> str:
        return self.fragment

    def save(self, path: str | Path) -> Path:
        """Write a self-contained page (atomically; the path is checked first)."""
        from circuitry.fileio import atomic_write_text, check_output

        check_output(path, "path", (".html", ".htm"))
        if self.figures is not None:
            from circuitry.report.html import write_html

            return write_html(self.figures, path)
        atomic_write_text(path, f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>circuitry'
                                f'</title></head><body>{self.fragment}</body></html>\n')
        return Path(path)


# ------------------------------------------------------------------ fragments
def scope_css(css: str, scope: str = f".{SCOPE}") -> str:
    """A stylesheet whose rules apply inside `scope` only: `:root`, `html` and `body` become the scope itself,
    every other selector is prefixed with it (rules inside @media / @supports too; other at-rules are kept)."""
    out, i = [], 0
    while i < len(css):
        open_at = css.find("{", i)
        if open_at < 0:
            break
        selector = css[i:open_at].strip()
        depth, j = 1, open_at + 1
        while j < len(css) and depth:
            depth += {"{": 1, "}": -1}.get(css[j], 0)
            j += 1
        body = css[open_at + 1:j - 1]
        if selector.startswith(("@media", "@supports")):
            out.append(f"{selector} {{\n{scope_css(body, scope)}}}")
        elif selector.startswith("@"):
            out.append(f"{selector} {{{body}}}")
        else:
            parts = []
            for s in selector.split(","):
                s = s.strip()
                if s in (":root", "html", "body"):
                    parts.append(scope)
                elif s.startswith(("html ", "body ")):
                    parts.append(f"{scope} {s.split(' ', 1)[1]}")
                else:
                    parts.append(f"{scope} {s}")
            out.append(f"{', '.join(parts)} {{{body}}}")
        i = j
    return "\n".join(out) + "\n"


def fragment(figures: Figures | Sequence[Figures], extra: str = "") -> str:
    """The report page of `figures` as a fragment for a notebook (see the module docstring); `extra` (HTML)
    goes after its header."""
    from circuitry.report.html import render_html

    page = render_html(figures)
    style = re.search(r"<style>(.*?)</style>", page, flags=re.S)
    main = re.search(r"<main>(.*)</main>", page, flags=re.S)
    uid = f"cy{next(_ids)}"
    if style is None or main is None:  # a page of another shape: shown whole, in a frame of its own
        return (f'<iframe class="{SCOPE}" srcdoc="{escape(page, quote=True)}" style="width:100%;height:640px;'
                f'border:0"></iframe>')
    body = re.sub(r'(\bid="|url\(#|href="#)(s\d+-)', rf"\g<1>{uid}-\g<2>", main.group(1))
    body = re.sub(r"<footer>.*?</footer>", "", body, flags=re.S)
    if extra:
        body = body.replace("</header>", f"</header>{extra}", 1)
    return (f'<div class="{SCOPE}" id="{uid}"><style>{scope_css(style.group(1))}{EXTRA_CSS}</style>'
            f"{body}</div>")


def _fmt(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return escape(str(value))
    if not math.isfinite(v):
        return "n/a"
    return f"{v:.4g}"


def _data(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "nan"
    return repr(v) if math.isfinite(v) else "nan"


def top_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], kind: str = "") -> str:
    """A small table: text cells escaped, number cells (the last column) with their value in data-value."""
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        *text, number = row
        body.append("<tr>" + "".join(f"<td>{escape(str(t))}</td>" for t in text)
                    + f'<td data-value="{_data(number)}">{_fmt(number)}</td></tr>')
    return (f'<table class="top" data-table="{escape(kind or title, quote=True)}"><caption style="text-align:left;'
            f'font-weight:600;padding-bottom:4px">{escape(title)}</caption><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _card(title: str, inner: str) -> str:
    return f'<section class="card"><h2>{escape(title)}</h2>{inner}</section>'


# ------------------------------------------------------------------ verification report
def report_figures(report: Any) -> Figures:
    """What `report_html` draws: the claims, the circuit graph and the patterns the run kept."""
    from circuitry.figures import attention_grids, circuit_graph, claims_of, token_labels
    from circuitry.names import parse_component
    from circuitry.scan import pattern_names

    claims = claims_of(report)
    run = report.run
    graph: CircuitGraph | None = None
    patterns: tuple[Grid, ...] = ()
    tokens: tuple[str, ...] = ()
    if run is not None:
        import torch

        spec, model = run.spec, run.model
        known = run.detector_results
        heads = {k: v for k, v in known.items() if isinstance(v, torch.Tensor)}
        if spec.nodes or spec.edges:
            graph = circuit_graph(spec, model.cfg.n_layers, heads, known.get("composition"))
        cache = run.clean.cache if run.clean is not None else None
        circuit_heads = [n for n in spec.nodes if parse_component(n).is_head]
        if cache is not None and circuit_heads and all(n in cache for n in pattern_names(model)):
            ids = [int(t) for t in run.batch.tokens[0].tolist()]
            patterns = attention_grids(model, cache, ids, circuit_heads, 0, spec.nodes)
            tokens = token_labels(model, ids)
    name = run.spec.name if run is not None else report.name
    description = run.spec.description if run is not None else ""
    return Figures(title=name, model=report.model, data=report.data, subtitle=description, tokens=tokens,
                   patterns=patterns, graph=graph, claims=claims, passed=report.passed, header=tuple(report.header),
                   seconds=report.seconds)


def report_html(report: Any, full: bool = False) -> str:
    """A verification report as a notebook fragment; full: the page of `verify --html` (may run the model)."""
    if full:
        from circuitry.figures import figures_for_verification

        if report.run is None:
            from circuitry.errors import UsageError

            raise UsageError("the full page needs the report's run (a report made by verify in this process)")
        return fragment(figures_for_verification(report.run.spec, report))
    warnings = ""
    if report.warnings:
        items = "".join(f"<li>{escape(w)}</li>" for w in report.warnings)
        warnings = _card("Warnings", f'<ul class="warnings">{items}</ul>')
    return fragment(report_figures(report), warnings)


# ------------------------------------------------------------------ scan
def scan_figures(result: Any) -> Figures:
    """The scan page (`figures_for_scan`); for models of more than MAX_MATRIX_HEADS heads, head scores only."""
    from circuitry.figures import figures_for_scan, head_score_grids

    n_heads = len(result.head_names()) if result.heads else 0
    if not result.pairs or n_heads <= MAX_MATRIX_HEADS:
        return figures_for_scan(result)
    return Figures(title=f"scan of {result.model}", model=result.model, data=result.data,
                   head_scores=head_score_grids(result.heads, result.detectors))


def scan_html(result: Any, top: int = TOP) -> str:
    """A `ScanResult` as a notebook fragment: the strongest heads of each detector (and pairs of each pair
    detector), then the grids."""
    from circuitry.scan import strongest_order

    tables = []
    names = result.head_names()
    for det, scores in result.heads.items():
        flat = scores.reshape(-1).double()
        order = strongest_order(flat)[:top].tolist()
        tables.append(top_table(det, ("head", "score"), [(names[i], float(flat[i])) for i in order], f"heads:{det}"))
    for pname, ps in result.pairs.items():
        for kind in ps.scores:
            rows = [(r["from"], r["to"], r["score"]) for r in result.pair_list(pname, kind, top)]
            tables.append(top_table(f"{pname} ({kind})", ("from", "to", "score"), rows, f"pairs:{pname}:{kind}"))
    extra = _card("Strongest", '<div class="grids">' + "".join(tables) + "</div>") if tables else ""
    return fragment(scan_figures(result), extra)


# ------------------------------------------------------------------ residual graph
def _graph_node(graph: Any, name: str) -> GraphNode:
    from circuitry.figures import node_layer

    data = graph.nodes[name]
    kind = data.get("kind")
    role = data.get("role") or ("input" if kind in ("embed", "pos_embed") else "output" if kind == "logits" else "")
    score = data.get(role) if role and isinstance(data.get(role), (int, float)) else None
    return GraphNode(name, role, node_layer(name, graph.n_layers), None if score is None else float(score),
                     role if score is not None else "")


def circuit_of(graph: Any) -> CircuitGraph:
    """The graph's nodes and edges as the circuit drawing takes them (composition scores as edge scores)."""
    nodes = sorted((_graph_node(graph, n) for n in graph.nodes), key=lambda n: (n.layer, n.name))
    edges = tuple(GraphEdge(u, v, k, None if d.get("composition") is None else float(d["composition"]))
                  for u, v, k, d in graph.edges(keys=True, data=True))
    return CircuitGraph(tuple(nodes), edges)


def graph_html(graph: Any, top: int = TOP) -> str:
    """A `ResidualGraph` as a notebook fragment (see the module docstring)."""
    from collections import Counter

    from circuitry.names import EDGE_KINDS

    counts = Counter(k for _, _, k in graph.edges(keys=True))
    circuit = graph.graph.get("circuit")
    model = str(graph.graph.get("model", "") or "model")
    rows = [("nodes", graph.number_of_nodes())] + [(f"{k} edges", counts[k]) for k in EDGE_KINDS if counts.get(k)]
    parts = [top_table("size", ("", "count"), rows, "size")]
    scored = [(u, v, k, d["composition"]) for u, v, k, d in graph.edges(keys=True, data=True)
              if isinstance(d.get("composition"), (int, float)) and math.isfinite(d["composition"])]
    if scored:
        scored.sort(key=lambda e: -e[3])
        parts.append(top_table("strongest composition", ("edge", "composition"),
                               [(f"{u} -> {v} ({k})", s) for u, v, k, s in scored[:top]], "composition"))
    heads = graph.heads()
    score_names = sorted({k for n in heads for k, v in graph.nodes[n].items()
                          if k not in ("kind", "layer", "head", "role") and isinstance(v, (int, float))})
    for name in score_names:
        values = [(n, graph.nodes[n][name]) for n in heads if isinstance(graph.nodes[n].get(name), (int, float))]
        values = sorted((x for x in values if math.isfinite(x[1])), key=lambda x: -x[1])
        parts.append(top_table(f"strongest {name}", ("head", name), values[:top], f"score:{name}"))
    drawn = graph.number_of_edges() <= MAX_DRAWN_EDGES and graph.number_of_nodes() > 0
    note = "" if drawn else (f'<p class="hint">{graph.number_of_edges()} edges: too many to draw; '
                             f"a circuit (`graph.circuit(...)`) is drawn.</p>")
    extra = _card("Graph", note + '<div class="grids">' + "".join(parts) + "</div>")
    title = (f"residual graph of {model}" if not circuit else f"circuit of {model}" if circuit == "circuit"
             else f"circuit {circuit} of {model}")
    cfg = f"{graph.n_layers} layers x {graph.n_heads} heads"
    return fragment(Figures(title=title, model=model, data="", subtitle=cfg,
                            graph=circuit_of(graph) if drawn else None), extra)


# ------------------------------------------------------------------ any result
def html(obj: Any, *, model: str = "", data: str = "", full: bool = False) -> Html:
    """An `Html` of a verification report, scan result, ResidualGraph, PatchingResult (or a list of them),
    AttributionResult or Figures; model and data label the patching and attribution pages."""
    from circuitry.attribution import AttributionResult
    from circuitry.figures import figures_for_attribution, figures_for_patching
    from circuitry.graph import ResidualGraph
    from circuitry.patching import PatchingResult
    from circuitry.scan import ScanResult
    from circuitry.verify import VerificationReport

    if isinstance(obj, Html):
        return obj
    if isinstance(obj, Figures):
        return Html.of(obj)
    if isinstance(obj, VerificationReport):
        return Html(report_html(obj, full), None if full else report_figures(obj))
    if isinstance(obj, ScanResult):
        return Html(scan_html(obj), scan_figures(obj))
    if isinstance(obj, ResidualGraph):
        return Html(graph_html(obj))
    if isinstance(obj, PatchingResult) or (isinstance(obj, (list, tuple)) and obj
                                           and all(isinstance(r, PatchingResult) for r in obj)):
        results = list(obj) if isinstance(obj, (list, tuple)) else [obj]
        return Html.of(figures_for_patching(results, model or "model", data))
    if isinstance(obj, AttributionResult):
        return Html.of(figures_for_attribution(obj, model or "model", data))
    from circuitry.errors import UsageError

    raise UsageError(f"no picture of a {type(obj).__name__}: html() draws verification reports, scan results, "
                     f"residual graphs, patching and attribution results and Figures")
