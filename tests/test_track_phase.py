"""The phase change in the training loss: the loss bump (circuitry.bump) beside track's induction phase
change, and the loss by token index before and after it.

The bump finder is checked on synthetic curves whose bump is known (a sigmoid drop added to a power-law
decay, with and without noise) and on curves without one (the power law alone, a flat curve, too short a
curve, a diverged one). The loss by token index is checked against a cross-entropy computed here from the
model's logits. The CLI tests use test_track's tiny run (steps 0, 2, 4 and the shipped model as step 1500)
with its own 4-step loss.json (too short for a bump) or a synthetic loss curve given with --loss; the slow
test uses the real 1500-step run (test_track's `full_run`; measured on seed 0: loss bump at step 552,
induction phase change at step 600).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_track import _ckpt, cli, run_dir  # noqa: F401 - fixtures shared with test_track

from circuitry import track as track_module
from circuitry.bump import MIN_STEPS, find_loss_bump, loss_bump
from circuitry.model.io import load_model_file
from circuitry.track import (
    POSITION_BUCKETS,
    bucket_means,
    icl_score,
    icl_tokens,
    loss_by_position,
    loss_figure,
    loss_plot_path,
    track,
)


def curve(n: int, bump_at: float | None, noise: float = 0.0, seed: int = 0, drop: float = 1.5,
          width: float = 15.0) -> list[float]:
    """1 + 3 (t/10 + 1)^-0.5 (a power law) + drop * sigmoid((bump_at - t) / width) + Gaussian noise, t = 1..n."""
    t = torch.arange(1, n + 1, dtype=torch.float64)
    loss = 1.0 + 3.0 * (t / 10 + 1) ** -0.5
    if bump_at is not None:
        loss = loss + drop * torch.sigmoid((bump_at - t) / width)
    if noise:
        loss = loss + noise * torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return loss.tolist()


# ------------------------------------------------------------------ the bump finder
@pytest.mark.parametrize("n,bump_at", [(1500, 550), (1500, 300), (1500, 1000), (600, 250), (200, 90)])
def test_bump_of_a_noiseless_curve_is_its_steepest_point(n, bump_at):
    b = loss_bump(curve(n, bump_at, width=n / 100))
    assert b is not None
    assert abs(b.step - bump_at) <= 2  # the sigmoid's steepest point
    assert b.start < bump_at < b.end and b.window == 2 * max(2, n // 40) + 1
    assert b.plateau_rate < b.peak_rate / 3
    # the drop beyond the plateau is most of the sigmoid's 1.5 nats (the half-peak extent cuts its tails)
    assert 0.8 < b.excess_drop < 1.5 and b.loss_before - b.loss_after > b.excess_drop


@pytest.mark.parametrize("seed", range(5))
def test_bump_of_a_noisy_curve(seed):
    """Per-step noise 0.2 nats (a real run's is 0.1..0.6 nats): found within 25 steps (a third of the
    75-step window)."""
    b = loss_bump(curve(1500, 550, noise=0.2, seed=seed))
    assert b is not None and abs(b.step - 550) <= 25, b
    assert b.start < 550 < b.end


@pytest.mark.parametrize("seed", range(5))
def test_no_bump_in_a_power_law(seed):
    b, why = find_loss_bump(curve(1500, None, noise=0.2, seed=seed))
    assert b is None and "of its whole fall (a bump needs 20%)" in why
    b, why = find_loss_bump(curve(1500, None))  # noiseless: the descent only slows
    assert b is None and why == "the descent never speeds up (it only slows down)"


def test_no_bump_in_flat_short_or_diverged_curves():
    assert find_loss_bump([2.0] * 200) == (None, "the loss does not fall over the run")
    b, why = find_loss_bump([2.0 - i / 100 for i in range(MIN_STEPS - 1)])
    assert b is None and f"too short to find a bump in (at least {MIN_STEPS})" in why
    losses: list[float | None] = curve(300, 150)
    losses[200] = None
    assert find_loss_bump(losses, list(range(10, 310))) == (None, "the loss is not finite at step 210 "
                                                                  "(a diverged run)")
    losses[200] = math.nan
    assert find_loss_bump(losses)[1] == "the loss is not finite at step 201 (a diverged run)"


def test_steps_are_read_from_the_curve():
    """The bump is reported in the curve's own steps (here every 2nd step from 1000)."""
    losses = curve(500, 200, width=5)
    b = loss_bump(losses, list(range(1000, 2000, 2)))
    assert b is not None and abs(b.step - 1400) <= 4
    assert track_module.loss_bump is loss_bump  # the same function from circuitry.track


# ------------------------------------------------------------------ loss by token index
def test_loss_by_position_is_the_cross_entropy_of_each_token():
    model = load_model_file(_shipped())
    tokens = icl_tokens(model.cfg)  # [128, 64]
    with torch.no_grad():
        logits = model(tokens)  # [batch, pos, vocab]
    # token t is predicted at position t - 1
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1),
                          reduction="none").view(tokens.shape[0], -1)
    expected = nll.mean(0)  # [63]
    got = loss_by_position(model, tokens)
    assert got.shape == (63,)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the ICL score is the late bucket minus the early one of the same per-token losses
    assert abs(icl_score(model, tokens) - float(expected[39:50].mean() - expected[4:10].mean())) < 1e-5
    means = bucket_means(expected.tolist())
    assert len(means) == len(POSITION_BUCKETS) == 6
    assert abs(means[0] - float(expected[0])) < 1e-6 and abs(means[2] - float(expected[4:10].mean())) < 1e-6
    assert abs(means[5] - float(expected[40:63].mean())) < 1e-6
    assert all(math.isnan(v) for v in bucket_means([1.0] * 20)[4:])  # buckets past the end


def _shipped() -> Path:
    from test_track import SHIPPED

    return SHIPPED


# ------------------------------------------------------------------ the CLI
def test_json_on_the_tiny_run(cli, run_dir, capsys):  # noqa: F811
    assert cli(["track", str(run_dir), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out, parse_constant=_reject)
    lc = doc["loss_curve"]
    assert lc["path"] == str(run_dir / "loss.json") and lc["steps"] == 4
    assert lc["bump"] is None and "a loss curve of 4 steps is too short" in lc["no_bump_reason"]
    assert lc["phase_change_step"] == 1500 and lc["bump_minus_phase_change"] is None
    lp = doc["loss_by_position"]
    assert lp["buckets"] == [[1, 1], [2, 4], [5, 10], [11, 20], [21, 40], [41, 63]]
    assert lp["shown"] == [{"step": 0, "role": "first"}, {"step": 4, "role": "before"},
                           {"step": 1500, "role": "after, last"}]
    rows = {r["step"]: r for r in lp["checkpoints"]}
    assert sorted(rows) == [0, 2, 4, 1500] and all(len(r["per_token"]) == 63 for r in rows.values())
    # step 1500 against a cross-entropy by hand
    model = load_model_file(_shipped())
    tokens = icl_tokens(model.cfg)
    with torch.no_grad():
        logits = model(tokens)
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, 65), tokens[:, 1:].reshape(-1), reduction="none")
    expected = nll.view(128, 63).mean(0)
    assert max(abs(a - b) for a, b in zip(rows[1500]["per_token"], expected.tolist())) < 1e-4
    assert abs(rows[1500]["buckets"][5] - float(expected[40:].mean())) < 1e-4
    # before the phase change the context barely helps; after it late tokens are nearly free
    before, after = rows[4]["buckets"], rows[1500]["buckets"]
    assert before[5] > 3.5 and abs(before[5] - before[2]) < 0.5  # measured 4.16 and 4.21 (5-10)
    assert after[5] < 1.0 < 3.5 < after[2]  # measured 0.41 (41-63) and 4.25 (5-10)
    # the checkpoint rows do not repeat the per-token losses
    assert "loss_by_token" not in doc["checkpoints"][0]


def _reject(name):
    raise ValueError(f"not strict JSON: {name}")


def test_table_on_the_tiny_run(cli, run_dir, capsys):  # noqa: F811
    assert cli(["track", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "phase change: training loss and induction heads" in out
    assert "loss bump" in out and "a loss curve of 4 steps is too short" in out
    assert re.search(r"induction heads │ +1500 │ +4\.\.1500 │ best induction \+0\.658", out)  # as test_track
    assert "loss by token index" in out
    for head in ("token 1", "2-4", "5-10", "11-20", "21-40", "41-63"):
        assert head in out
    assert "after, last" in out


def test_a_given_loss_curve_with_a_bump(cli, run_dir, tmp_path, capsys):  # noqa: F811
    """--loss: a synthetic curve of 1500 steps with its bump at step 1400; the phase change of the tiny run
    (steps 4 and 1500 of it) is at step 1500, so the distance is the bump's step - 1500."""
    losses = curve(1500, 1400, noise=0.1, seed=3)
    path = tmp_path / "curve.json"
    path.write_text(json.dumps({"step": list(range(1, 1501)), "loss": losses}))
    ckpts = [str(_ckpt(run_dir, 4)), str(_ckpt(run_dir, 1500))]
    assert cli(["track", *ckpts, "--loss", str(path), "--json"]) == 0
    lc = json.loads(capsys.readouterr().out)["loss_curve"]
    assert lc["path"] == str(path) and lc["no_bump_reason"] is None
    bump = lc["bump"]
    assert abs(bump["step"] - 1400) <= 25 and bump["start"] < 1400 < bump["end"]
    assert lc["bump_minus_phase_change"] == bump["step"] - 1500
    assert cli(["track", *ckpts, "--loss", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"the bump is {1500 - bump['step']} steps before the phase-change step" in out
    assert f"│ loss bump       │ {bump['step']} │ {bump['start']}..{bump['end']} │" in out


def test_bad_loss_curves(cli, run_dir, tmp_path, capsys):  # noqa: F811
    assert cli(["track", str(run_dir), "--loss", str(tmp_path / "missing.json")]) == 2
    assert "missing.json: cannot read the loss curve" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"step": [1, 2],\n "loss": [1.0, }')
    assert cli(["track", str(run_dir), "--loss", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2:" in err and "not JSON" in err and "Traceback" not in err
    bad.write_text('{"steps": [1], "loss": [1.0]}')
    assert cli(["track", str(run_dir), "--loss", str(bad)]) == 2
    assert 'a loss curve is {"step": [...], "loss": [...]}' in capsys.readouterr().err
    bad.write_text('{"step": [1, 2, 2], "loss": [1.0, 2.0, 3.0]}')
    assert cli(["track", str(run_dir), "--loss", str(bad)]) == 2
    assert "the steps must be increasing whole numbers" in capsys.readouterr().err
    bad.write_text('{"step": [1, 2], "loss": [1.0, "x"]}')
    assert cli(["track", str(run_dir), "--loss", str(bad)]) == 2
    assert "every loss must be a number or null" in capsys.readouterr().err


def test_checkpoints_without_a_loss_curve(run_dir, tmp_path):  # noqa: F811
    import shutil

    lone = tmp_path / "lone"
    lone.mkdir()
    for s in (2, 4):
        shutil.copyfile(_ckpt(run_dir, s), lone / f"step-{s:06d}.safetensors")
    res = track([lone])
    assert res.loss_curve is not None and res.loss_curve.path is None and res.bump is None
    assert res.loss_curve.reason == f"no loss.json in {lone.resolve()} (give one with --loss)"
    assert res.to_json()["loss_curve"]["no_bump_reason"] == res.loss_curve.reason
    res = track([_ckpt(run_dir, 2), lone / "step-000004.safetensors"])  # two directories: no one run
    assert res.loss_curve is not None and res.loss_curve.path is None
    assert res.loss_curve.reason.startswith("the checkpoints lie in several directories")


def test_loss_plot(cli, run_dir, tmp_path, capsys, mpl):  # noqa: F811
    from test_plots import assert_legend_off_the_axes

    losses = curve(1500, 1400, noise=0.1, seed=3)
    path = tmp_path / "curve.json"
    path.write_text(json.dumps({"step": list(range(1, 1501)), "loss": losses}))
    png = tmp_path / "phase.png"
    ckpts = [_ckpt(run_dir, 4), _ckpt(run_dir, 1500)]
    assert cli(["track", *map(str, ckpts), "--loss", str(path), "--plot", str(png), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["loss_plot"] == str(tmp_path / "phase-loss.png") == str(loss_plot_path(png))
    assert (tmp_path / "phase-loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = track(ckpts, loss_file=path)
    fig = loss_figure(res)
    ax, ax2 = fig.axes
    lines = {ln.get_label(): ln for ln in ax.lines}
    assert list(lines["loss per step"].get_ydata()) == losses
    bump = res.bump
    assert bump is not None and list(lines[f"loss bump (step {bump.step})"].get_xdata()) == [bump.step] * 2
    assert list(lines["induction phase change (step 1500)"].get_xdata()) == [1500, 1500]
    assert ax.get_ylim()[0] == 0 and ax2.get_ylim()[0] == 0 and ax2.get_xlim() == (0.5, 63.5)
    shown = {ln.get_label(): list(ln.get_ydata()) for ln in ax2.lines if ln.get_label().startswith("step")}
    by_step = {s.step: list(s.loss_by_token) for s in res.checkpoints}
    assert shown == {"step 4 (first, before)": by_step[4], "step 1500 (after, last)": by_step[1500]}
    assert f"bump at step {bump.step}" in ax.get_title() and "induction heads form at step 1500" in ax.get_title()
    assert f"the bump comes {1500 - bump.step} steps before it" in ax.get_title()
    assert "loss by token index" in ax2.get_title()
    assert_legend_off_the_axes(fig, ax)
    assert_legend_off_the_axes(fig, ax2)


def test_loss_plot_without_matplotlib(cli, run_dir, tmp_path, capsys, no_matplotlib):  # noqa: F811
    assert cli(["track", str(run_dir), "--plot", str(tmp_path / "x.png")]) == 2
    assert "pip install 'circuitry[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x-loss.png").exists()


# ------------------------------------------------------------------ the real run
def check_bump_near_the_phase_change(run: Path) -> tuple[int, int]:
    """The real run's loss bump and induction phase change, and the loss by token index around them."""
    res = track([run])
    assert res.phase_change is not None and res.bump is not None, (res.reason, res.loss_curve)
    assert abs(res.bump.step - res.phase_change.step) <= 200
    assert res.bump_distance == res.bump.step - res.phase_change.step
    # the bump is a large part of the run's fall: measured 1.30 of 3.41 nats beyond the plateau
    assert res.bump.excess_drop > 0.25 * res.bump.total_drop
    by_step = {s.step: bucket_means(s.loss_by_token) for s in res.checkpoints}
    before, after = by_step[res.phase_change.step_before], by_step[1500]
    # before: the context helps little past token 20; after: the late tokens are nearly free
    assert before[5] > before[4] - 0.5 and before[5] > 2.5  # measured 3.39 and 3.39 (step 500)
    assert after[5] < 1.0 < after[2]  # measured 0.41 and 4.25 (step 1500)
    return res.bump.step, res.phase_change.step


@pytest.mark.slow
def test_loss_bump_near_the_phase_change_of_the_real_run(full_run):
    bump, change = check_bump_near_the_phase_change(full_run)
    assert (bump, change) == (552, 600)  # measured on seed 0


@pytest.mark.slow
def test_no_bump_in_a_one_layer_run():
    """One layer cannot make induction heads: its loss only slows (measured: the largest speed-up, at step 1319,
    drops the loss by 0.145 nats beyond its plateau, 10% of its whole fall)."""
    from circuitry.train import TrainRecipe, train

    b, why = find_loss_bump(train(TrainRecipe(steps=1500, n_layers=1)).losses)
    assert b is None and "(a bump needs 20%)" in why
