"""docs/graph-api.md runs: every python block of the tour, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "graph-api.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_doc_has_the_tour_blocks():
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 8
    joined = "\n".join(blocks)
    for name in ("ResidualGraph(", "decompose(", ".circuit(", "write_json", "write_graphml", "to_dot",
                 "project(", "top_paths(", "loss_ladder("):
        assert name in joined, name


def test_graph_api_tour_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "graph_api_tour"}
    for i, block in enumerate(python_blocks(DOC.read_text())):
        code = compile(block, f"{DOC.name}[block {i}]", "exec")
        exec(code, namespace)  # noqa: S102 - the documentation's own examples
    out = capsys.readouterr().out
    assert "terms sum to the logits within" in out
    assert "the model has no head L5H0" in out
    assert (tmp_path / "circuit.json").exists() and (tmp_path / "graph.graphml").exists()
