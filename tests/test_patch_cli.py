"""`circuitry patch`: the contrastive induction task localises the induction heads of both shipped models at
the second-half positions; heatmaps in HTML; strict JSON; bad input is exit 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from circuitry.cli import main

REPO = Path(__file__).resolve().parents[1]
TASK = str(REPO / "specs/tasks/induction.yaml")


def induction_heads(spec: str) -> set[str]:
    nodes = yaml.safe_load((REPO / "specs" / spec).read_text())["circuit"]["nodes"]
    return {n for n, role in nodes.items() if role == "induction"}


def patch_json(capsys, *argv: str) -> dict:
    assert main(["patch", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))


def ranked_heads(result: dict) -> list[str]:
    layers, heads = result["labels"]
    cells = [(f"{layers[l]}{heads[h]}", v) for l, row in enumerate(result["normalised"]) for h, v in enumerate(row)]
    return [name for name, _ in sorted(cells, key=lambda c: -c[1])]


@pytest.mark.parametrize("model, spec", [
    ("builtin:attn-only-2l", "induction.yaml"),
    pytest.param("builtin:neox-induction", "induction-gpt2.yaml", marks=pytest.mark.skipif(
        __import__("importlib").util.find_spec("transformers") is None, reason="needs transformers")),
])
def test_contrastive_induction_localises_the_induction_heads(capsys, model, spec):
    """Denoising each head (its clean output into the run on BOS r s): the heads that restore the most of the
    logit difference are exactly the induction heads of the model's spec."""
    doc = patch_json(capsys, model, "--task", TASK, "--what", "heads", "--denoise")
    (heads,) = doc["results"]
    expected = induction_heads(spec)
    assert set(ranked_heads(heads)[: len(expected)]) == expected
    assert doc["direction"] == "denoising" and heads["clean"] > heads["corrupted"] + 3


def test_the_effect_lies_at_the_second_half_positions(capsys):
    doc = patch_json(capsys, "builtin:attn-only-2l", "--task", TASK, "--what", "heads", "--denoise",
                     "--per-position")
    (heads,) = doc["results"]
    layers, names, positions = heads["labels"]
    assert heads["dims"] == ["layer", "head", "pos"]
    first = [i for i, p in enumerate(positions) if p.startswith("B1") or p == "0"]
    values = heads["normalised"]
    for l in range(len(layers)):
        for h in range(len(names)):
            assert all(values[l][h][i] == 0.0 for i in first)  # the prompts agree there: nothing to patch
    best = max(sum(v for v in values[1][h] if v is not None and math.isfinite(v)) for h in range(len(names)))
    assert best > 0.2


def test_layer_position_heatmaps_in_html(tmp_path, capsys):
    page = tmp_path / "r.html"
    assert main(["patch", "builtin:attn-only-2l", "--task", TASK, "--html", str(page)]) == 0
    html = page.read_text()
    assert 'data-kind="patching"' in html and 'data-grid="patch-resid_pre"' in html
    assert 'data-grid="patch-heads"' in html and 'data-grid="patch-attn_out"' in html
    assert "mlp_out" not in html  # attention-only: no MLP kinds by default


@pytest.mark.parametrize("argv, fragment", [
    (["--what", "headz"], "unknown kind 'headz' (did you mean 'heads'?)"),
    (["--what", "mlp_out"], "attention-only"),
    (["--metric", "nope"], "unknown metric 'nope'"),
    (["--top", "0"], "--top must be >= 1"),
])
def test_bad_input_is_exit_2(capsys, argv, fragment):
    assert main(["patch", "builtin:attn-only-2l", "--task", TASK, *argv]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_a_missing_task_file_is_exit_2(tmp_path, capsys):
    assert main(["patch", "builtin:attn-only-2l", "--task", str(tmp_path / "nope.yaml")]) == 2
    assert "no such task file" in capsys.readouterr().err
