"""`circuitry paths`: the table, exactly one JSON document, exit codes for bad input."""

from __future__ import annotations

import json
import math

import pytest

from circuitry import cli
from circuitry.data import repeated_tokens


@pytest.fixture
def main(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "paths", "circuitry.cli.paths")
    return cli.main


def test_json_document(main, capsys, shipped):
    assert main(["paths", "builtin:attn-only-2l", "--json", "--top", "4"]) == 0
    out = capsys.readouterr().out
    doc = json.loads(out)  # exactly one document
    assert doc["target"] == "logit of the correct next token"
    assert doc["n_terms"] == 27 and len(doc["top"]) == 4
    assert doc["shape"] == [16, 21] and doc["n_positions"] == 16 * 9
    assert doc["sum_max_abs_error"] < 1e-4
    # the top path goes through a layer-1 head that does induction on this very data
    batch = repeated_tokens(65, 64, batch=16, seq_len=10, n_repeats=2, seed=0)
    _, cache = shipped.run_with_cache(batch.tokens)
    induction = cache["pattern", 1].diagonal(offset=-9, dim1=-2, dim2=-1).mean((0, -1))
    top_heads = [c for c in doc["top"][0]["path"] if c.startswith("L1H")]
    assert top_heads and induction[int(top_heads[0][3:])] >= 0.5
    ladder = {s["name"]: s["loss"] for s in doc["loss_ladder"]}
    assert abs(ladder["direct"] - math.log(64)) < 0.5
    expected = shipped.loss(batch.tokens, per_token=True)[batch.predictable[:, :-1]].mean().item()
    assert abs(doc["model_loss"] - expected) < 1e-4
    assert abs(ladder["+ remainder (all)"] - expected) < 1e-4


def test_table_and_options(main, capsys):
    assert main(["paths", "builtin:attn-only-2l", "--top", "3", "--target", "5-6", "--data",
                 "periodic:period=8,batch=4,seed=2"]) == 0
    out = capsys.readouterr().out
    assert "logit difference 5 - 6" in out and "periodic repeats (4 x 64, period 8, seed 2)" in out
    assert "loss ladder (predictable positions)" in out and "+ virtual heads" in out
    assert out.count(" -> ") + sum(f"L{l}H{h}" in out for l in range(2) for h in range(4)) >= 3
    assert main(["paths", "builtin:attn-only-2l", "--json", "--target", "7", "--positions", "all",
                 "--by", "abs", "--top", "27"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["target"] == "logit of token 7" and len(doc["top"]) == 27
    means = [abs(s["mean"]) for s in doc["top"]]
    assert means == sorted(means, reverse=True)
    assert abs(sum(s["mean"] for s in doc["top"]) - doc["total_mean"]) < 1e-3


@pytest.mark.parametrize("argv, fragment", [
    (["--target", "99"], "not a token id of the model (0..64)"),
    (["--target", "banana"], "--target must be"),
    (["--data", "repeated:seq_len=40"], "longer than the model's context of 64"),
    (["--data", "repeated:batch=0"], "parameter 'batch' of dataset 'repeated' must be >= 1, got 0"),
    (["--data", "periodic:seq_len=8"], "dataset 'periodic' has no parameter 'seq_len'"),
    (["--top", "0"], "--top must be >= 1"),
])
def test_bad_input_exits_2(main, capsys, argv, fragment):
    assert main(["paths", "builtin:attn-only-2l", *argv]) == 2
    captured = capsys.readouterr()
    assert fragment in captured.err and "Traceback" not in captured.err
    assert captured.out == ""


def test_unknown_model_exits_2(main, capsys):
    assert main(["paths", "builtin:nope"]) == 2
    assert "unknown builtin model" in capsys.readouterr().err
