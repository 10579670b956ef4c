"""`circuitry discover`: the circuit found in the shipped model, the spec it writes, tasks, errors.

Numbers are checked against independent computations: the fraction of the loss
recovered is recomputed with plain hooks on hook_z and a hand-written loss;
the written spec is checked by `circuitry verify` on the shipped model (pass)
and on a randomly initialised one (fail).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import circuitry.cli
from circuitry.cli import main
from circuitry.data import repeated_tokens
from circuitry.discovery import bound, discover, prune_greedy, ratio_bound, resolve_task, task_data
from circuitry.errors import UsageError
from circuitry.model import HookedTransformer, save_model
from circuitry.plugins import get_manager
from circuitry.records import Task
from circuitry.spec import load_spec

SPEC = "specs/induction.yaml"


@pytest.fixture
def cli(monkeypatch):
    monkeypatch.setitem(circuitry.cli.COMMANDS, "discover", "circuitry.cli.discover")
    monkeypatch.setitem(circuitry.cli.COMMANDS, "track", "circuitry.cli.track")
    return main


@pytest.fixture(scope="module")
def found():
    from circuitry.sources import load_model

    return discover(load_model("builtin:attn-only-2l"), "induction", model_ref="builtin:attn-only-2l")


def loss_with_mean_ablation(model, tokens, ref_tokens, ablate: list[str]) -> float:
    """Loss on the second copy of BOS + r + r (10 tokens) with heads' z replaced by the reference mean."""
    by_layer: dict[int, list[int]] = {}
    for name in ablate:
        l, h = (int(x) for x in name[1:].split("H"))
        by_layer.setdefault(l, []).append(h)
    with torch.no_grad():
        _, ref_cache = model.run_with_cache(ref_tokens)
        hooks = []
        for l, heads in by_layer.items():
            mean = ref_cache[f"blocks.{l}.attn.hook_z"].mean(0)  # [pos, head, d_head]

            def hook(z, hp, heads=heads, mean=mean):
                z = z.clone()
                z[:, :, heads] = mean[:, heads]
                return z

            hooks.append((f"blocks.{l}.attn.hook_z", hook))
        logits = model.run_with_hooks(tokens, hooks)
    # positions 11..19 predict tokens 12..20: the repeats whose next token is in context
    return float(F.cross_entropy(logits[:, 11:20].reshape(-1, logits.shape[-1]), tokens[:, 12:21].reshape(-1)))


def test_finds_the_circuit_of_the_hand_written_spec(found):
    spec = load_spec(SPEC)
    assert {n.name: n.role for n in found.nodes} == spec.nodes
    assert {e.name for e in found.edges} == {str(e) for e in spec.edges}
    assert all(e.kind == "K" for e in found.edges)
    assert found.target == 0.8 and found.recovered_nodes >= 0.8 and found.recovered >= 0.8


def test_recovered_fraction_matches_plain_hooks(found, shipped):
    b = repeated_tokens(65, 64, batch=64, seq_len=10, n_repeats=2, seed=1).tokens
    r = repeated_tokens(65, 64, batch=64, seq_len=10, n_repeats=2, seed=2).tokens
    every = [f"L{l}H{h}" for l in range(2) for h in range(4)]
    outside = [h for h in every if h not in {n.name for n in found.nodes}]
    clean = loss_with_mean_ablation(shipped, b, r, [])
    ablated = loss_with_mean_ablation(shipped, b, r, every)
    circuit = loss_with_mean_ablation(shipped, b, r, outside)
    assert abs(found.metric_clean - clean) < 1e-4
    assert abs(found.metric_ablated - ablated) < 1e-4
    assert abs(found.recovered_nodes - (ablated - circuit) / (ablated - clean)) < 1e-4
    assert 0.84 < found.recovered_nodes < 0.85  # measured 0.843


def test_spec_passes_on_the_model_and_fails_on_a_random_one(cli, tmp_path, capsys, shipped):
    out = tmp_path / "found.yaml"
    assert cli(["discover", "builtin:attn-only-2l", "--out", str(out)]) == 0
    text = out.read_text()
    assert "margin m = 0.2" in text and "v - m|v|" in text
    spec = load_spec(out)
    assert spec.nodes == load_spec(SPEC).nodes
    kinds = {c.kind for c in spec.checks}
    assert kinds == {"detector", "composition", "intervention", "faithfulness"}
    ablate = next(c for c in spec.checks if c.id == "ablate-previous-token-heads")
    assert ablate.options["target"] == ["L0H0", "L0H2"] and ablate.options["intervention"] == "zero"
    capsys.readouterr()
    assert cli(["verify", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and len(report["checks"]) == len(spec.checks)
    # thresholds follow the margin rule from the measured values
    prev = next(c for c in report["checks"] if c["id"] == "previous-token-heads")
    assert prev["expect"] == bound(prev["value"], 0.2)
    random_dir = tmp_path / "random"
    save_model(HookedTransformer(shipped.cfg, seed=123), random_dir)
    assert cli(["verify", str(out), "--model", str(random_dir), "--json"]) == 1
    failed = {c["id"] for c in json.loads(capsys.readouterr().out)["checks"] if not c["passed"]}
    assert {"previous-token-heads", "induction-heads", "k-composition", "ablate-previous-token-heads"} <= failed


def test_json_document(cli, capsys):
    assert cli(["discover", "builtin:attn-only-2l", "--json", "--margin", "0.3"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [n["node"] for n in doc["nodes"]] == ["L0H0", "L0H2", "L1H0", "L1H1", "L1H3"]
    assert doc["margin"] == 0.3 and doc["spec"] is None
    k = next(c for c in doc["checks"] if c["id"] == "k-composition")
    assert k["expect"] == ratio_bound(k["value"], 0.3)
    assert doc["forward_passes"]["pruning"] < doc["interventions"]
    assert [r["stage"] for r in doc["rounds"]] == ["nodes", "nodes", "edges", "edges"]
    assert doc["rounds"][0]["removed"] == ["L0H1", "L1H2", "L0H3"]


def test_batched_and_naive_sweeps_agree(found, shipped):
    naive = discover(shipped, "induction", method="naive")
    assert [n.name for n in naive.nodes] == [n.name for n in found.nodes]
    assert [e.name for e in naive.edges] == [e.name for e in found.edges]
    assert abs(naive.recovered - found.recovered) < 1e-4
    assert naive.prune_passes == naive.interventions == found.interventions
    assert found.prune_passes * 5 <= naive.prune_passes


def test_unknown_task_is_a_usage_error(cli, capsys):
    assert cli(["discover", "no-such-model", "--task", "inductoin"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'inductoin'" in err and "did you mean 'induction'" in err and "Traceback" not in err


def test_bad_options(cli, capsys):
    assert cli(["discover", "builtin:attn-only-2l", "--margin", "1.5"]) == 2
    assert "--margin must lie in [0, 1)" in capsys.readouterr().err
    assert cli(["discover", "builtin:attn-only-2l", "--data", "repeated:colour=red"]) == 2
    assert "has no parameter 'colour'" in capsys.readouterr().err


def test_a_model_without_the_behaviour_has_no_circuit(shipped):
    # every head's weights zero: ablating the heads cannot change the loss
    model = HookedTransformer(shipped.cfg, seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("blocks."):
                p.zero_()
    with pytest.raises(UsageError, match="leaves the task metric 'loss' unchanged"):
        discover(model)


def test_tasks_are_plugins(circuitry_plugin):
    assert resolve_task("induction").metric == "loss"

    class Mine:
        from circuitry import hookimpl

        @hookimpl
        def circuitry_tasks(self):
            return [Task("long-induction", "longer repeats", "repeated", "logit_diff", {"seq_len": 15})]

    circuitry_plugin(Mine(), "mine")
    task = resolve_task("long-induction")
    data, ref = task_data(task, None, get_manager())
    assert data == {"name": "repeated", "batch": 32, "seq_len": 15, "n_repeats": 2, "seed": 0}
    assert ref == {**data, "seed": 1}
    with pytest.raises(UsageError, match="did you mean 'long-induction'"):
        resolve_task("long-inductio")


def test_data_override_keeps_the_task_settings():
    data, ref = task_data(resolve_task("induction"), "repeated:seed=5,seq_len=12", get_manager())
    assert data == {"name": "repeated", "batch": 64, "seq_len": 12, "n_repeats": 2, "seed": 5}
    assert ref["seed"] == 6
    data, _ = task_data(resolve_task("induction"), "periodic:period=12", get_manager())
    assert data == {"name": "periodic", "batch": 32, "n_ctx": 0, "period": 12, "seed": 0}


def test_greedy_pruning_on_known_effects():
    # additive effects as fractions of the task effect, plus a pair (c, d) that only hurts together
    cost = {"a": 0.01, "b": 0.04, "c": 0.05, "d": 0.05, "e": 0.3, "f": 0.5}
    calls = []

    def evaluate(sets):
        calls.append(len(sets))
        out = []
        for s in sets:
            lost = sum(cost[x] for x in s) + (0.2 if {"c", "d"} <= set(s) else 0.0)
            out.append(1.0 - lost)
        return out

    res = prune_greedy(list(cost), evaluate, 0.8)
    # round 1: eligible a, b, c, d (each alone >= 0.8); prefixes: a+b 0.95, a+b+c 0.90, a+b+c+d 0.65
    assert res.removed == ("a", "b", "c") and res.kept == ("d", "e", "f")
    assert abs(res.recovered - 0.90) < 1e-9
    # round 2: d alone now costs 0.25 -> 0.65; nothing else fits
    assert abs(res.effects["d"] - 0.25) < 1e-9 and abs(res.effects["f"] - 0.5) < 1e-9
    assert calls == [6, 3, 3]  # singles, prefixes, singles
    assert [r.removed for r in res.rounds] == [("a", "b", "c"), ()]


def test_margin_rule():
    assert bound(0.9417, 0.2) == ">= 0.753"
    assert bound(-2.0, 0.2) == "<= -1.600"
    assert bound(0.5, 0.0) == ">= 0.500"
    assert ratio_bound(1.62, 0.2) == ">= 1.496"


@pytest.mark.slow
def test_three_layer_model_circuit_recovers_80_percent(cli, tmp_path, capsys):
    from circuitry.model.io import load_model_file
    from circuitry.train import TrainRecipe, train

    run = tmp_path / "run"
    train(TrainRecipe(n_layers=3, steps=1500), out=run)  # `circuitry train --layers 3`
    out = tmp_path / "found.yaml"
    assert cli(["discover", str(run), "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    # measured (seed 0): nodes L0H1, L1H1, L1H2, L1H3, L2H0, L2H2, L2H3 recover 0.820; with their
    # 21 kept edges 0.804
    assert doc["recovered_nodes"] >= 0.8 and doc["recovered"] >= 0.8
    roles = {n["node"]: n["role"] for n in doc["nodes"]}
    prev = [n for n, r in roles.items() if r == "previous_token"]
    ind = [n for n, r in roles.items() if r == "induction"]
    assert prev and ind
    k_edges = {(e["from"], e["to"]) for e in doc["edges"] if e["kind"] == "K"}
    assert {(p, i) for p in prev for i in ind} <= k_edges
    model = load_model_file(run)
    b = repeated_tokens(65, 64, batch=64, seq_len=10, n_repeats=2, seed=1).tokens
    r = repeated_tokens(65, 64, batch=64, seq_len=10, n_repeats=2, seed=2).tokens
    every = [f"L{l}H{h}" for l in range(3) for h in range(4)]
    clean = loss_with_mean_ablation(model, b, r, [])
    ablated = loss_with_mean_ablation(model, b, r, every)
    circuit = loss_with_mean_ablation(model, b, r, [h for h in every if h not in roles])
    assert abs(doc["recovered_nodes"] - (ablated - circuit) / (ablated - clean)) < 1e-4
    assert cli(["verify", str(out)]) == 0
