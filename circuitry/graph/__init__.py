"""The residual-stream graph of a model and the exact path decomposition of its logits.

`ResidualGraph(model)`: components and the Q/K/V/mlp_in/direct edges between
them, with detector and composition scores as attributes, circuits as
subgraphs with roles, node-link JSON / GraphML / DOT export.
`decompose(model, tokens)`: the logits as a sum of path terms (direct path,
single heads, virtual heads, MLPs, biases, remainder).
"""

from circuitry.graph.decomposition import Decomposition, LadderStep, PathScore, Projection, decompose
from circuitry.graph.paths import Component, Path, format_path, parse_component, parse_path, path_kind
from circuitry.graph.residual_graph import ResidualGraph
from circuitry.names import EDGE_KINDS

__all__ = [
    "EDGE_KINDS", "Component", "Decomposition", "LadderStep", "Path", "PathScore", "Projection",
    "ResidualGraph", "decompose", "format_path", "parse_component", "parse_path", "path_kind",
]
