"""`ResidualGraph`: the residual stream of a model as a networkx graph of components and paths.

Nodes are the components that write to or read from the residual stream
(`embed`, `pos_embed`, `L{l}H{h}`, `M{l}`, `logits`); each edge `A -> B` says
that B reads what A wrote, labelled by the input it feeds: `Q`, `K`, `V` of a
head, `mlp_in` of an MLP, `direct` into the logits. In a model whose keys read
the embeddings (`ModelConfig.key_input` "embeddings"), the heads of layers >= 1
have K edges from `embed` and `pos_embed` only. The graph is a
`networkx.MultiDiGraph` (a subclass of `DiGraph`) because one pair of nodes
can be joined by up to three edges (Q, K and V); the edge key is the kind, so
`g.edges["L0H0", "L1H1", "K"]` is the K-edge. Detector scores attach as node
attributes and composition scores as the edge attribute `composition`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path as FilePath
from typing import Any

import networkx as nx
import torch

from circuitry.errors import UsageError, did_you_mean
from circuitry.jsonable import finite_tree, strict_dumps
from circuitry.model.config import ModelConfig
from circuitry.names import EDGE_COLOURS, check_kind, head_name, mlp_name, model_ranges

RESERVED_NODE_ATTRS = ("kind", "layer", "head", "role")
JSON_FORMAT = "circuitry-residual-graph"
JSON_VERSION = 1


class ResidualGraph(nx.MultiDiGraph):
    """Components of a model's residual stream and the Q/K/V/mlp_in/direct edges between them.

    ResidualGraph(model) builds the full graph of a `HookedTransformer` (or of
    a `ModelConfig`). scores: {name: tensor [layer, head]} detector scores,
    stored as node attribute `name` of each head. composition: {"Q"|"K"|"V":
    tensor [layer, head, layer, head]} with entry [l1, h1, l2, h2] the score of
    the edge L{l1}H{h1} -> L{l2}H{h2} of that kind, stored as edge attribute
    `composition`. `ResidualGraph()` is an empty graph (networkx needs it).
    """

    def __init__(self, model: Any = None, scores: Mapping[str, Any] | None = None,
                 composition: Mapping[str, Any] | None = None, incoming_graph_data: Any = None,
                 **attr: Any) -> None:
        super().__init__(incoming_graph_data, **attr)
        if model is None:
            if scores or composition:
                raise UsageError("ResidualGraph: scores and composition need a model")
            return
        cfg = model if isinstance(model, ModelConfig) else getattr(model, "cfg", None)
        if not isinstance(cfg, ModelConfig):
            raise UsageError(f"ResidualGraph needs a HookedTransformer or a ModelConfig, got {type(model).__name__}")
        self._build(cfg)
        if scores:
            self.add_scores(scores)
        if composition:
            self.add_composition(composition)

    # ----------------------------------------------------------------- build
    def _build(self, cfg: ModelConfig) -> None:
        self.graph.update(model=cfg.name, n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_model=cfg.d_model,
                          attn_only=cfg.attn_only, parallel_attn_mlp=cfg.parallel_attn_mlp,
                          positional=cfg.positional, key_input=cfg.key_input)
        writers = ["embed"]
        self.add_node("embed", kind="embed", layer=None, head=None)
        if cfg.positional == "learned":
            self.add_node("pos_embed", kind="pos_embed", layer=None, head=None)
            writers.append("pos_embed")
        for layer in range(cfg.n_layers):
            heads = [head_name(layer, h) for h in range(cfg.n_heads)]
            blocked = cfg.keys_read_embeddings(layer)
            for h, name in enumerate(heads):
                self.add_node(name, kind="head", layer=layer, head=h)
                for src in writers:
                    for kind in ("Q", "K", "V"):
                        if kind == "K" and blocked and src not in ("embed", "pos_embed"):
                            continue  # these keys read only the embeddings: no K edge from a head or MLP
                        self.add_edge(src, name, key=kind, kind=kind)
            if cfg.attn_only:
                writers += heads
                continue
            mlp = mlp_name(layer)
            self.add_node(mlp, kind="mlp", layer=layer, head=None)
            # a parallel MLP reads the same stream as the heads of its layer
            readable = writers if cfg.parallel_attn_mlp else writers + heads
            for src in readable:
                self.add_edge(src, mlp, key="mlp_in", kind="mlp_in")
            writers += heads + [mlp]
        self.add_node("logits", kind="logits", layer=None, head=None)
        for src in writers:
            self.add_edge(src, "logits", key="direct", kind="direct")

    @property
    def n_layers(self) -> int:
        return int(self.graph.get("n_layers", 0))

    @property
    def n_heads(self) -> int:
        return int(self.graph.get("n_heads", 0))

    def heads(self, layer: int | None = None) -> list[str]:
        """Head nodes (of one layer when given), in layer order."""
        return [n for n, d in self.nodes(data=True)
                if d.get("kind") == "head" and (layer is None or d.get("layer") == layer)]

    def edges_of_kind(self, kind: str) -> list[tuple[str, str]]:
        """(source, target) of every edge of one kind: Q, K, V, mlp_in or direct."""
        check_kind(kind)
        return [(u, v) for u, v, k in self.edges(keys=True) if k == kind]

    @property
    def roles(self) -> dict[str, str]:
        """{node: role} of the nodes that have one (set by `circuit`)."""
        return {n: d["role"] for n, d in self.nodes(data=True) if d.get("role") is not None}

    # ---------------------------------------------------------------- scores
    def _check_scores_shape(self, what: str, value: Any, shape: tuple[int, ...]) -> torch.Tensor:
        t = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
        if tuple(t.shape) != shape:
            raise UsageError(f"{what}: expected a tensor of shape {list(shape)}, got {list(t.shape)}")
        return t

    def add_scores(self, scores: Mapping[str, Any]) -> "ResidualGraph":
        """Attach detector scores {name: tensor [layer, head]} as node attributes of the heads."""
        L, H = self.n_layers, self.n_heads
        for name, value in scores.items():
            if not isinstance(name, str) or not name:
                raise UsageError(f"score names must be non-empty strings, got {name!r}")
            if name in RESERVED_NODE_ATTRS:
                raise UsageError(f"score name {name!r} clashes with a node attribute "
                                 f"({', '.join(RESERVED_NODE_ATTRS)}); rename it")
            t = self._check_scores_shape(f"scores[{name!r}]", value, (L, H))
            for node, v in zip(self._head_names(), t.reshape(-1).tolist()):
                if node in self:
                    self.nodes[node][name] = v
        return self

    def _head_names(self) -> list[str]:
        """Every head's name in flat order (layer * n_heads + head), whether or not the graph holds it."""
        return [head_name(l, h) for l in range(self.n_layers) for h in range(self.n_heads)]

    def add_composition(self, composition: Mapping[str, Any]) -> "ResidualGraph":
        """Attach composition scores {"Q"|"K"|"V": tensor [layer, head, layer, head]} to head->head edges."""
        L, H = self.n_layers, self.n_heads
        layer = torch.arange(L * H) // H
        sender, receiver = torch.nonzero(layer[:, None] < layer[None, :], as_tuple=True)  # [pairs]
        names = self._head_names()
        adj = self._adj  # node -> successor -> key -> edge attributes (networkx's storage)
        for kind, value in composition.items():
            key = kind.upper() if isinstance(kind, str) else kind
            if key not in ("Q", "K", "V"):
                raise UsageError(f"composition kind must be 'Q', 'K' or 'V', got {kind!r}")
            t = self._check_scores_shape(f"composition[{kind!r}]", value, (L, H, L, H)).reshape(L * H, L * H)
            for i, j, v in zip(sender.tolist(), receiver.tolist(), t[sender, receiver].tolist()):
                attrs = adj.get(names[i], {}).get(names[j], {}).get(key)
                if attrs is not None:
                    attrs["composition"] = v
        return self

    # --------------------------------------------------------------- circuit
    def _check_node(self, name: Any) -> str:
        if isinstance(name, str) and name in self:
            return name
        from types import SimpleNamespace

        from circuitry.names import check_component

        shape = SimpleNamespace(n_layers=self.n_layers, n_heads=self.n_heads, parallel_attn_mlp=False,
                                attn_only=bool(self.graph.get("attn_only", True)),
                                positional=self.graph.get("positional", "learned"))
        comp = check_component(name, shape)  # the vocabulary's message for names the model lacks
        raise UsageError(f"no node {comp.name!r} in this graph{did_you_mean(comp.name, map(str, self.nodes))}; "
                         f"the model has {model_ranges(shape)}")

    def circuit(self, nodes: Mapping[str, str | None] | Iterable[str],
                edges: Iterable[tuple[str, ...]] | None = None, name: str | None = None) -> "ResidualGraph":
        """A new graph holding a circuit: the nodes (with their roles) and edges of a hypothesis.

        nodes: {node: role} or a list of nodes (no roles). edges: (source,
        target, kind) for one edge or (source, target) for every edge between
        the two; nodes named only by edges are included without a role. With
        edges=None, every edge among the given nodes is kept.
        """
        roles: dict[str, str | None] = dict(nodes) if isinstance(nodes, Mapping) else {n: None for n in nodes}
        for node, role in roles.items():
            self._check_node(node)
            if role is not None and not isinstance(role, str):
                raise UsageError(f"role of {node!r} must be a string, got {role!r}")
        chosen: list[tuple[str, str, str]] = []
        if edges is None:
            chosen = [(u, v, k) for u, v, k in self.edges(keys=True) if u in roles and v in roles]
        else:
            for edge in edges:
                if not isinstance(edge, (tuple, list)) or len(edge) not in (2, 3):
                    raise UsageError(f"an edge is (source, target) or (source, target, kind), got {edge!r}")
                u, v = self._check_node(edge[0]), self._check_node(edge[1])
                if len(edge) == 3:
                    kind = edge[2]
                    check_kind(kind)
                    if not self.has_edge(u, v, kind):
                        raise UsageError(f"no edge {u} -> {v} ({kind}) in the graph: "
                                         f"{self._why_no_edge(u, v, kind)}")
                    chosen.append((u, v, kind))
                else:
                    keys = list(self.get_edge_data(u, v, default={}))
                    if not keys:
                        raise UsageError(f"no edge {u} -> {v} in the graph: {self._why_no_edge(u, v)}")
                    chosen += [(u, v, k) for k in keys]
                roles.setdefault(u, None)
                roles.setdefault(v, None)
        sub = ResidualGraph()
        sub.graph.update(self.graph)
        sub.graph["circuit"] = name or "circuit"
        for node in self.nodes:  # keep stream order
            if node in roles:
                data = dict(self.nodes[node])
                data["role"] = roles[node]
                sub.add_node(node, **data)
        for u, v, k in chosen:
            sub.add_edge(u, v, key=k, **self.edges[u, v, k])
        return sub

    def _why_no_edge(self, u: str, v: str, kind: str | None = None) -> str:
        ku, kv = self.nodes[u].get("kind"), self.nodes[v].get("kind")
        lu, lv = self.nodes[u].get("layer"), self.nodes[v].get("layer")
        if (kind == "K" and kv == "head" and self.graph.get("key_input") == "embeddings" and lv >= 1
                and lu is not None and lu < lv):
            return (f"the keys of layer {lv} read only the embeddings (key_input 'embeddings': K-composition is "
                    f"blocked)")
        if kv in ("embed", "pos_embed"):
            return f"{v} reads nothing"
        if ku == "logits":
            return "logits write nothing"
        if kv == "head" and lu is not None and lu >= lv:
            return f"heads of layer {lv} read only components of earlier layers"
        if kv == "mlp" and lu is not None and lu > lv:
            return f"M{lv} reads only components up to its own layer"
        kinds = ", ".join(sorted({k for _, _, k in self.in_edges(v, keys=True)})) or "none"
        return f"edge kinds into {v}: {kinds}"

    # ---------------------------------------------------------------- export
    def to_node_link(self) -> dict[str, Any]:
        """The node-link document (networkx's layout): graph, nodes with attributes, edges with keys.

        Attribute values that are NaN or infinite (a score that is undefined) become None, written
        as null in JSON and read back as None."""
        return {
            "format": JSON_FORMAT, "version": JSON_VERSION, "directed": True, "multigraph": True,
            "graph": finite_tree(dict(self.graph)),
            "nodes": [{"id": n, **finite_tree(d)} for n, d in self.nodes(data=True)],
            "edges": [{"source": u, "target": v, "key": k, **finite_tree(d)}
                      for u, v, k, d in self.edges(keys=True, data=True)],
        }

    @classmethod
    def from_node_link(cls, doc: Mapping[str, Any], where: str = "graph") -> "ResidualGraph":
        if not isinstance(doc, Mapping) or "nodes" not in doc:
            raise UsageError(f"{where}: not a node-link graph document (no 'nodes')")
        if doc.get("format", JSON_FORMAT) != JSON_FORMAT:
            raise UsageError(f"{where}: format {doc.get('format')!r} is not {JSON_FORMAT!r}")
        edges = doc.get("edges", doc.get("links", []))
        g = cls()
        g.graph.update(doc.get("graph", {}))
        try:
            for node in doc["nodes"]:
                attrs = {k: v for k, v in node.items() if k != "id"}
                g.add_node(node["id"], **attrs)
            for edge in edges:
                attrs = {k: v for k, v in edge.items() if k not in ("source", "target", "key")}
                g.add_edge(edge["source"], edge["target"], key=edge.get("key", attrs.get("kind")), **attrs)
        except (KeyError, TypeError) as exc:
            raise UsageError(f"{where}: malformed node-link document ({exc!r})") from None
        return g

    def to_json(self) -> str:
        """Strict node-link JSON (no NaN: undefined numbers are null); `from_json` reads it back with
        every attribute and role."""
        return strict_dumps(self.to_node_link(), indent=1)

    @classmethod
    def from_json(cls, text: str, where: str = "graph") -> "ResidualGraph":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
        return cls.from_node_link(doc, where)

    def write_json(self, path: str | FilePath) -> FilePath:
        from circuitry.fileio import atomic_write_text

        atomic_write_text(path, self.to_json() + "\n")
        return FilePath(path)

    @classmethod
    def read_json(cls, path: str | FilePath) -> "ResidualGraph":
        path = FilePath(path)
        if not path.exists():
            raise UsageError(f"no such graph file: {path}")
        return cls.from_json(path.read_text(), where=str(path))

    def _without_none(self) -> nx.MultiDiGraph:
        """A plain copy without None or non-scalar attribute values (GraphML cannot hold them)."""
        def keep(d: Mapping[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in d.items() if isinstance(v, (str, bool, int, float))}

        g = nx.MultiDiGraph()
        g.graph.update(keep(self.graph))
        g.add_nodes_from((n, keep(d)) for n, d in self.nodes(data=True))
        g.add_edges_from((u, v, k, keep(d)) for u, v, k, d in self.edges(keys=True, data=True))
        return g

    def to_graphml(self) -> str:
        """GraphML text (attributes that are None are left out; `read_graphml` restores them)."""
        return "\n".join(nx.generate_graphml(self._without_none())) + "\n"

    def write_graphml(self, path: str | FilePath) -> FilePath:
        from circuitry.fileio import atomic_write_text

        atomic_write_text(path, self.to_graphml())
        return FilePath(path)

    @classmethod
    def read_graphml(cls, path: str | FilePath) -> "ResidualGraph":
        path = FilePath(path)
        if not path.exists():
            raise UsageError(f"no such graph file: {path}")
        try:
            h = nx.read_graphml(path, edge_key_type=str, force_multigraph=True)
        except Exception as exc:  # noqa: BLE001 - networkx raises several types for bad XML
            raise UsageError(f"{path}: not readable as GraphML ({exc})") from None
        g = cls()
        g.graph.update({k: v for k, v in h.graph.items() if k not in ("node_default", "edge_default")})
        defaults = {"layer": None, "head": None, **({"role": None} if "circuit" in g.graph else {})}
        for n, d in h.nodes(data=True):
            g.add_node(n, **{**defaults, **d})
        for u, v, k, d in h.edges(keys=True, data=True):
            g.add_edge(u, v, key=k, **{a: b for a, b in d.items() if a != "id"})
        return g

    def _repr_html_(self) -> str:
        """Jupyter's inline view: counts, the circuit drawn (when small), strongest edges and head scores
        (`circuitry.report.notebook`)."""
        from circuitry.report.notebook import graph_html

        return graph_html(self)

    def to_dot(self, name: str = "residual_graph") -> str:
        """Graphviz DOT text: one box per component, heads ranked by layer, edges labelled by kind."""
        return _dot(self, name)

    def write_dot(self, path: str | FilePath, name: str = "residual_graph") -> FilePath:
        from circuitry.fileio import atomic_write_text

        atomic_write_text(path, self.to_dot(name))
        return FilePath(path)


_SHAPES = {"embed": "box", "pos_embed": "box", "head": "ellipse", "mlp": "box3d", "logits": "doubleoctagon"}


def _q(value: Any) -> str:
    """A DOT double-quoted string."""
    if isinstance(value, float):
        value = f"{value:.6g}" if math.isfinite(value) else str(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def _attrs(pairs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_q(v)}" for k, v in pairs.items() if v is not None)


def _dot(g: ResidualGraph, name: str) -> str:
    lines = [f"digraph {_q(name)} {{", "  rankdir=BT;", '  node [fontname="Helvetica"];',
             '  edge [fontname="Helvetica", fontsize=9];']
    for n, d in g.nodes(data=True):
        label = n if d.get("role") is None else f"{n}\n{d['role']}"
        extra = {k: v for k, v in d.items() if k not in ("role",) and isinstance(v, (str, int, float))}
        attrs = {"label": label, "shape": _SHAPES.get(d.get("kind"), "ellipse"), **extra}
        if d.get("role") is not None:
            attrs.update(style="filled", fillcolor="#fff2cc", role=d["role"])
        lines.append(f"  {_q(n)} [{_attrs(attrs)}];")
    layers: dict[int, list[str]] = {}
    for n, d in g.nodes(data=True):
        if d.get("kind") == "head":
            layers.setdefault(d["layer"], []).append(n)
    for layer in sorted(layers):
        lines.append(f"  {{ rank=same; {' '.join(_q(n) + ';' for n in layers[layer])} }}")
    for u, v, k, d in g.edges(keys=True, data=True):
        attrs = {"label": k, "color": EDGE_COLOURS.get(k, "black"),
                 **{a: b for a, b in d.items() if isinstance(b, (str, int, float))}}
        lines.append(f"  {_q(u)} -> {_q(v)} [{_attrs(attrs)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
