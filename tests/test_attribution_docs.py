"""docs/attribution.md runs: every python block, in order, in one namespace; the commands it shows work, and
the spec `discover --method eap-ig` writes verifies."""

from __future__ import annotations

from pathlib import Path

import pytest
from doc_pages import blocks as doc_blocks
from doc_pages import run_python_blocks

from circuitry.cli import main

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "attribution.md"


def blocks(kind: str) -> list[str]:
    return doc_blocks(DOC, kind)


pytestmark = pytest.mark.usefixtures("two_threads")


@pytest.mark.slow
def test_the_page_runs(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    run_python_blocks(DOC, "attribution_docs")
    out = capsys.readouterr().out
    assert "L0H0 -> L1H3 (K)" in out and "CPR" in out


@pytest.mark.slow
def test_the_commands_it_shows(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(REPO)
    lines = [line for block in blocks("console") for line in block.splitlines()]
    commands = [line.split() for line in lines if line.startswith("circuitry ")]
    assert len(commands) == 2
    for argv in commands:
        argv = [str(tmp_path / a) if a.endswith(".yaml") and not a.startswith("specs/") else a for a in argv[1:]]
        assert main(argv) == 0, argv
    capsys.readouterr()
    spec = tmp_path / "found.yaml"
    text = spec.read_text()
    assert "attribution: {method: eap-ig, steps: 5" in text and "# attribution +" in text
    assert main(["verify", str(spec), "--json"]) == 0
