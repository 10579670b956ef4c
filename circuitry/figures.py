"""Everything a picture needs, computed once from a model, its data and a report.

`Figures` is a frozen record of plain numbers and strings: per-head attention
patterns [q, k] with token labels, head-score grids [layer, head], composition
matrices [sender, receiver], the circuit graph (nodes with roles, edges with
kinds and scores) and the claims of a verification report. The renderers in
`circuitry.report` (HTML, PNG, terminal) draw a `Figures` and compute nothing.

Builders:
- `figures_for_verification(spec, report, model, batch)`: one cached run on the
  spec's data serves the head detectors and the patterns of its first sequence.
- `figures_for_scan(result)`: from a `ScanResult`, no model run.
- `figures_for_heads(model, tokens, heads)`: the patterns of some heads on one
  sequence (`circuitry show`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from circuitry.names import check_component, head_index, head_name, parse_component

if TYPE_CHECKING:
    import torch

    from circuitry.data import TokenBatch
    from circuitry.model import HookedTransformer
    from circuitry.records import Detector, PairScores
    from circuitry.scan import ScanResult
    from circuitry.spec.format import CircuitSpec
    from circuitry.verify import VerificationReport



# ------------------------------------------------------------------ records
@dataclass(frozen=True)
class Grid:
    """One heatmap: values [rows, cols] (NaN where a cell has no value) with labels.

    kind: "attention" (rows: query positions, cols: key positions),
    "head_scores" (rows: layers, cols: heads), "composition" (rows: sender
    heads, cols: receiver heads) or "patching" (rows: layers or heads, cols:
    positions or heads; values: normalised patching effects). highlight: (row, col) cells to outline
    (circuit edges, scores at or above a threshold). centre: the value a diverging colour scale is
    centred on (composition: the random-matrix baseline, since random weights do not score 0); None:
    sequential, or centred on 0 when value_range spans 0.
    """

    id: str
    kind: str
    title: str
    values: tuple[tuple[float, ...], ...]
    row_labels: tuple[str, ...]
    col_labels: tuple[str, ...]
    row_title: str = ""
    col_title: str = ""
    value_range: tuple[float, float] = (0.0, 1.0)
    head: str | None = None
    role: str | None = None
    baseline: float | None = None
    highlight: tuple[tuple[int, int], ...] = ()
    note: str = ""
    centre: float | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.values), len(self.values[0]) if self.values else 0


@dataclass(frozen=True)
class GraphNode:
    """A circuit component; layer orders the drawing (embed -1, M{l} l + 0.5, logits n_layers)."""

    name: str
    role: str
    layer: float
    score: float | None = None  # the node's score under the detector named by its role, if any
    score_name: str = ""


@dataclass(frozen=True)
class GraphEdge:
    """`sender -> receiver (kind)`; score and baseline: its composition score, when it has one."""

    sender: str
    receiver: str
    kind: str
    score: float | None = None
    baseline: float | None = None

    @property
    def ratio(self) -> float | None:
        if self.score is None or not self.baseline:
            return None
        return self.score / self.baseline

    @property
    def name(self) -> str:
        return f"{self.sender} -> {self.receiver} ({self.kind})"


@dataclass(frozen=True)
class CircuitGraph:
    nodes: tuple[GraphNode, ...]
    edges: tuple[GraphEdge, ...]

    @property
    def roles(self) -> tuple[str, ...]:
        """Roles in order of first appearance."""
        return tuple(dict.fromkeys(n.role for n in self.nodes))


@dataclass(frozen=True)
class Claim:
    """One check of a verification report: the measured value next to the expectation."""

    id: str
    kind: str
    claim: str
    value: float | None
    expect: str
    passed: bool
    values: tuple[tuple[str, float], ...] = ()  # per node / edge, when the check measured several
    seconds: float = 0.0


@dataclass(frozen=True)
class Figures:
    """What the HTML, PNG and terminal renderers draw (sections may be empty)."""

    title: str
    model: str
    data: str
    subtitle: str = ""
    tokens: tuple[str, ...] = ()  # labels of the sequence the attention patterns are on
    patterns: tuple[Grid, ...] = ()
    head_scores: tuple[Grid, ...] = ()
    composition: tuple[Grid, ...] = ()
    patching: tuple[Grid, ...] = ()
    graph: CircuitGraph | None = None
    claims: tuple[Claim, ...] = ()
    passed: bool | None = None  # None: not a verification
    header: tuple[str, ...] = ()
    seconds: float | None = None

    def pattern(self, head: str) -> Grid:
        for g in self.patterns:
            if g.head == head:
                return g
        raise KeyError(head)


# ------------------------------------------------------------------ helpers
def parse_head(name: str, cfg: Any) -> tuple[int, int]:
    """(layer, head) of a head of the model with config `cfg`, or the vocabulary's UsageError."""
    comp = check_component(name, cfg, allow=("head",))
    return comp.layer, comp.head  # type: ignore[return-value]


def node_layer(name: str, n_layers: int) -> float:
    """Where a component sits in the drawing: its stream position, an MLP half a layer above its heads."""
    layer, mlp = parse_component(name).stream_position(n_layers)
    return layer + 0.5 * mlp


def _float(x: Any) -> float:
    v = float(x)
    return v if math.isfinite(v) else math.nan


def _rows(t) -> tuple[tuple[float, ...], ...]:
    """A 2-D tensor -> nested tuples of floats."""
    return tuple(tuple(_float(v) for v in row) for row in t.detach().float().cpu().tolist())


def token_labels(model: HookedTransformer, tokens: Sequence[int]) -> tuple[str, ...]:
    """Readable labels of token ids: decoded text with a tokenizer, else the ids (BOS named)."""
    tok = getattr(model, "tokenizer", None)
    bos = model.cfg.bos_token_id
    labels = []
    for t in tokens:
        t = int(t)
        if tok is not None:
            text = tok.decode([t])
            labels.append(text.replace("\n", "\\n").replace(" ", "·") or f"<{t}>")
        else:
            labels.append("BOS" if bos is not None and t == bos else str(t))
    return tuple(labels)


def pattern_cache(model: HookedTransformer, tokens: torch.Tensor):
    """One run with only the attention patterns cached (the unembedding is skipped)."""
    import torch

    from circuitry.scan import pattern_names

    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens, names=pattern_names(model), stop_at_layer=model.cfg.n_layers)
    return cache


def attention_grids(model: HookedTransformer, cache, tokens: Sequence[int], heads: Iterable[str],
                    index: int = 0, roles: Mapping[str, str] | None = None,
                    prefix: str = "pattern") -> tuple[Grid, ...]:
    """The pattern [q, k] of each head on sequence `index` of the cached run."""
    cfg = model.cfg
    labels = token_labels(model, tokens)
    grids = []
    for name in heads:
        layer, head = parse_head(name, cfg)
        pat = cache[f"blocks.{layer}.attn.hook_pattern"][index, head]  # [q, k]
        role = (roles or {}).get(name)
        grids.append(Grid(f"{prefix}-{name}", "attention", f"{name}" + (f" · {role}" if role else ""), _rows(pat),
                          labels, labels, "query", "key", (0.0, 1.0), head=name, role=role))
    return tuple(grids)


def head_score_grids(heads: Mapping[str, torch.Tensor], detectors: Mapping[str, Detector],
                     prefix: str = "scores") -> tuple[Grid, ...]:
    """One grid [layer, head] per head detector, cells at or above its threshold highlighted."""
    grids = []
    for name, scores in heads.items():
        det = detectors.get(name)
        L, H = scores.shape
        values = _rows(scores)
        thr = det.threshold if det is not None else None
        hi = tuple((l, h) for l in range(L) for h in range(H)
                   if thr is not None and math.isfinite(values[l][h]) and values[l][h] >= thr)
        grids.append(Grid(f"{prefix}-{name}", "head_scores", name, values,
                          tuple(f"L{l}" for l in range(L)), tuple(f"H{h}" for h in range(H)), "layer", "head",
                          det.value_range if det is not None else (0.0, 1.0), highlight=hi,
                          note=(det.description if det is not None else "")
                          + (f" (outlined: >= {thr:g})" if thr is not None else "")))
    return tuple(grids)


def composition_grids(pairs: PairScores, senders: Sequence[tuple[int, int]], receivers: Sequence[tuple[int, int]],
                      highlight: Iterable[tuple[str, str, str]] = (), prefix: str = "composition",
                      name: str = "composition") -> tuple[Grid, ...]:
    """Per kind, scores [sender, receiver] (NaN unless the sender's layer is earlier)."""
    marked = set(highlight)
    grids = []
    for kind, t in pairs.scores.items():
        base = float(pairs.baseline[kind])
        rows, hi = [], []
        for i, (l1, h1) in enumerate(senders):
            row = []
            for j, (l2, h2) in enumerate(receivers):
                row.append(_float(t[l1, h1, l2, h2]) if l1 < l2 else math.nan)
                if (head_name(l1, h1), head_name(l2, h2), kind) in marked:
                    hi.append((i, j))
            rows.append(tuple(row))
        finite = [v for r in rows for v in r if math.isfinite(v)]
        top = max([base * 2, *finite]) if finite else 1.0
        title = f"{kind}-composition" if name == "composition" else f"{name} ({kind})"
        grids.append(Grid(f"{prefix}-{kind}", "composition", title, tuple(rows),
                          tuple(head_name(l, h) for l, h in senders), tuple(head_name(l, h) for l, h in receivers),
                          "sender", "receiver", (0.0, top), baseline=base, highlight=tuple(hi),
                          note="red: above the random baseline (what random weights score), blue: below", centre=base))
    return tuple(grids)


def claims_of(report: VerificationReport) -> tuple[Claim, ...]:
    out = []
    for c in report.checks:
        values = c.details.get("values") or {}
        out.append(Claim(c.id, c.kind, c.claim, None if c.value is None else _float(c.value), c.expect, c.passed,
                         tuple((str(k), _float(v)) for k, v in values.items()), c.seconds))
    return tuple(out)


def circuit_graph(spec: CircuitSpec, n_layers: int, heads: Mapping[str, torch.Tensor] | None = None,
                  pairs: PairScores | None = None) -> CircuitGraph:
    """The spec's circuit: nodes with roles (and their role's detector score), edges with composition scores."""
    heads = heads or {}
    names = list(spec.nodes)
    for e in spec.edges:
        for end in (e.sender, e.receiver):
            if end not in names:
                names.append(end)
    nodes = []
    for name in names:
        role = spec.nodes.get(name, "input" if name in ("embed", "pos_embed") else
                              "output" if name == "logits" else "")
        score = None
        if role in heads and parse_component(name).is_head:
            l, h = head_index(name)
            score = _float(heads[role][l, h])
        nodes.append(GraphNode(name, role, node_layer(name, n_layers), score, role if score is not None else ""))
    nodes.sort(key=lambda n: (n.layer, n.name))
    edges = []
    for e in spec.edges:
        score = base = None
        if (pairs is not None and e.kind in pairs.scores and parse_component(e.sender).is_head
                and parse_component(e.receiver).is_head):
            (l1, h1), (l2, h2) = head_index(e.sender), head_index(e.receiver)
            score = _float(pairs.scores[e.kind][l1, h1, l2, h2])
            base = float(pairs.baseline[e.kind])
        edges.append(GraphEdge(e.sender, e.receiver, e.kind, score, base))
    return CircuitGraph(tuple(nodes), tuple(edges))


# ------------------------------------------------------------------ builders
def figures_for_verification(spec: CircuitSpec, report: VerificationReport, model: HookedTransformer | None = None,
                             batch: TokenBatch | None = None, manager=None, index: int = 0,
                             max_matrix_heads: int = 64, device: str | None = None) -> Figures:
    """The verification page: claims, circuit graph, patterns of the circuit's heads on
    sequence `index` of the spec's data, head scores and composition matrices.

    The report's shared run (`report.run`) supplies the model, the batch, the
    cached patterns and the detector scores already computed; without it (or
    for another `model` / `batch`), the report's model is loaded (on `device`)
    and the spec's data generated again (it is seeded: it is the verified data)."""
    from circuitry.plugins import get_manager
    from circuitry.scan import pattern_names, run_detectors

    manager = manager or get_manager()
    run = report.run
    if model is None:
        if run is not None:
            model = run.model
        else:
            from circuitry.sources import load_model

            model = load_model(report.model, device=device)
    shared = run if run is not None and run.model is model and (batch is None or batch is run.batch) else None
    if batch is None:
        if shared is not None:
            batch = shared.batch
        else:
            from circuitry.datasets import make_batch

            batch = make_batch(model, spec.data).to(model.device)
    cfg = model.cfg
    cached = shared.clean.cache if shared is not None and shared.clean is not None else None
    if cached is None or any(n not in cached for n in pattern_names(model)):
        cached = pattern_cache(model, batch.tokens)  # one cached run for patterns and head detectors
    cache = cached
    known = shared.detector_results if shared is not None else {}
    detectors = manager.detectors()
    wanted = [c.options["detector"] for c in spec.checks if c.kind == "detector"]
    wanted += [r for r in spec.nodes.values() if r in detectors]
    head_dets = {n: detectors[n] for n in dict.fromkeys(wanted) if n in detectors and detectors[n].kind == "head"}
    heads = {n: known[n] for n in head_dets if n in known}
    computed, _ = run_detectors(model, batch, {n: d for n, d in head_dets.items() if n not in known}, cache=cache)
    heads.update(computed)
    pairs = known.get("composition")
    if pairs is None and "composition" in detectors and cfg.n_layers > 1:
        _, p = run_detectors(model, None, {"composition": detectors["composition"]})
        pairs = p.get("composition")

    circuit_heads = sorted((parse_head(n, cfg) for n in spec.nodes
                            if parse_component(n).is_head))
    head_names = [head_name(l, h) for l, h in circuit_heads]
    tokens = [int(t) for t in batch.tokens[index].tolist()]
    patterns = attention_grids(model, cache, tokens, head_names, index, spec.nodes)

    composition: tuple[Grid, ...] = ()
    if pairs is not None:
        if cfg.n_layers * cfg.n_heads <= max_matrix_heads:
            every = [(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
            senders = [x for x in every if x[0] < cfg.n_layers - 1]
            receivers = [x for x in every if x[0] > 0]
        else:
            senders = [x for x in circuit_heads if x[0] < max(l for l, _ in circuit_heads)]
            receivers = [x for x in circuit_heads if x[0] > min(l for l, _ in circuit_heads)]
        if senders and receivers:
            composition = composition_grids(pairs, senders, receivers,
                                            [(e.sender, e.receiver, e.kind) for e in spec.edges])
    return Figures(
        title=spec.name, model=report.model, data=report.data,
        subtitle=spec.description, tokens=token_labels(model, tokens), patterns=patterns,
        head_scores=head_score_grids(heads, head_dets), composition=composition,
        graph=circuit_graph(spec, cfg.n_layers, heads, pairs), claims=claims_of(report),
        passed=report.passed, header=tuple(report.header), seconds=report.seconds,
    )


def figures_for_scan(result: ScanResult) -> Figures:
    """The scan page: one head-score grid per head detector, composition matrices per pair detector."""
    grids: list[Grid] = []
    for pname, ps in result.pairs.items():
        t = next(iter(ps.scores.values()))
        L, H = t.shape[:2]
        every = [(l, h) for l in range(L) for h in range(H)]
        grids.extend(composition_grids(ps, [x for x in every if x[0] < L - 1], [x for x in every if x[0] > 0],
                                       prefix=pname, name=pname))
    return Figures(title=f"scan of {result.model}", model=result.model, data=result.data,
                   head_scores=head_score_grids(result.heads, result.detectors), composition=tuple(grids))


def figures_for_heads(model: HookedTransformer, tokens: torch.Tensor | Sequence[int], heads: Sequence[str],
                      data: str = "", title: str | None = None) -> Figures:
    """Attention patterns of `heads` on one sequence of token ids [pos]."""
    cfg = model.cfg
    names = []
    for name in heads:
        layer, head = parse_head(name, cfg)
        names.append(head_name(layer, head))
    ids = [int(t) for t in (tokens.tolist() if hasattr(tokens, "tolist") else tokens)]
    batch = model.check_tokens([ids])  # [1, pos]
    cache = pattern_cache(model, batch)
    ref = model.source or cfg.name or "model"
    return Figures(title=title or f"attention of {', '.join(names)}", model=str(ref), data=data,
                   tokens=token_labels(model, ids), patterns=attention_grids(model, cache, ids, names))


# ------------------------------------------------------------------ activation patching
def patching_grids(result: Any) -> tuple[Grid, ...]:
    """The heatmaps of one `circuitry.patching.PatchingResult`: normalised effects (the raw metric when
    they could not be normalised), [layer, pos], [layer] or [layer, head] as one grid, [layer, head, pos]
    as one grid per layer."""
    import torch

    normalised = result.normalised.double()
    use = normalised if bool(torch.isfinite(normalised).any()) else result.values.double()
    what, dims = result.what, result.dims
    note = (f"{result.direction}; metric clean {result.clean:.4g}, corrupted {result.corrupted:.4g}"
            + ("" if use is normalised else "; values: the metric itself (the runs do not differ enough to "
                                            "normalise)"))
    rng = (-1.0, 1.0) if use is normalised else _finite_range(use)
    if dims == ("layer", "head", "pos"):
        return tuple(Grid(f"patch-{what}-L{l}", "patching", f"{what}: layer {l}", _rows(use[l]),
                          result.heads, result.positions, "head", "position", rng, note=note)
                     for l in range(use.shape[0]))
    if dims == ("layer",):
        return (Grid(f"patch-{what}", "patching", what, _rows(use[:, None]), result.layers, ("all positions",),
                     "layer", "", rng, note=note),)
    cols = result.positions if dims == ("layer", "pos") else result.heads
    return (Grid(f"patch-{what}", "patching", what, _rows(use), result.layers, cols, "layer", dims[1], rng,
                 note=note),)


def figures_for_patching(results: Sequence[Any], model: str, data: str) -> Figures:
    """The page of `circuitry patch`: one section of heatmaps per patched activation."""
    grids = tuple(g for r in results for g in patching_grids(r))
    return Figures(title=f"activation patching of {model}", model=model, data=data, patching=grids)


def _finite_range(t: Any) -> tuple[float, float]:
    import torch

    finite = t[torch.isfinite(t)]
    if not finite.numel():
        return (0.0, 1.0)
    lo, hi = float(finite.min()), float(finite.max())
    m = max(abs(lo), abs(hi)) or 1.0
    return (-m, m) if lo < 0 else (0.0, m)


def attribution_grids(result: Any) -> tuple[Grid, ...]:
    """The heatmaps of one `circuitry.attribution.AttributionResult`: every head's node score [layer, head];
    per edge kind Q, K, V, the head-to-head edge scores [sender head, receiver head]; with per-position node
    scores, the heads' scores by position [head, pos]."""
    import torch

    layout, method = result.layout, result.method
    n_layers, n_heads = layout.n_layers, layout.n_heads
    heads = [f"L{l}H{h}" for l in range(n_layers) for h in range(n_heads)]
    note = f"{method}; {result.metric} clean {result.clean:.4g}, corrupted {result.corrupted:.4g}; positive: helps"
    nodes = torch.tensor([[float(result.node_scores[layout.index[f"L{l}H{h}"]]) for h in range(n_heads)]
                          for l in range(n_layers)], dtype=torch.float64)
    grids = [Grid(f"attribution-{method}-heads", "patching", f"{method}: head scores", _rows(nodes),
                  tuple(f"L{l}" for l in range(n_layers)), tuple(f"H{h}" for h in range(n_heads)), "layer", "head",
                  _finite_range(nodes), note=note)]
    if result.edge_scores is not None:
        for kind in ("Q", "K", "V"):
            t = torch.full((len(heads), len(heads)), float("nan"), dtype=torch.float64)
            for i, s in enumerate(heads):
                for j, r in enumerate(heads):
                    k = layout.edge_index.get(_edge(s, r, kind))
                    if k is not None:
                        t[i, j] = float(result.edge_scores[k])
            if bool(torch.isfinite(t).any()):
                grids.append(Grid(f"attribution-{method}-{kind}", "patching", f"{method}: {kind} edges between heads",
                                  _rows(t), tuple(heads), tuple(heads), "sender", "receiver", _finite_range(t),
                                  note=note))
    if result.node_positions is not None:
        t = torch.stack([result.node_positions[layout.index[h]] for h in heads]).double()
        grids.append(Grid(f"attribution-{method}-positions", "patching", f"{method}: head scores by position",
                          _rows(t), tuple(heads), tuple(result.positions), "head", "position", _finite_range(t),
                          note=note))
    return tuple(grids)


def _edge(sender: str, receiver: str, kind: str):
    from circuitry.names import Edge

    return Edge(sender, receiver, kind)


def figures_for_attribution(result: Any, model: str, data: str) -> Figures:
    """The page of `circuitry attribute`: the attribution scores as heatmaps."""
    return Figures(title=f"attribution patching of {model} ({result.method})", model=model, data=data,
                   patching=attribution_grids(result))
