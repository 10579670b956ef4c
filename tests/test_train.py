"""`circuitry train`: the files a run writes, their contents, reproducibility; the full recipe (slow)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from induction_checks import failures, k_composition_weights, measure

import circuitry
from circuitry.cli import main
from circuitry.data import periodic_tokens
from circuitry.model import HookedTransformer, load_model_file
from circuitry.model.io import read_metadata
from circuitry.train import TrainRecipe, train

BUILTIN = Path(circuitry.__file__).parent / "builtin" / "attn-only-2l"


@pytest.fixture(autouse=True)
def _one_thread():
    """Small models train far faster on one thread, and the test machine's cores are shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main(["train", "--steps", "30", "--seed", "3", "--checkpoint-every", "10", "--out", str(out)])
    finally:
        torch.set_num_threads(n)
    return rc, out


def test_tiny_run_writes_model_and_records(tiny_run):
    rc, out = tiny_run
    assert rc == 0
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "loss.json", "train.json",
                                                "checkpoints"}
    assert not [p for p in out.rglob("*.tmp")]  # no half-written files
    record = json.loads((out / "train.json").read_text())
    assert record["command"] == f"circuitry train --steps 30 --seed 3 --out {out} --checkpoint-every 10"
    assert record["recipe"]["seed"] == 3 and record["recipe"]["steps"] == 30
    assert record["recipe"]["checkpoint_every"] == 10
    assert record["torch"] == torch.__version__
    curve = json.loads((out / "loss.json").read_text())
    assert curve["step"] == list(range(1, 31)) and len(curve["loss"]) == 30
    assert record["final_loss"] == curve["loss"][-1]
    # from a random start (about ln 65 or above) towards the unigram floor (ln 64 = 4.16)
    assert curve["loss"][0] > math.log(64) + 0.5
    assert curve["loss"][-1] < curve["loss"][0] - 0.5
    model = load_model_file(out)
    assert model.cfg.n_layers == 2 and model.cfg.d_vocab == 65 and model.cfg.bos_token_id == 64
    assert read_metadata(out)["command"] == record["command"]


def test_tiny_run_checkpoints(tiny_run):
    rc, out = tiny_run
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == [f"step-{s:06d}.safetensors" for s in (0, 10, 20, 30)]
    ckpts = {s: load_model_file(out / "checkpoints" / f"step-{s:06d}.safetensors") for s in (0, 10, 20, 30)}
    for s in ckpts:
        assert read_metadata(out / "checkpoints" / f"step-{s:06d}.safetensors")["step"] == str(s)
    final = load_model_file(out)
    sd_final, sd_30 = final.state_dict(), ckpts[30].state_dict()
    assert all(torch.equal(sd_final[k], sd_30[k]) for k in sd_final)
    # step 0 is the seeded initialisation
    init = HookedTransformer(final.cfg, seed=3).state_dict()
    assert all(torch.equal(init[k], v) for k, v in ckpts[0].state_dict().items())
    assert not torch.equal(ckpts[0].state_dict()["embed.W_E"], ckpts[10].state_dict()["embed.W_E"])
    # the recorded loss of step k+1 is checkpoint k's loss on batch k+1 of the seeded data stream
    losses = json.loads((out / "loss.json").read_text())["loss"]
    gen = torch.Generator().manual_seed(3 + 1)
    batches = [periodic_tokens(65, 64, batch=64, n_ctx=64, min_period=8, max_period=24, generator=gen).tokens
               for _ in range(21)]
    for s in (0, 10, 20):
        with torch.no_grad():
            logits = ckpts[s](batches[s])
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 65), batches[s][:, 1:].reshape(-1))
        assert abs(float(ce) - losses[s]) < 1e-4, (s, float(ce), losses[s])


def test_training_is_reproducible():
    a = train(TrainRecipe(steps=5, seed=4, batch=8)).model.state_dict()
    b = train(TrainRecipe(steps=5, seed=4, batch=8)).model.state_dict()
    c = train(TrainRecipe(steps=5, seed=5, batch=8)).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.attn.W_Q"], c["blocks.0.attn.W_Q"])


def test_weight_decay_is_the_adamw_decoupled_decay():
    """After one step from the same start on the same batch, AdamW's update differs between weight
    decay wd and 0 by exactly -lr * wd * (initial weights): the decay reaches the optimiser."""
    recipe = TrainRecipe(steps=1, seed=4, batch=8)
    assert recipe.weight_decay == 0.3
    init = HookedTransformer(recipe.model_config(), seed=4).state_dict()
    with_wd = train(recipe).model.state_dict()
    without = train(dataclasses.replace(recipe, weight_decay=0.0)).model.state_dict()
    for k, p0 in init.items():
        expected = -recipe.lr * recipe.weight_decay * p0
        assert torch.allclose(with_wd[k] - without[k], expected, rtol=1e-3, atol=1e-6), k
    assert float((with_wd["embed.W_E"] - without["embed.W_E"]).abs().max()) > 1e-4  # not vacuous


def test_weight_decay_option_is_recorded(tmp_path, capsys):
    out = tmp_path / "wd"
    assert main(["train", "--steps", "2", "--seed", "3", "--weight-decay", "0", "--out", str(out)]) == 0
    record = json.loads((out / "train.json").read_text())
    assert record["recipe"]["weight_decay"] == 0.0
    assert record["command"] == f"circuitry train --steps 2 --seed 3 --out {out} --weight-decay 0.0"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--weight-decay" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["--steps", "0"], "steps must be >= 1"),
    (["--d-model", "30"], "--d-model (30) must be a multiple of --heads (4)"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be >= 1"),
    (["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0"),
    (["--weight-decay", "nan"], "--weight-decay must be a finite number >= 0"),
    (["--weight-decay", "inf"], "--weight-decay must be a finite number >= 0"),
])
def test_bad_training_arguments(argv, words, tmp_path, capsys):
    rc = main(["train", *argv, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2
    assert words in err and "Traceback" not in err and err.strip().count("\n") == 0
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_full_recipe_grows_induction_heads(full_run):
    """The shipped model's exact command (with checkpoints every 100 steps, which change nothing in the
    training: the session's 1500-step run) produces a model with the induction circuit."""
    out = full_run
    model = load_model_file(out)
    scores = measure(model)
    assert failures(scores) == [], scores.as_dict()
    record = json.loads((out / "train.json").read_text())
    assert record["command"] == f"circuitry train --steps 1500 --seed 0 --out {out} --checkpoint-every 100"
    # weight decay 0.3 gives K-composition from a previous-token head into an induction head well
    # above the 1.5x random baseline measured for the recipe without it
    prev = [h for h in range(4) if scores.prev_token[0, h] >= 0.9]
    ind = [h for h in range(4) if scores.induction[1, h] >= 0.5]
    ratio = k_composition_weights(model)["ratio_to_baseline"]
    assert max(ratio[f"L0H{a}"][f"L1H{b}"] for a in prev for b in ind) > 1.7, ratio
    # the same command made the shipped model: same recipe; with the same torch, the same weights up to
    # float rounding (thread scheduling changes the order of float sums, so not bit for bit)
    shipped_record = json.loads((BUILTIN / "train.json").read_text())
    # the same recipe but for the checkpoints, and options added since the shipped run (off by default)
    recipe, shipped_recipe = dict(record["recipe"]), dict(shipped_record["recipe"])
    assert recipe.pop("checkpoint_every") == 100 and shipped_recipe.pop("checkpoint_every") is None
    assert recipe == {"block_k_composition": False, "smeared_keys": False, **shipped_recipe}
    if torch.__version__ != shipped_record["torch"]:
        pytest.skip(f"shipped model trained with torch {shipped_record['torch']}, this is {torch.__version__}")
    shipped, fresh = load_model_file(BUILTIN).state_dict(), model.state_dict()
    assert shipped.keys() == fresh.keys()
    diff = max(float((shipped[k] - fresh[k]).abs().max()) for k in shipped)
    assert diff < 1e-5, diff
    assert record["final_loss"] == pytest.approx(shipped_record["final_loss"], abs=1e-4)
