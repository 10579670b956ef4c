"""docs/ioi-toy.md runs: every python block, in order, in one namespace; the commands it shows work and
`circuitry patch` draws the layer x position and layer x head heatmaps of the IOI toy."""

from __future__ import annotations

from pathlib import Path

import pytest
from doc_pages import blocks as doc_blocks
from doc_pages import run_python_blocks

from circuitry.cli import main

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "ioi-toy.md"


def blocks(kind: str) -> list[str]:
    return doc_blocks(DOC, kind)


pytestmark = pytest.mark.usefixtures("two_threads")


def test_the_tour_runs(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    run_python_blocks(DOC, "ioi_tour")
    out = capsys.readouterr().out
    assert "prediction: Mary" in out and "L0H0 at S2" in out and "faithful" in out


def test_the_commands_it_shows(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(REPO)
    lines = [line for block in blocks("console") for line in block.splitlines()]
    commands = [line.split() for line in lines if line.startswith("circuitry ")]
    assert len(commands) == 2
    for argv in commands:
        argv = [str(tmp_path / a) if a.endswith(".html") else a for a in argv[1:]]
        assert main(argv) == 0, argv
    out = capsys.readouterr().out
    assert "L0 H0 S2" in out  # the top head x position patch


def test_patch_draws_both_kinds_of_heatmap(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(REPO)
    html = tmp_path / "r.html"
    assert main(["patch", "builtin:ioi-toy", "--task", "specs/tasks/ioi.yaml", "--html", str(html), "--json"]) == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    grids = {g["what"]: g for g in doc["results"]}
    assert grids["resid_pre"]["dims"] == ["layer", "pos"] and grids["heads"]["dims"] == ["layer", "head"]
    page = html.read_text()
    for what in ("resid_pre", "attn_out", "heads"):  # one heatmap (a table of coloured cells) per grid
        assert f'data-grid="patch-{what}"' in page
    assert page.count("<figure") == 3 and page.count("<table") == 3
    assert grids["resid_pre"]["labels"][1][10] == "S2" and grids["resid_pre"]["labels"][1][-1] == "END"


@pytest.mark.slow
def test_discover_finds_the_heads_the_spec_names(monkeypatch, tmp_path, capsys):
    """`circuitry discover` on the IOI task keeps the duplicate-token head and both suppression heads, and
    the spec it writes verifies."""
    monkeypatch.chdir(REPO)
    out = tmp_path / "found.yaml"
    assert main(["discover", "builtin:ioi-toy", "--task", "specs/tasks/ioi.yaml", "--out", str(out), "--json"]) == 0
    capsys.readouterr()
    from circuitry.spec.format import load_spec

    found = load_spec(out)
    assert {"L0H0", "L3H1", "L3H3"} <= set(found.nodes)
    shipped = load_spec(REPO / "specs" / "ioi-toy.yaml")
    assert set(found.nodes) == set(shipped.nodes)  # the spec declares the heads discover keeps
    assert main(["verify", str(out)]) == 0
