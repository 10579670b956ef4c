"""docs/tasks.md runs: every python block, in order, in one namespace; its YAML blocks are valid."""

from __future__ import annotations

from pathlib import Path

import yaml
from doc_pages import blocks as doc_blocks
from doc_pages import run_python_blocks

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "tasks.md"


def blocks(kind: str) -> list[str]:
    return doc_blocks(DOC, kind)


def test_tasks_tour_runs(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    run_python_blocks(DOC, "tasks_tour")
    out = capsys.readouterr().out
    assert "logit difference: clean" in out and "L1H3" in out


def test_the_task_file_example_is_a_valid_task(tmp_path):
    from circuitry.tasks.format import load_task

    task_yaml = next(b for b in blocks("yaml") if "kind: Task" in b)
    task = load_task(text=task_yaml)
    assert task.source == "template" and task.body["n"] == 64
    assert yaml.safe_load(next(b for b in blocks("yaml") if "checks:" in b))["checks"][2]["at"] == "B2"
