"""The shipped model builtin:attn-only-2l: its induction circuit, measured from attention
patterns and logits, and its model card (card.json, README.md) against fresh measurements."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from induction_checks import DATA, failures, k_composition, k_composition_weights, long_context, measure

import circuitry
from circuitry.data import repeated_tokens
from circuitry.model import HookedTransformer
from circuitry.train import TrainRecipe

HERE = Path(circuitry.__file__).parent / "builtin" / "attn-only-2l"
TOL = 0.01


@pytest.fixture(scope="module")
def card():
    return json.loads((HERE / "card.json").read_text())


@pytest.fixture(scope="module")
def train_record():
    return json.loads((HERE / "train.json").read_text())


@pytest.fixture(scope="module")
def scores(shipped):
    return measure(shipped, DATA["batch"], DATA["seq_len"], DATA["seed"])


def test_shipped_config(shipped):
    cfg = shipped.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_vocab, cfg.n_ctx) == (2, 4, 64, 16, 65, 64)
    assert cfg.bos_token_id == 64 and cfg.attn_only and cfg.normalization is None
    assert cfg.positional == "learned" and not cfg.attn_bias
    assert shipped.n_params() == 45_184
    assert shipped.source == "builtin:attn-only-2l"


def test_shipped_model_has_the_induction_circuit(scores):
    assert failures(scores) == [], scores.as_dict()
    assert scores.prev_token.shape == (2, 4) and scores.induction.shape == (2, 4)
    assert scores.n_random == 64


@pytest.mark.parametrize("seed", [0, 1])
def test_random_model_of_the_same_shape_does_not(shipped, seed):
    model = HookedTransformer(shipped.cfg, seed=seed).eval()
    s = measure(model, DATA["batch"], DATA["seq_len"], DATA["seed"])
    assert s.prev_token[0].max() < 0.5
    assert s.induction[1].max() < 0.5
    assert s.loss_repeat > 0.5
    assert len(failures(s)) >= 3


def test_position_masks_agree_with_the_data_generator():
    """The masks built from positions in induction_checks are TokenBatch's predictable / fresh."""
    L = DATA["seq_len"]
    data = repeated_tokens(65, 64, batch=4, seq_len=L, n_repeats=2, seed=DATA["seed"])
    pred = torch.zeros(2 * L + 1, dtype=torch.bool)
    pred[L + 1: 2 * L] = True
    fresh = torch.zeros(2 * L + 1, dtype=torch.bool)
    fresh[1:L] = True
    assert torch.equal(data.predictable, pred.expand(4, -1))
    assert torch.equal(data.fresh, fresh.expand(4, -1))


def test_previous_token_heads_give_out_after_position_23(shipped):
    lc = long_context(shipped)
    assert lc["prev_token_before_split"]["L0H0"] > 0.9
    assert lc["prev_token_from_split"]["L0H0"] < 0.2
    assert lc["loss_repeat_key_from_split"] > math.log(64) - 0.5


def test_induction_heads_k_compose_with_the_previous_token_heads(shipped, scores):
    """Without the previous-token heads' outputs in their key input the induction heads lose (almost)
    all their induction score; without them in the query input, or without the other layer-0 heads'
    outputs in the key input, they keep most of it."""
    prev = [h for h in range(4) if scores.prev_token[0, h] >= 0.9]
    others = [h for h in range(4) if h not in prev]
    ind = [h for h in range(4) if scores.induction[1, h] >= 0.5]
    assert prev and others and ind
    kc = k_composition(shipped, prev)
    control = k_composition(shipped, others)
    for h in ind:
        clean = float(scores.induction[1, h])
        assert kc["induction_without_in_k"][f"L1H{h}"] < 0.2 * clean, (h, clean, kc)
        assert kc["induction_without_in_q"][f"L1H{h}"] > 0.8 * clean, (h, clean, kc)
        assert control["induction_without_in_k"][f"L1H{h}"] > 0.8 * clean, (h, clean, control)


def test_k_composition_weights_single_out_the_previous_token_heads(shipped, scores):
    """The weight-based K-composition from each previous-token head into each induction head is far
    above random matrices (> baseline + 5 std), from the other layer-0 heads it is not (< + 3 std)."""
    w = k_composition_weights(shipped)
    base, std = w["baseline"], w["baseline_std"]
    assert abs(base - 1 / math.sqrt(64)) < 0.01  # random rank-16 matrices in d_model 64
    for a in range(4):
        for b in range(4):
            s = w["score"][f"L0H{a}"][f"L1H{b}"]
            if scores.prev_token[0, a] >= 0.9 and scores.induction[1, b] >= 0.5:
                assert s > base + 5 * std, (a, b, s, base, std)
            elif scores.prev_token[0, a] < 0.5:
                assert s < base + 3 * std, (a, b, s, base, std)


def test_k_composition_weights_agree_with_the_composition_detector(shipped):
    """induction_checks forms the d_model x d_model products; the detector plugin reduces them to
    d_head x d_head through QR factors. Same scores, same seeded baseline."""
    from circuitry_plugins.detectors.composition import composition_scores, random_baseline

    w = k_composition_weights(shipped)
    K = composition_scores(shipped)["K"]  # [layer, head, layer, head]
    for a in range(4):
        for b in range(4):
            assert abs(w["score"][f"L0H{a}"][f"L1H{b}"] - float(K[0, a, 1, b])) < 2e-4, (a, b)
    assert abs(w["baseline"] - random_baseline(64, 16)) < 2e-4


# ---------------------------------------------------------------- the model card
def test_card_agrees_with_train_json(card, train_record):
    assert card["command"] == train_record["command"] == \
        "circuitry train --steps 1500 --seed 0 --out circuitry/builtin/attn-only-2l"
    assert card["seed"] == train_record["recipe"]["seed"] == 0
    assert card["recipe"] == train_record["recipe"]
    # the shipped model was trained with the current default recipe; options added since (the architectural
    # perturbations) are absent from its record and off by default
    default = json.loads(json.dumps(dataclasses.asdict(TrainRecipe(steps=1500, seed=0))))
    added = set(default) - set(train_record["recipe"])
    assert added <= {"block_k_composition", "smeared_keys"} and not any(default[k] for k in added)
    assert train_record["recipe"] == {k: v for k, v in default.items() if k not in added}
    assert card["torch"] == train_record["torch"]
    assert card["training_seconds"] == train_record["seconds"]
    assert card["final_training_loss"] == pytest.approx(train_record["final_loss"], abs=1e-4)
    losses = json.loads((HERE / "loss.json").read_text())["loss"]
    assert len(losses) == train_record["recipe"]["steps"] and losses[-1] == train_record["final_loss"]
    config = json.loads((HERE / "config.json").read_text())
    for key in ("n_layers", "n_heads", "d_model", "d_head", "d_vocab", "n_ctx", "bos_token_id"):
        assert card["architecture"][key] == config[key], key


def _close(card_value, fresh_value, where: str) -> None:
    if isinstance(card_value, dict):
        assert card_value.keys() == fresh_value.keys(), where
        for k in card_value:
            _close(card_value[k], fresh_value[k], f"{where}.{k}")
    elif isinstance(card_value, (int, float)) and not isinstance(card_value, bool):
        assert abs(card_value - fresh_value) <= TOL, (where, card_value, fresh_value)
    else:
        assert card_value == fresh_value, where


def test_card_scores_agree_with_a_fresh_measurement(card, shipped):
    ev = card["evaluation"]
    data = ev["data"]
    assert data["generator"] == "repeated_tokens" and data["n_repeats"] == 2
    assert (data["d_vocab"], data["bos_token_id"]) == (shipped.cfg.d_vocab, shipped.cfg.bos_token_id)
    fresh = measure(shipped, data["batch"], data["seq_len"], data["seed"]).as_dict()
    _close(ev["scores"], fresh, "scores")
    lc = card["long_context"]
    fresh_lc = long_context(shipped, lc["data"]["seq_len"], lc["data"]["batch"], lc["data"]["seed"], lc["split"])
    _close({k: v for k, v in lc.items() if k != "note"}, fresh_lc, "long_context")
    kc = card["k_composition"]
    fresh_kc = k_composition(shipped, [int(n[-1]) for n in kc["removed"]], data["batch"], data["seq_len"],
                             data["seed"])
    fresh_kc["each_alone"] = {}
    for n in kc["each_alone"]:
        alone = k_composition(shipped, [int(n[-1])], data["batch"], data["seq_len"], data["seed"])
        fresh_kc["each_alone"][n] = {k: v for k, v in alone.items() if k != "removed"}
    _close({k: v for k, v in kc.items() if k not in ("note", "data")}, fresh_kc, "k_composition")
    kw = card["k_composition_weights"]
    fresh_kw = k_composition_weights(shipped, kw["baseline_samples"], kw["baseline_seed"])
    _close({k: v for k, v in kw.items() if k != "definition"}, fresh_kw, "k_composition_weights")


def _table_row(readme: str, label: str) -> list[str]:
    for line in readme.splitlines():
        cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        if cells[0] == label:
            return cells
    raise AssertionError(f"no row {label!r} in README.md")


def test_readme_states_the_card(card, train_record):
    readme = (HERE / "README.md").read_text()
    assert train_record["command"] in readme
    assert f"torch {train_record['torch']}" in readme
    assert "45,184" in readme
    scores = card["evaluation"]["scores"]
    heads = [f"L{l}H{h}" for l in range(2) for h in range(4)]
    for label, key in (("previous-token", "prev_token"), ("induction", "induction")):
        row = _table_row(readme, label)
        assert row[2:10] == [f"{scores[key][h]:.2f}" for h in heads], (label, row)
    assert _table_row(readme, "repeated half")[2] == f"{scores['loss_repeat']:.2f}"
    assert _table_row(readme, "first occurrences")[2].startswith(f"{scores['loss_fresh']:.2f}")
    # recipe and training time
    assert f"weight decay {train_record['recipe']['weight_decay']}" in readme
    assert f"{train_record['seconds']:.0f} s" in readme
    assert f"{card['final_training_loss']:.2f} nats" in readme
    # weight-based K-composition: a row per layer-0 head, ratios to the baseline
    ratio = card["k_composition_weights"]["ratio_to_baseline"]
    for a in range(4):
        row = _table_row(readme, f"L0H{a} ->")
        assert row[1:5] == [f"{ratio[f'L0H{a}'][f'L1H{b}']:.2f}" for b in range(4)], row
    assert f"{card['k_composition_weights']['baseline']:.3f}" in readme
    # the ablations and the long-context caveat: every number the card holds for them appears in the text
    kc, lc = card["k_composition"], card["long_context"]
    ind = [h for h in heads[4:] if scores["induction"][h] >= 0.5]  # the induction heads
    numbers = [kc[k][h] for k in ("induction_without_in_k", "induction_without_in_q") for h in ind]
    numbers += [d["induction_without_in_k"][h] for d in kc["each_alone"].values() for h in ind]
    numbers += [lc[k][h] for k in ("prev_token_before_split", "prev_token_from_split") for h in kc["removed"]]
    numbers += [lc["loss_repeat_key_before_split"], lc["loss_repeat_key_from_split"]]
    text = " ".join(readme.split())
    missing = [x for x in numbers if f"{x:.2f}" not in text]
    assert not missing, missing
