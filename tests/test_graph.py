"""ResidualGraph: nodes and edges by formula, scores, circuits, JSON / GraphML / DOT."""

from __future__ import annotations

import json

import networkx as nx
import pytest
import torch
from conftest import small_config

from circuitry.errors import UsageError
from circuitry.graph import ResidualGraph


def expected_counts(L: int, H: int, E: int, mlp: bool, parallel: bool = False) -> tuple[int, int]:
    """Nodes and edges by formula: E embedding nodes, L layers of H heads (and one MLP each)."""
    M = 1 if mlp else 0
    nodes = E + L * H + L * M + 1
    into_heads = sum(3 * H * (E + l * (H + M)) for l in range(L))
    into_mlps = M * sum(E + l * (H + 1) + (0 if parallel else H) for l in range(L))
    into_logits = E + L * (H + M)
    return nodes, into_heads + into_mlps + into_logits


def test_shipped_graph_counts(shipped):
    g = ResidualGraph(shipped)
    assert isinstance(g, nx.DiGraph) and g.is_multigraph()
    assert (g.number_of_nodes(), g.number_of_edges()) == expected_counts(2, 4, 2, mlp=False) == (11, 106)
    assert list(g.nodes)[:3] == ["embed", "pos_embed", "L0H0"] and list(g.nodes)[-1] == "logits"
    assert g.nodes["L1H2"] == {"kind": "head", "layer": 1, "head": 2}
    assert g.nodes["embed"]["kind"] == "embed"
    assert sorted(g.get_edge_data("pos_embed", "L1H0")) == ["K", "Q", "V"]
    assert not g.has_edge("L1H0", "L0H0") and not g.has_edge("L0H0", "L0H1")
    assert g.edges["L0H0", "logits", "direct"]["kind"] == "direct"
    assert len(g.edges_of_kind("K")) == 4 * 2 + 4 * 6


@pytest.mark.parametrize("parallel", [False, True])
def test_mlp_graph_counts(parallel):
    cfg = small_config(n_layers=3, n_heads=2, d_mlp=16, normalization="LN", parallel_attn_mlp=parallel)
    g = ResidualGraph(cfg)
    assert (g.number_of_nodes(), g.number_of_edges()) == expected_counts(3, 2, 2, mlp=True, parallel=parallel)
    # an MLP of a layer feeds the next layer's heads, never its own layer's heads
    assert g.has_edge("M0", "L1H0", "V") and not g.has_edge("M1", "L1H0", "V")
    assert g.has_edge("L1H1", "M1", "mlp_in") is (not parallel)
    assert g.has_edge("L0H1", "M1", "mlp_in") and g.has_edge("M2", "logits", "direct")
    rotary = ResidualGraph(small_config(positional="rotary"))
    assert "pos_embed" not in rotary
    assert rotary.number_of_edges() == expected_counts(2, 4, 1, mlp=False)[1]


def test_scores_and_composition_attach(shipped):
    scores = torch.arange(8.0).reshape(2, 4) / 10
    comp = torch.rand(2, 4, 2, 4, generator=torch.Generator().manual_seed(0))
    g = ResidualGraph(shipped, scores={"induction": scores}, composition={"K": comp, "v": comp * 2})
    assert g.nodes["L1H2"]["induction"] == pytest.approx(0.6)
    assert g.edges["L0H3", "L1H1", "K"]["composition"] == pytest.approx(float(comp[0, 3, 1, 1]))
    assert g.edges["L0H3", "L1H1", "V"]["composition"] == pytest.approx(float(comp[0, 3, 1, 1] * 2))
    assert "composition" not in g.edges["L0H3", "L1H1", "Q"]
    assert "composition" not in g.edges["embed", "L1H1", "K"]
    with pytest.raises(UsageError, match=r"shape \[2, 4\]"):
        g.add_scores({"x": torch.zeros(3, 4)})
    with pytest.raises(UsageError, match="clashes"):
        g.add_scores({"layer": scores})
    with pytest.raises(UsageError, match="'Q', 'K' or 'V'"):
        g.add_composition({"O": comp})


def test_circuit_with_roles(shipped):
    g = ResidualGraph(shipped)
    c = g.circuit(nodes={"L0H0": "previous_token", "L1H1": "induction"},
                  edges=[("L0H0", "L1H1", "K"), ("L1H1", "logits"), ("embed", "L1H1", "V")], name="induction")
    assert isinstance(c, ResidualGraph)
    assert c.roles == {"L0H0": "previous_token", "L1H1": "induction"}
    assert set(c.nodes) == {"L0H0", "L1H1", "logits", "embed"}
    assert sorted(c.edges(keys=True)) == [("L0H0", "L1H1", "K"), ("L1H1", "logits", "direct"),
                                          ("embed", "L1H1", "V")]
    assert c.graph["circuit"] == "induction" and c.graph["n_layers"] == 2
    assert "role" not in g.nodes["L0H0"]  # the full graph is untouched
    induced = g.circuit(["L0H0", "L1H1"])
    assert sorted(induced.edges(keys=True)) == [("L0H0", "L1H1", k) for k in "KQV"]
    for kwargs, fragment in [(dict(nodes=["L5H0"]), "the model has no head L5H0: it has heads L0H0..L1H3"),
                             (dict(nodes=["L0H0"], edges=[("L1H1", "L0H0", "K")]), "earlier layers"),
                             (dict(nodes=["L0H0"], edges=[("L0H0", "L1H1", "X")]), "unknown edge kind"),
                             (dict(nodes=["L0H0"], edges=[("logits", "L0H0")]), "no edge logits -> L0H0"),
                             (dict(nodes={"L0H0": 3}), "must be a string")]:
        with pytest.raises(UsageError) as info:
            g.circuit(**kwargs)
        assert fragment in str(info.value)


def graph_with_everything(shipped):
    g = ResidualGraph(shipped, scores={"induction": torch.rand(2, 4)},
                      composition={"K": torch.rand(2, 4, 2, 4)})
    return g.circuit({"L0H0": "previous_token", "L1H1": "induction", "L1H3": None},
                     edges=[("L0H0", "L1H1", "K"), ("L0H0", "L1H3"), ("L1H1", "logits", "direct")])


def test_json_round_trip(shipped, tmp_path):
    full = ResidualGraph(shipped, scores={"induction": torch.rand(2, 4)})
    for g in (full, graph_with_everything(shipped)):
        path = g.write_json(tmp_path / "g.json")
        doc = json.loads(path.read_text())
        assert doc["format"] == "circuitry-residual-graph" and doc["multigraph"] is True
        back = ResidualGraph.read_json(path)
        assert isinstance(back, ResidualGraph)
        assert nx.utils.graphs_equal(back, g)
        assert dict(back.nodes(data=True)) == dict(g.nodes(data=True))
        assert list(back.edges(keys=True, data=True)) == list(g.edges(keys=True, data=True))
    with pytest.raises(UsageError, match="not valid JSON"):
        ResidualGraph.from_json("{nope")
    with pytest.raises(UsageError, match="no such graph file"):
        ResidualGraph.read_json(tmp_path / "missing.json")


def test_graphml_is_readable_by_networkx(shipped, tmp_path):
    g = graph_with_everything(shipped)
    path = g.write_graphml(tmp_path / "g.graphml")
    plain = nx.read_graphml(path, force_multigraph=True)
    assert set(plain.nodes) == set(g.nodes)
    assert plain.number_of_edges() == g.number_of_edges()
    assert plain.nodes["L1H1"]["role"] == "induction"
    assert plain.nodes["L1H1"]["induction"] == pytest.approx(g.nodes["L1H1"]["induction"])
    back = ResidualGraph.read_graphml(path)
    assert nx.utils.graphs_equal(back, g)


def test_dot_has_every_edge(shipped, tmp_path):
    g = graph_with_everything(shipped)
    dot = g.write_dot(tmp_path / "g.dot").read_text()
    assert dot.startswith('digraph "residual_graph" {') and dot.rstrip().endswith("}")
    for u, v, k in g.edges(keys=True):
        assert any(line.strip().startswith(f'"{u}" -> "{v}" [label="{k}"') for line in dot.splitlines()), (u, v, k)
    assert dot.count(" -> ") == g.number_of_edges()
    assert 'role="previous_token"' in dot and "L1H1\\ninduction" in dot
