"""Strict JSON: every `--json` document parses without NaN/Infinity on a model with all-zero heads,
is the same on a second run apart from timings, and the zero heads do not hide the real top edge.

The model is the shipped `builtin:attn-only-2l` with head 1 of each layer zeroed (W_Q, W_K, W_V, W_O),
as tracr pads layers and pruning leaves them; every pair with a zeroed head used to score 0/0 = NaN.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import circuitry.cli
from circuitry.cli import main
from circuitry.jsonable import (
    JSONValueError,
    finite_or_none,
    finite_tree,
    nonfinite_paths,
    strict_dumps,
)
from circuitry.model import save_model
from circuitry.scan import strongest_first
from circuitry.sources import load_model

ZEROED = (1,)  # head 1 of every layer
# keys that hold wall-clock timings (seconds) in any --json document; everything else must repeat exactly
TIMING_KEYS = frozenset({"seconds"})

SPEC = """\
apiVersion: circuitry/v1
kind: CircuitSpec
metadata:
  name: zeroed-heads
model: zeroed
data: {name: repeated, seq_len: 10, n_repeats: 2, batch: 16, seed: 1}
circuit:
  nodes: {L0H0: previous_token, L0H1: zeroed, L0H2: previous_token, L1H0: induction, L1H1: zeroed,
          L1H3: induction}
  edges: [L0H0 -> L1H3 (K), L0H1 -> L1H3 (K), L0H0 -> L1H1 (K)]
checks:
  - {id: prev, kind: detector, detector: previous_token, nodes: [L0H0], expect: ">= 0.9"}
  - {id: copying-zero, kind: detector, detector: copying, role: zeroed, expect: "== 0 +- 0.001"}
  - {id: k-comp, kind: composition, expect: {ratio_to_baseline: ">= 0"}}
  - {id: zero-comp, kind: composition, edges: [L0H1 -> L1H3 (K), L0H0 -> L1H1 (Q), L0H1 -> L1H1 (V)],
     expect: "== 0 +- 0.001"}
  - {id: ablate-zero, kind: intervention, intervention: zero, target: L0H1, metric: loss,
     expect: {relative_change: "== 0 +- 0.001"}}
  - {id: faithful, kind: faithfulness, metric: loss, expect: ">= 0.5"}
  - {id: zero-share, kind: decomposition, path: L1H1, expect: "== 0 +- 0.001"}
"""


def _no_constant(name: str):
    raise ValueError(f"not strict JSON: {name}")


def strict_loads(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity."""
    return json.loads(text, parse_constant=_no_constant)


def without_timings(doc, removed: list | None = None):
    """doc with every TIMING_KEYS entry removed, at any depth (the removed values appended to `removed`)."""
    if isinstance(doc, dict):
        if removed is not None:
            removed += [v for k, v in doc.items() if k in TIMING_KEYS]
        return {k: without_timings(v, removed) for k, v in doc.items() if k not in TIMING_KEYS}
    if isinstance(doc, list):
        return [without_timings(v, removed) for v in doc]
    return doc


def _is_timing(value) -> bool:
    """A number of seconds, or a dict of them."""
    if isinstance(value, dict):
        return all(_is_timing(v) for v in value.values())
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def zeroed_model():
    """builtin:attn-only-2l with every weight (and bias) of head 1 of each layer set to zero."""
    model = load_model("builtin:attn-only-2l")
    with torch.no_grad():
        for block in model.blocks:
            for _, p in block.attn.named_parameters():
                for h in ZEROED:
                    p[h].zero_()
    return model


@pytest.fixture(scope="module")
def zeroed_dir(tmp_path_factory):
    """A directory: zeroed/ (the model), spec.yaml naming it, checkpoints/step-00000{0,1}.safetensors."""
    root = tmp_path_factory.mktemp("zeroed")
    model = zeroed_model()
    save_model(model, root / "zeroed")
    for step in (0, 1):
        save_model(model, root / "checkpoints" / f"step-{step:06d}.safetensors", {"step": str(step)})
    (root / "spec.yaml").write_text(SPEC)
    return root


@pytest.fixture
def cli(monkeypatch):
    for name in ("discover", "track"):
        monkeypatch.setitem(circuitry.cli.COMMANDS, name, f"circuitry.cli.{name}")
    return main


def _commands(root):
    model = str(root / "zeroed")
    return {
        "info": ["info", model],
        "plugins": ["plugins"],
        "scan": ["scan", model, "--data", "repeated:batch=16,seed=3"],
        "paths": ["paths", model, "--data", "repeated:batch=8", "--top", "20"],
        "verify": ["verify", str(root / "spec.yaml")],
        "discover": ["discover", model, "--data", "repeated:batch=16"],
        "track": ["track", str(root / "checkpoints")],
    }


@pytest.mark.parametrize("command", ["info", "plugins", "scan", "paths", "verify", "discover", "track"])
def test_json_is_strict_and_repeats(command, zeroed_dir, cli, capsys):
    argv = _commands(zeroed_dir)[command] + ["--json"]
    docs = []
    for _ in range(2):
        assert cli(argv) == 0
        out = capsys.readouterr().out
        docs.append(strict_loads(out))
    removed: list = []
    assert without_timings(docs[0], removed) == without_timings(docs[1])
    assert all(_is_timing(v) for v in removed), removed  # what is left out holds timings only
    if command in ("verify", "discover"):
        assert removed  # they report timings, and those are what the comparison leaves out


def _full_k_comp(model, l1, h1, l2, h2):
    """K-composition from the d_model x d_model products (no normalisation in this model)."""
    W_OV = (model.W_V[l1, h1] @ model.W_O[l1, h1]).detach().double()
    W_QK = (model.W_Q[l2, h2] @ model.W_K[l2, h2].T).detach().double()
    return float((W_OV @ W_QK.T).norm() / (W_OV.norm() * W_QK.norm()))


def test_zero_head_scores_zero_and_real_top_edge_first(zeroed_dir, cli, capsys):
    model = zeroed_model()
    assert cli(["scan", str(zeroed_dir / "zeroed"), "--json", "--detectors", "composition"]) == 0
    rows = strict_loads(capsys.readouterr().out)["composition"]["K"]
    H = model.cfg.n_heads
    ref = {}
    for h1 in range(H):
        for h2 in range(H):
            if h1 in ZEROED or h2 in ZEROED:
                continue
            ref[(f"L0H{h1}", f"L1H{h2}")] = _full_k_comp(model, 0, h1, 1, h2)
    got = {(r["from"], r["to"]): r["score"] for r in rows}
    zero = {k: v for k, v in got.items() if k not in ref}
    assert len(zero) == H * H - len(ref) and all(v == 0.0 for v in zero.values())
    for k, v in ref.items():
        assert abs(got[k] - v) < 1e-5
    top = max(ref, key=ref.get)
    assert (rows[0]["from"], rows[0]["to"]) == top
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)


def test_strongest_first_puts_nan_last():
    rows = [{"score": s, "i": i} for i, s in enumerate([0.2, math.nan, 0.5, -math.inf, 0.5, math.nan, 1.0])]
    order = [r["i"] for r in strongest_first(rows)]
    assert order == [6, 2, 4, 0, 3, 1, 5]


def test_finite_helpers():
    assert finite_or_none(math.nan) is None and finite_or_none(-math.inf) is None
    assert finite_or_none(None) is None and finite_or_none(3) == 3 and finite_or_none(True) is True
    assert finite_or_none(torch.tensor(0.25)) == 0.25 and finite_or_none(torch.tensor(math.inf)) is None
    doc = {"a": [1.0, math.nan, {"b": (math.inf, 2)}], "c": "x"}
    assert nonfinite_paths(doc) == ["$.a[1]", "$.a[2].b[0]"]
    assert finite_tree(doc) == {"a": [1.0, None, {"b": [None, 2]}], "c": "x"}
    assert strict_loads(strict_dumps(finite_tree(doc))) == finite_tree(doc)


@pytest.mark.parametrize("doc, path", [
    ({"checks": [{"value": 1.0}, {"details": {"relative_change": math.nan}}]}, "$.checks[1].details.relative_change"),
    ({"pairs:x": {"K": [{"score": -math.inf}]}}, '$["pairs:x"].K[0].score'),
    ({"t": torch.zeros(2)}, "$.t"),
])
def test_strict_dumps_names_the_key_path(doc, path):
    with pytest.raises(JSONValueError) as err:
        strict_dumps(doc)
    assert f"at {path}," in str(err.value)
    assert err.value.exit_code == 3


def test_output_json_refuses_nan_and_writes_nothing(capsys):
    from circuitry.cli.output import Output

    with pytest.raises(JSONValueError, match=r"\$\.a\[0\]"):
        Output(json_mode=True).json({"a": [math.nan]})
    assert capsys.readouterr().out == ""


def test_graph_json_is_strict():
    """A NaN or infinite attribute is written as null and read back as None."""
    from circuitry.graph import ResidualGraph

    model = zeroed_model()
    graph = ResidualGraph(model, scores={"s": torch.full((2, 4), math.nan)})
    graph.edges["L0H0", "L1H1", "K"]["composition"] = math.inf
    doc = strict_loads(graph.to_json())
    assert all(n["s"] is None for n in doc["nodes"] if n.get("kind") == "head")
    again = ResidualGraph.from_json(graph.to_json())
    assert again.edges["L0H0", "L1H1", "K"]["composition"] is None


def test_train_files_are_strict(tmp_path):
    from circuitry.train import TrainRecipe, train

    train(TrainRecipe(steps=2, checkpoint_every=1), out=tmp_path / "run")
    record = strict_loads((tmp_path / "run" / "train.json").read_text())
    curve = strict_loads((tmp_path / "run" / "loss.json").read_text())
    assert curve["step"] == [1, 2] and len(curve["loss"]) == 2 and record["final_loss"] == curve["loss"][-1]
