"""`circuitry track`: checkpoints of a training run, the phase change, and bad input.

The default tests track a tiny run of the default recipe (checkpoints at steps
0, 2 and 4, long before any induction head) followed by the shipped model,
which is step 1500 of the same recipe and seed (builtin:attn-only-2l): the
phase change falls between the last tiny checkpoint and it. The real run
(1500 steps, a checkpoint every 100; the phase change of seed 0 comes at step
600) is trained once, for the tests marked slow; its first 700 steps are the
700-step run (the recipe has no learning-rate schedule). Values are checked
against plain recomputations (cross-entropy by hand, attention patterns read
directly).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import circuitry
import circuitry.cli
from circuitry.cli import main
from circuitry.data import periodic_tokens, repeated_tokens
from circuitry.errors import UsageError
from circuitry.model import HookedTransformer, save_model
from circuitry.model.io import load_model_file
from circuitry.track import CheckpointStats, phase_change, track
from circuitry.train import TrainRecipe, train

SHIPPED = Path(circuitry.__file__).parent / "builtin" / "attn-only-2l" / "model.safetensors"


@pytest.fixture
def cli(monkeypatch):
    monkeypatch.setitem(circuitry.cli.COMMANDS, "discover", "circuitry.cli.discover")
    monkeypatch.setitem(circuitry.cli.COMMANDS, "track", "circuitry.cli.track")
    return main


def _ckpt(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:06d}.safetensors"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny run of the default recipe (steps 0, 2, 4) with the shipped model as its step 1500."""
    out = tmp_path_factory.mktemp("run")
    train(TrainRecipe(steps=4, checkpoint_every=2), out=out)
    shutil.copyfile(SHIPPED, _ckpt(out, 1500))  # its metadata says step 1500 as well
    return out


def test_phase_change_between_a_tiny_run_and_the_shipped_model(cli, run_dir, capsys):
    assert cli(["track", str(run_dir), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = doc["checkpoints"]
    assert [r["step"] for r in rows] == [0, 2, 4, 1500]
    pc = doc["phase_change"]
    assert pc is not None and pc["step"] == 1500 and pc["step_before"] == 4
    assert pc["induction_before"] < 0.2  # measured 0.104 (step 0)
    assert pc["induction_before"] == max(r["induction"] for r in rows[:3])
    assert pc["induction_after"] is None  # no checkpoint after the last one
    assert rows[-1]["induction"] > 0.5 and pc["induction_jump"] > 0.5  # measured 0.760, +0.658
    # the ICL score falls with it: about -0.1..-0.2 nats before, -3.6 at step 1500
    assert all(r["icl_score"] > -1.5 for r in rows[:3]) and rows[-1]["icl_score"] < -2.0
    assert rows[-1]["loss_repeats"] < 1.5 < rows[0]["loss_repeats"]
    assert rows[-1]["k_composition"] > 1.5 and rows[-1]["previous_token"] > 0.7


def test_no_phase_change_in_the_first_steps(run_dir):
    res = track([_ckpt(run_dir, s) for s in (0, 2, 4)])
    assert res.phase_change is None and "never rises by 0.1" in res.reason
    assert [s.step for s in res.checkpoints] == [0, 2, 4]


@pytest.mark.slow
def test_phase_change_of_a_short_run(cli, full_run, capsys):
    """Steps 0..700 of the real run (= a 700-step run)."""
    assert cli(["track", *(str(_ckpt(full_run, s)) for s in range(0, 701, 100)), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = doc["checkpoints"]
    assert [r["step"] for r in rows] == list(range(0, 701, 100))
    pc = doc["phase_change"]
    assert pc is not None and 500 <= pc["step"] <= 700  # measured: 600
    assert pc["induction_before"] < 0.2  # measured 0.143 (steps 0..500)
    assert pc["induction_after"] is not None and pc["induction_after"] > 0.5  # measured 0.633 (step 700)
    before = [r for r in rows if r["step"] < pc["step"]]
    after = [r for r in rows if r["step"] > pc["step"]]
    assert max(r["induction"] for r in before) == pc["induction_before"]
    assert min(r["induction"] for r in after) == pc["induction_after"]
    # the ICL score falls with it: about -0.2..-0.9 nats before, below -2 after
    assert all(r["icl_score"] > -1.5 for r in before) and all(r["icl_score"] < -2.0 for r in after)
    assert rows[-1]["loss_repeats"] < 1.5 < rows[0]["loss_repeats"]
    assert rows[-1]["k_composition"] > 1.5 and rows[-1]["previous_token"] > 0.7


@pytest.mark.slow
def test_phase_change_of_the_full_run(cli, full_run, capsys):
    assert cli(["track", str(full_run), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["step"] for r in doc["checkpoints"]] == list(range(0, 1501, 100))
    pc = doc["phase_change"]
    assert pc["step"] == 600  # measured: induction 0.143 at 500 -> 0.490 at 600, ICL -0.90 -> -2.40
    assert pc["induction_before"] < 0.2 and pc["induction_after"] > 0.5  # measured 0.143, 0.555


def _check_values_match_plain_recomputation(path: Path, step: int) -> None:
    res = track([path])
    s = res.checkpoints[0]
    assert s.step == step and res.phase_change is None and "two checkpoints" in res.reason
    model = load_model_file(path)
    b = repeated_tokens(65, 64, batch=64, seq_len=10, n_repeats=2, seed=1).tokens
    icl = torch.cat([periodic_tokens(65, 64, batch=32, n_ctx=64, period=p, seed=7 + p).tokens
                     for p in (12, 16, 20, 24)])
    with torch.no_grad():
        logits, cache = model.run_with_cache(b)
        # positions 11..19 predict tokens 12..20 (the repeats)
        rep = F.cross_entropy(logits[:, 11:20].reshape(-1, 65), b[:, 12:21].reshape(-1))
        lg = model(icl)
        nll = F.cross_entropy(lg[:, :-1].reshape(-1, 65), icl[:, 1:].reshape(-1), reduction="none").view(128, 63)
        # token t is predicted at position t - 1
        late, early = nll[:, 39:50].mean(), nll[:, 4:10].mean()
        # induction: from token i of the second copy to the token after its first copy (offset 1 - 10)
        # queries 11..20 attend to keys 2..11 (offset -9) -> [head]
        ind = cache["pattern", 1].diagonal(offset=-9, dim1=-2, dim2=-1)[..., 2:].mean((0, 2))
        prev = cache["pattern", 0].diagonal(offset=-1, dim1=-2, dim2=-1).mean((0, 2))
    assert abs(s.loss_repeats - float(rep)) < 1e-4
    assert abs(s.icl_score - float(late - early)) < 1e-4
    assert abs(s.induction - float(ind.max())) < 0.03  # the detector also counts repeats inside a block
    assert abs(s.previous_token - float(prev.max())) < 1e-5
    assert s.previous_token_head == f"L0H{int(prev.argmax())}"


def test_values_match_plain_recomputation(run_dir):
    _check_values_match_plain_recomputation(_ckpt(run_dir, 1500), 1500)


@pytest.mark.slow
def test_values_match_plain_recomputation_at_step_700(full_run):
    _check_values_match_plain_recomputation(_ckpt(full_run, 700), 700)


def _stats(steps, induction, icl):
    return [CheckpointStats(s, "", 1.0, c, 0.5, "L0H0", i, "L1H0", 1.0, "") for s, i, c in zip(steps, induction, icl)]


def test_phase_change_rule():
    steps = [0, 100, 200, 300, 400]
    pc, _ = phase_change(_stats(steps, [0.1, 0.1, 0.15, 0.6, 0.7], [-0.1, -0.2, -0.4, -2.4, -2.6]))
    assert pc.step == 300 and pc.step_before == 200
    assert abs(pc.induction_jump - 0.45) < 1e-9 and abs(pc.icl_jump - 2.0) < 1e-9
    assert pc.induction_before == 0.15 and pc.induction_after == 0.7
    # the ICL jump one interval late still confirms it
    pc, _ = phase_change(_stats(steps, [0.1, 0.1, 0.15, 0.6, 0.7], [-0.1, -0.2, -0.4, -0.6, -2.6]))
    assert pc.step == 300 and abs(pc.icl_jump - 2.0) < 1e-9
    # an induction jump with the ICL score falling elsewhere is not a phase change
    pc, why = phase_change(_stats(steps, [0.1, 0.6, 0.6, 0.6, 0.6], [-0.1, -0.2, -0.2, -0.3, -2.3]))
    assert pc is None and "without a fall of the ICL score" in why
    pc, why = phase_change(_stats(steps, [0.1, 0.12, 0.15, 0.2, 0.25], [-0.1, -0.2, -0.4, -2.4, -2.6]))
    assert pc is None and "never rises by 0.1" in why


def test_table_and_plot(cli, run_dir, tmp_path, capsys, mpl):
    png = tmp_path / "track.png"
    assert cli(["track", *(str(_ckpt(run_dir, s)) for s in (2, 4, 1500)), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "phase change at step 1500" in out and "ICL score" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_table_and_plot_of_the_real_run(cli, full_run, tmp_path, capsys, mpl):
    png = tmp_path / "track.png"
    assert cli(["track", *(str(_ckpt(full_run, s)) for s in (400, 500, 600, 700)), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "phase change at step 600" in out and "ICL score" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(cli, run_dir, tmp_path, capsys, no_matplotlib):
    assert cli(["track", str(run_dir), "--plot", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'circuitry[plot]'" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_bad_input(cli, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(["track", str(empty)]) == 2
    assert "no checkpoints" in capsys.readouterr().err
    assert cli(["track", str(tmp_path / "missing")]) == 2
    assert "no such checkpoint file or directory" in capsys.readouterr().err
    mixed = tmp_path / "mixed"
    small = HookedTransformer(shape_cfg(n_layers=2), seed=0)
    big = HookedTransformer(shape_cfg(n_layers=3), seed=0)
    save_model(small, mixed / "step-000000.safetensors", {"step": "0"})
    save_model(big, mixed / "step-000100.safetensors", {"step": "100"})
    assert cli(["track", str(mixed)]) == 2
    err = capsys.readouterr().err
    assert "checkpoints of different shapes" in err and "n_layers 2 vs 3" in err
    same = tmp_path / "same"
    save_model(small, same / "step-000100.safetensors", {"step": "100"})
    save_model(small, tmp_path / "other" / "step-000100.safetensors", {"step": "100"})
    assert cli(["track", str(same), str(tmp_path / "other")]) == 2
    assert "are both step 100" in capsys.readouterr().err
    short = tmp_path / "short"
    save_model(HookedTransformer(shape_cfg(n_ctx=32), seed=0), short / "step-000000.safetensors", {"step": "0"})
    assert cli(["track", str(short)]) == 2
    assert "context is 32 tokens" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UsageError, match="a checkpoint is a .safetensors file"):
        track([tmp_path / "notes.txt"])


def shape_cfg(**kw):
    return TrainRecipe(**kw).model_config()
