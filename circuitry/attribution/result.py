"""`AttributionResult`: the scores of one attribution run, by edge and by node, and how they compare."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from circuitry.attribution.layout import Layout
from circuitry.names import Edge


@dataclass(frozen=True)
class AttributionResult:
    """Scores of every edge (`Layout.edges` order) and node (`Layout.senders` order) for one metric.

    A positive score: the edge (node) helps the metric, patching it from the corrupted run costs about
    that much. node_positions [n_senders, pos]: node scores per position (gradient methods; None for
    exact). edge_scores is None when only nodes were scored (exact, level nodes)."""

    method: str
    metric: str
    layout: Layout
    edge_scores: torch.Tensor | None  # [n_edges] float64
    node_scores: torch.Tensor  # [n_senders] float64
    node_positions: torch.Tensor | None = None  # [n_senders, pos]
    positions: tuple[str, ...] = ()
    clean: float = float("nan")
    corrupted: float = float("nan")
    steps: int | None = None
    n_passes: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def edges(self) -> tuple[Edge, ...]:
        return self.layout.edges

    def edge_dict(self) -> dict[str, float]:
        """{"A -> B (K)": score} of every edge."""
        if self.edge_scores is None:
            return {}
        return {str(e): float(s) for e, s in zip(self.layout.edges, self.edge_scores)}

    def node_dict(self) -> dict[str, float]:
        return {n: float(s) for n, s in zip(self.layout.senders, self.node_scores)}

    def top_edges(self, k: int, by_abs: bool = True) -> list[tuple[Edge, float]]:
        """The k edges with the largest |score| (or score), largest first, ties in stream order."""
        if self.edge_scores is None:
            return []
        key = self.edge_scores.abs() if by_abs else self.edge_scores
        order = sorted(range(len(key)), key=lambda i: (-float(key[i]), i))[:k]
        return [(self.layout.edges[i], float(self.edge_scores[i])) for i in order]

    def top_nodes(self, k: int, by_abs: bool = True) -> list[tuple[str, float]]:
        key = self.node_scores.abs() if by_abs else self.node_scores
        order = sorted(range(len(key)), key=lambda i: (-float(key[i]), i))[:k]
        return [(self.layout.senders[i], float(self.node_scores[i])) for i in order]

    def add_to_graph(self, graph) -> None:
        """Store the scores on a `ResidualGraph` of the same model: edge attribute and node attribute
        `attribution_{method}` (so exports carry them)."""
        key = f"attribution_{self.method.replace('-', '_')}"
        if self.edge_scores is not None:
            for e, s in zip(self.layout.edges, self.edge_scores):
                graph.edges[e.sender, e.receiver, e.kind][key] = float(s)
        for n, s in zip(self.layout.senders, self.node_scores):
            graph.nodes[n][key] = float(s)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two score vectors (nan when one is constant)."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else float("nan")


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    return pearson(_ranks(a), _ranks(b))


def _ranks(x: torch.Tensor) -> torch.Tensor:
    values = x.double().tolist()
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return torch.tensor(ranks, dtype=torch.float64)


def top_overlap(a: torch.Tensor, b: torch.Tensor, k: int) -> int:
    """How many of the k largest |a| are among the k largest |b|."""
    top = lambda x: set(sorted(range(len(x)), key=lambda i: (-abs(float(x[i])), i))[:k])  # noqa: E731
    return len(top(a) & top(b))
