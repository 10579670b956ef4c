"""`circuitry attribute` and `discover --method eap-ig`: strict JSON whose scores equal the Python API's, the
graph export, the plugin task paired with its reference data, and bad input as exit 2 with the reason."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from circuitry.attribution import attribute
from circuitry.cli import main
from circuitry.graph import ResidualGraph
from circuitry.sources import load_model
from circuitry.tasks.build import build_batch
from circuitry.tasks.format import load_task

REPO = Path(__file__).resolve().parent.parent
TASK = str(REPO / "specs" / "tasks" / "induction.yaml")


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_json_scores_are_the_apis(capsys):
    assert main(["attribute", "builtin:attn-only-2l", "--task", TASK, "--method", "eap", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    model = load_model("builtin:attn-only-2l")
    res = attribute(model, build_batch(load_task(TASK), model), "logit_diff", "eap")
    assert len(doc["edges"]) == 106 and doc["method"] == "eap" and doc["steps"] is None
    for edge, score in res.edge_dict().items():
        assert doc["edges"][edge] == pytest.approx(score, abs=1e-9)
    assert doc["metric_clean"] > doc["metric_corrupted"] + 3


def test_the_graph_carries_the_scores(tmp_path, capsys):
    out = tmp_path / "g.json"
    assert main(["attribute", "builtin:attn-only-2l", "--task", TASK, "--method", "eap", "--graph", str(out),
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    graph = ResidualGraph.read_json(out)
    assert graph.edges["L1H3", "logits", "direct"]["attribution_eap"] == pytest.approx(
        doc["edges"]["L1H3 -> logits (direct)"])
    assert graph.nodes["L1H3"]["attribution_eap"] == pytest.approx(doc["nodes"]["L1H3"])


def test_a_task_plugin_is_paired_with_its_reference_data(capsys):
    assert main(["attribute", "builtin:attn-only-2l", "--task", "induction", "--method", "eap", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["metric"] == "loss" and "against" in doc["data"]
    best = max(doc["nodes"], key=lambda n: doc["nodes"][n] if n.startswith("L1") else -math.inf)
    assert best in ("L1H0", "L1H1", "L1H3")  # an induction head of specs/induction.yaml helps most


def test_positions_restrict_the_patch(capsys):
    assert main(["attribute", "builtin:attn-only-2l", "--task", TASK, "--method", "eap", "--at", "B1",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert all(v == 0 for v in doc["edges"].values())  # the first block is the same in both prompts


@pytest.mark.parametrize("argv, fragment", [
    (["--method", "eapig"], "invalid choice: 'eapig'"),
    (["--method", "eap", "--steps", "3"], "--steps must be >= 1 and applies to eap-ig and eap-ig-act"),
    (["--level", "nodes"], "--level nodes is for --method exact"),
    (["--metric", "accuracy", "--method", "eap"], "metric 'accuracy' has no gradient"),
    (["--at", "S9"], "S9"),
    (["--top", "0"], "--top must be >= 1"),
])
def test_bad_input_is_exit_2(capsys, argv, fragment):
    with pytest.raises(SystemExit) if "invalid choice" in fragment else _nothing():
        code = main(["attribute", "builtin:attn-only-2l", "--task", TASK, *argv])
        assert code == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_discover_options_of_attribution_only(tmp_path, capsys):
    assert main(["discover", "builtin:attn-only-2l", "--task", TASK, "--steps", "3"]) == 2
    assert "--steps applies to --method eap, eap-ig or eap-ig-act, not prune" in capsys.readouterr().err


def test_discover_by_eap_ig_writes_a_spec_that_verifies(tmp_path, capsys):
    spec = tmp_path / "found.yaml"
    assert main(["discover", "builtin:attn-only-2l", "--task", TASK, "--method", "eap-ig", "--out", str(spec),
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    how = doc["attribution"]
    assert how["method"] == "eap-ig" and how["edges_in_graph"] == 106
    points = how["curve"]["points"]
    assert [p["percent"] for p in points] == [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100]
    assert abs(points[-1]["faithfulness"] - 1) < 1e-5 and 0 <= how["curve"]["cmd"] <= 1
    assert doc["recovered"] >= 0.8 and len(doc["edges"]) == len(how["scores"]) <= 23  # prune keeps 23
    assert main(["verify", str(spec)]) == 0


def test_html_draws_the_scores(tmp_path, capsys):
    page = tmp_path / "a.html"
    assert main(["attribute", "builtin:attn-only-2l", "--task", TASK, "--method", "eap", "--per-position",
                 "--html", str(page), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    html = page.read_text()
    for grid in ("heads", "Q", "K", "V", "positions"):
        assert f'data-grid="attribution-eap-{grid}"' in html
    assert f"{doc['nodes']['L1H3']:.3g}" in html or "L1H3" in html
