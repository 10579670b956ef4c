"""`circuitry scan`: the table, the JSON document, and that both agree with the Python API."""

from __future__ import annotations

import json

import torch

from circuitry.cli import main
from circuitry.data import repeated_tokens
from circuitry.scan import scan


def test_scan_json_document(capsys, shipped):
    assert main(["scan", "builtin:attn-only-2l", "--json", "--data", "repeated:seed=4,batch=16"]) == 0
    out = capsys.readouterr().out
    doc = json.loads(out)  # exactly one JSON document
    assert doc["model"] == "builtin:attn-only-2l"
    assert [h["head"] for h in doc["heads"]] == [f"L{l}H{h}" for l in range(2) for h in range(4)]
    assert set(doc["heads"][0]) == {"head", "previous_token", "duplicate_token", "induction", "copying"}
    assert set(doc["composition"]) == {"Q", "K", "V"}
    assert len(doc["composition"]["K"]) == 16  # 4 x 4 pairs across the two layers
    edge = doc["composition"]["K"][0]
    assert set(edge) == {"from", "to", "score", "baseline"}
    assert edge["score"] == max(e["score"] for e in doc["composition"]["K"])
    ref = scan(shipped, repeated_tokens(65, 64, batch=16, seq_len=10, seed=4))
    for row in doc["heads"]:
        l, h = (int(x) for x in row["head"][1:].split("H"))
        assert abs(row["induction"] - float(ref.heads["induction"][l, h])) < 1e-6


def test_scan_table(capsys):
    assert main(["scan", "builtin:attn-only-2l", "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "previous_token" in out and "L1H3" in out and "strongest composition edges" in out
    assert "L0H0" in out


def test_scan_token_file(tmp_path, capsys, shipped):
    batch = repeated_tokens(65, 64, batch=3, seq_len=8, seed=9)
    path = tmp_path / "tokens.txt"
    path.write_text("\n".join(" ".join(map(str, row)) for row in batch.tokens.tolist()) + "\n")
    assert main(["scan", "builtin:attn-only-2l", "--data", str(path), "--json", "--detectors", "previous_token"]) == 0
    doc = json.loads(capsys.readouterr().out)
    with torch.no_grad():
        _, cache = shipped.run_with_cache(batch.tokens)
    ref = cache["pattern", 0][:, 0].diagonal(-1, -2, -1).mean()
    assert abs(doc["heads"][0]["previous_token"] - float(ref)) < 1e-6
    path.write_text("1 2 x\n")
    assert main(["scan", "builtin:attn-only-2l", "--data", str(path)]) == 2
    assert "tokens.txt:1: token ids must be" in capsys.readouterr().err
