"""builtin:ioi-toy and the synthetic IOI language: the language has no positional shortcut and a clean
held-out split, the tokenizer round-trips, the shipped weights solve held-out prompts (checked with a plain
forward pass and argmax written here), the model card agrees with fresh measurements, `circuitry train --task
ioi` writes what it says; the recorded command reproduces the model (slow)."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

import circuitry
from circuitry.cli import main
from circuitry.ioi.batches import loss_weights, prompt_batch
from circuitry.ioi.card import card_measurements
from circuitry.ioi.language import (
    NAMES,
    ORDERS,
    TEMPLATE_SETS,
    held_out_pairs,
    ioi_tokenizer,
    sample_prompts,
    vocabulary,
)
from circuitry.ioi.measure import held_out, s1_replaced
from circuitry.ioi.recipe import IOIRecipe, train_ioi
from circuitry.model import load_model_file
from circuitry.sources import load_model

HERE = Path(circuitry.__file__).parent / "builtin" / "ioi-toy"
TOL = 0.01


pytestmark = pytest.mark.usefixtures("two_threads")


@pytest.fixture(scope="module")
def model():
    return load_model("builtin:ioi-toy")


@pytest.fixture(scope="module")
def card():
    return json.loads((HERE / "card.json").read_text())


# ----------------------------------------------------------------------------------------- the language
@pytest.mark.parametrize("templates", list(TEMPLATE_SETS))
def test_prompts_are_what_they_say(templates):
    tok = ioi_tokenizer()
    for p in sample_prompts(300, random.Random(1), "train", templates=templates):
        t = p.tokens
        assert t[0] == tok.bos_token_id and p.io != p.s
        assert t[p.io_pos] == p.io and t[p.s1_pos] == t[p.s2_pos] == p.s and p.s1_pos < p.s2_pos < p.end_pos
        names = [i for i, x in enumerate(t) if tok.convert_ids_to_tokens(x) in NAMES]
        assert names == sorted([p.io_pos, p.s1_pos, p.s2_pos])  # exactly three mentions of names
        assert "".join("A" if t[i] == p.io else "B" for i in names) + "A" == p.order
        assert list(t) == [tok.bos_token_id, *tok.encode(p.text)]
    orders = Counter(p.order for p in sample_prompts(600, random.Random(2), templates=templates))
    expected = {"classic": {"ABBA", "BABA"}, "mixed": set(ORDERS), "any-order": set(ORDERS)}[templates]
    assert set(orders) == expected


def test_held_out_pairs_never_occur_in_training():
    held = held_out_pairs()
    assert len(held) == round(0.2 * len(NAMES) * (len(NAMES) - 1) / 2)
    train = sample_prompts(3000, random.Random(3), "train", templates="any-order")
    test = held_out(templates="any-order")
    tok = ioi_tokenizer()
    pair = lambda p: frozenset(tok.convert_ids_to_tokens([p.io, p.s]))  # noqa: E731
    assert not any(pair(p) in held for p in train)
    assert all(pair(p) in held for p in test)
    # every name occurs in both splits, so the split is by combination, not by name
    for split in (train, test):
        assert {n for p in split for n in pair(p)} == set(NAMES)


@pytest.mark.parametrize("templates", ["classic", "any-order"])
def test_no_positional_shortcut(templates):
    """No absolute position and no distance from END holds the answer in many held-out prompts, and the
    answer is neither always the first nor always the last name."""
    prompts = held_out(templates=templates)
    n = len(prompts)
    assert len({p.io_pos for p in prompts}) >= 15 and len({p.end_pos for p in prompts}) >= 15
    at_position = Counter(p.io_pos for p in prompts).most_common(1)[0][1] / n
    from_end = Counter(p.end_pos - p.io_pos for p in prompts).most_common(1)[0][1] / n
    first = sum(p.io_pos < p.s1_pos for p in prompts) / n
    last = sum(p.io_pos > p.s2_pos for p in prompts) / n
    assert at_position < 0.15 and from_end < 0.2, (at_position, from_end)
    assert 0.25 < first < 0.6 and last < 0.4, (first, last)


def test_tokenizer_round_trips():
    tok = load_model_file(HERE).tokenizer
    assert tok == ioi_tokenizer()
    for word in vocabulary():
        (i,) = tok.encode(word)
        assert tok.encode(" " + word) == [i] and tok.decode([i]) == word
    for p in held_out(200, templates="any-order"):
        assert tok.decode(tok.encode(p.text)) == p.text
    assert tok.encode("When Mary and John went to the store, John gave a drink to") == [
        tok.convert_tokens_to_ids(w) for w in "When Mary and John went to the store , John gave a drink to".split()]


def test_loss_weights_and_padding():
    prompts = sample_prompts(5, random.Random(4), templates="any-order")
    batch = prompt_batch(prompts, with_answer=True, length=40)
    w = loss_weights(batch, answer_weight=20.0, context_weight=1.0)
    for i, p in enumerate(prompts):
        assert batch.tokens[i, p.end_pos + 1] == p.io
        assert (batch.tokens[i, p.end_pos + 2:] == ioi_tokenizer().pad_token_id).all()
        assert w[i, p.end_pos] == 20.0 and (w[i, : p.end_pos] == 1.0).all() and (w[i, p.end_pos + 1:] == 0).all()


def test_s1_replaced_changes_only_s1():
    prompts = held_out(50)
    for p, q in zip(prompts, s1_replaced(prompts)):
        diff = [i for i, (a, b) in enumerate(zip(p.tokens, q.tokens)) if a != b]
        assert diff == [p.s1_pos] and q.tokens[p.s1_pos] not in (p.io, p.s)
        assert ioi_tokenizer().convert_ids_to_tokens(q.tokens[p.s1_pos]) in NAMES


# ----------------------------------------------------------------------------------------- the shipped model
def _plain_scores(model, texts: list[str], answers: list[str], wrongs: list[str]) -> dict:
    """Accuracy (argmax at the last position is the answer), IO-over-S rate and mean logit difference,
    from a plain forward pass of each prompt tokenized from its text."""
    tok = model.tokenizer
    hits = above = 0
    diffs = []
    with torch.no_grad():
        for text, io, s in zip(texts, answers, wrongs):
            logits = model(torch.tensor([[tok.bos_token_id, *tok.encode(text)]]))[0, -1]
            (i,), (j,) = tok.encode(io), tok.encode(s)
            hits += int(logits.argmax()) == i
            above += bool(logits[i] > logits[j])
            diffs.append(float(logits[i] - logits[j]))
    n = len(texts)
    return {"accuracy": hits / n, "io_over_s": above / n, "logit_diff": sum(diffs) / n}


@pytest.mark.parametrize("templates", ["classic", "any-order"])
def test_shipped_model_solves_held_out_prompts(model, card, templates):
    tok = model.tokenizer
    prompts = held_out(templates=templates)
    texts = [p.text for p in prompts]
    ios = [" " + tok.decode([p.io]) for p in prompts]  # answers as task files write them
    ss = [tok.decode([p.s]) for p in prompts]
    got = _plain_scores(model, texts, ios, ss)
    want = card["evaluation"]["scores"][templates]
    assert got["accuracy"] == pytest.approx(want["accuracy"], abs=2e-3)
    assert got["io_over_s"] == pytest.approx(want["io_over_s"], abs=2e-3)
    assert got["logit_diff"] == pytest.approx(want["logit_diff"], abs=1e-3)
    assert got["accuracy"] >= 0.9 and got["logit_diff"] >= 5.0, got


def test_shipped_model_needs_the_repeated_name(card):
    """With S1 replaced by a third name, nothing tells IO from S: the logit difference collapses."""
    scores = card["evaluation"]["scores"]
    for templates in ("classic", "any-order"):
        assert abs(scores[f"{templates}_s1_replaced"]["logit_diff"]) < 0.2 * scores[templates]["logit_diff"]


def test_shipped_config_and_files(model, card):
    cfg = model.cfg
    assert model.source == "builtin:ioi-toy" and cfg.name == "ioi-toy"
    assert cfg.d_vocab == ioi_tokenizer().vocab_size and cfg.bos_token_id == ioi_tokenizer().bos_token_id
    assert card["architecture"]["n_layers"] == cfg.n_layers and card["architecture"]["n_params"] == model.n_params()
    assert sum(f.stat().st_size for f in HERE.iterdir()) < 1_000_000
    record = json.loads((HERE / "train.json").read_text())
    assert card["command"] == record["command"] and card["recipe"] == record["recipe"]
    assert record["command"].startswith("circuitry train --task ioi ")
    recipe = IOIRecipe(**{**record["recipe"], "betas": tuple(record["recipe"]["betas"])})
    assert recipe.model_config() == cfg
    assert record["held_out"]["prompts"] == card["evaluation"]["scores"][recipe.templates]


def test_card_agrees_with_fresh_measurements(model, card):
    fresh = card_measurements(model)
    assert fresh["position_spread"] == card["evaluation"]["position_spread"]
    for name, s in fresh["scores"].items():
        for k, v in s.items():
            assert v == pytest.approx(card["evaluation"]["scores"][name][k], abs=TOL), (name, k)
    for head, row in fresh["heads"].items():
        for k, v in row.items():
            assert v == pytest.approx(card["evaluation"]["heads"][head][k], abs=TOL), (head, k)


def test_info(capsys):
    assert main(["info", "builtin:ioi-toy", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["config"]["name"] == "ioi-toy" and doc["n_params"] > 0


# ----------------------------------------------------------------------------------------- training
def test_tiny_training_run(tmp_path):
    out = tmp_path / "ioi"
    assert main(["train", "--task", "ioi", "--steps", "3", "--seed", "1", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "tokenizer.json", "train.json",
                                                "loss.json"}
    record = json.loads((out / "train.json").read_text())
    assert record["command"] == f"circuitry train --task ioi --steps 3 --seed 1 --out {out}"
    assert record["task"] == "ioi" and record["recipe"]["steps"] == 3
    assert set(record["held_out"]) == {"prompts", "prompts_without_prefix"}
    loaded = load_model_file(out)
    assert loaded.tokenizer == ioi_tokenizer() and loaded.cfg == IOIRecipe().model_config()


def test_training_is_reproducible():
    a = train_ioi(IOIRecipe(steps=3, seed=4, batch=8))[0].state_dict()
    b = train_ioi(IOIRecipe(steps=3, seed=4, batch=8))[0].state_dict()
    c = train_ioi(IOIRecipe(steps=3, seed=5, batch=8))[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.attn.W_Q"], c["blocks.0.attn.W_Q"])


@pytest.mark.parametrize("argv, words", [
    (["--answer-weight", "2"], "--answer-weight is an option of another task, not --task induction"),
    (["--task", "ioi", "--answer-weight", "0"], "--answer-weight must be a finite number > 0"),
    (["--task", "ioi", "--answer-weight", "nan"], "--answer-weight must be a finite number > 0"),
    (["--task", "ioi", "--d-mlp", "0"], "--d-mlp must be >= 1"),
    (["--task", "ioi", "--d-model", "30"], "--d-model (30) must be a multiple of --heads (4)"),
])
def test_bad_arguments(argv, words, tmp_path, capsys):
    rc = main(["train", *argv, "--steps", "2", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and words in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_recorded_command_reproduces_the_shipped_model(tmp_path):
    record = json.loads((HERE / "train.json").read_text())
    out = tmp_path / "ioi-toy"
    argv = record["command"].split()[1:]
    argv[argv.index("--out") + 1] = str(out)
    assert main(argv) == 0
    fresh = json.loads((out / "train.json").read_text())
    assert fresh["recipe"] == record["recipe"]
    for name, s in fresh["held_out"].items():
        assert s["accuracy"] == pytest.approx(record["held_out"][name]["accuracy"], abs=0.03), name
        assert s["logit_diff"] == pytest.approx(record["held_out"][name]["logit_diff"], abs=0.5), name
    # not the weights: 3000 steps at learning rate 3e-3 grow float-rounding differences (the order of float
    # sums changes with thread scheduling) to weight differences of about 0.5; the measurements above agree
