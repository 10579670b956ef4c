"""`circuitry train`: Ctrl-C keeps the checkpoints and says so (exit 130); `--resume` continues a run from its
last checkpoint to the same weights as the uninterrupted run (tiny model, a few steps).

Measured: a run of 6 steps resumed at step 3 gives weights equal to the uninterrupted 6-step run bit for bit
(largest difference 0.0 in every tensor, CPU float32), and the same loss curve.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import circuitry.train
from circuitry.cli import main
from circuitry.model import load_model_file
from circuitry.train import TrainRecipe, resume_point, train
from circuitry.trainstate import load_state, state_path

TINY = ["--layers", "1", "--heads", "2", "--d-model", "16"]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_model_file(path).state_dict()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), (k, float((a[k] - b[k]).abs().max()))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--steps", "6", *TINY, "--checkpoint-every", "3", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(n)
    return out


def test_resumed_run_equals_the_uninterrupted_run(uninterrupted, tmp_path):
    part = tmp_path / "part"
    assert main(["train", "--steps", "3", *TINY, "--checkpoint-every", "3", "--out", str(part)]) == 0
    before = _weights(part)
    assert main(["train", "--resume", str(part), "--steps", "6"]) == 0
    after = _weights(part)
    assert not torch.equal(before["embed.W_E"], after["embed.W_E"])  # it trained on
    _same(after, _weights(uninterrupted))
    _same(_weights(part / "checkpoints" / "step-000006.safetensors"),
          _weights(uninterrupted / "checkpoints" / "step-000006.safetensors"))
    full_curve = json.loads((uninterrupted / "loss.json").read_text())
    assert json.loads((part / "loss.json").read_text()) == full_curve  # steps 1..3 kept in the state, 4..6 new
    record = json.loads((part / "train.json").read_text())
    assert record["recipe"] == json.loads((uninterrupted / "train.json").read_text())["recipe"]
    assert record["resumed_at_step"] == 3 and record["resumed_from"].endswith("step-000003.safetensors")
    # the recorded command is the uninterrupted run's
    assert record["command"] == (f"circuitry train --steps 6 --seed 0 --out {part} --layers 1 --heads 2 "
                                 f"--d-model 16 --checkpoint-every 3")


def test_state_file_holds_optimizer_generator_and_losses(uninterrupted):
    ckpt = uninterrupted / "checkpoints" / "step-000003.safetensors"
    assert state_path(ckpt) == uninterrupted / "train-state" / "state-000003.safetensors"
    state = load_state(ckpt, 3)
    assert state is not None and state.step == 3
    assert state.losses == json.loads((uninterrupted / "loss.json").read_text())["loss"][:3]
    # AdamW's moments for every parameter; its step counter says 3
    n_params = len(list(load_model_file(ckpt).parameters()))
    assert sorted(state.optimizer) == list(range(n_params))
    assert all(float(s["step"]) == 3.0 and {"exp_avg", "exp_avg_sq"} <= set(s) for s in state.optimizer.values())
    # the generator state is that of a fresh generator after drawing three batches
    recipe = TrainRecipe(steps=6, n_layers=1, n_heads=2, d_model=16)
    gen = torch.Generator().manual_seed(recipe.seed + 1)
    for _ in range(3):
        circuitry.train._batch(recipe, recipe.model_config(), gen)
    assert torch.equal(state.generator, gen.get_state())
    # step 0: no losses yet
    assert load_state(uninterrupted / "checkpoints" / "step-000000.safetensors", 0).losses == []


def test_ctrl_c_keeps_checkpoints_and_resume_finishes_the_run(uninterrupted, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real = circuitry.train.periodic_tokens
    calls = []

    def interrupt_at_step_5(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(circuitry.train, "periodic_tokens", interrupt_at_step_5)
    assert main(["train", "--steps", "6", *TINY, "--checkpoint-every", "3", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    ckpts = out / "checkpoints"
    assert "interrupted after step 4 of 6" in err
    assert f"kept 2 checkpoints in {ckpts} (steps 0..3)" in err
    assert f"last: {ckpts / 'step-000003.safetensors'} (step 3)" in err
    assert f"continue with: circuitry train --resume {out}" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000000.safetensors", "step-000003.safetensors"]
    assert not (out / "model.safetensors").exists()
    monkeypatch.setattr(circuitry.train, "periodic_tokens", real)
    assert main(["train", "--resume", str(out)]) == 0  # the recorded 6 steps
    assert "resuming from" in capsys.readouterr().err
    _same(_weights(out), _weights(uninterrupted))


def test_resume_from_a_checkpoint_file_and_to_another_directory(uninterrupted, tmp_path):
    ckpt = uninterrupted / "checkpoints" / "step-000003.safetensors"
    point = resume_point(ckpt)
    assert (point.checkpoint, point.step) == (ckpt, 3)
    assert resume_point(uninterrupted).step == 6  # a run directory: its last checkpoint
    other = tmp_path / "other"
    assert main(["train", "--resume", str(ckpt), "--out", str(other)]) == 0
    _same(_weights(other), _weights(uninterrupted))


def test_checkpoint_without_state_resumes_with_a_warning(uninterrupted, tmp_path, capsys):
    """An older checkpoint (no saved state): the data is replayed exactly, the optimizer starts afresh."""
    run = tmp_path / "old"
    (run / "checkpoints").mkdir(parents=True)
    src = uninterrupted / "checkpoints" / "step-000003.safetensors"
    (run / "checkpoints" / src.name).write_bytes(src.read_bytes())
    assert main(["train", "--resume", str(run), "--steps", "4"]) == 0
    err = capsys.readouterr().err
    assert "no saved optimizer state" in err and "fresh AdamW moments" in err
    # one step from the step-3 weights on step 4's batch, with fresh moments, differs from the real step 4
    res = train(TrainRecipe(steps=4, n_layers=1, n_heads=2, d_model=16))
    resumed = _weights(run)
    assert not torch.equal(resumed["embed.W_E"], res.model.state_dict()["embed.W_E"])
    curve = json.loads((run / "loss.json").read_text())
    assert curve["step"] == [1, 2, 3, 4] and curve["loss"][:3] == [None] * 3  # the earlier losses are unknown
    assert curve["loss"][3] == json.loads((run / "train.json").read_text())["final_loss"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--layers", "2"], "--layers: a resumed run keeps the recipe its checkpoint records"),
    (["--steps", "6"], "--steps 6: "),
    (["--task", "ioi"], "--resume continues --task induction runs"),
])
def test_bad_resume_options(uninterrupted, argv, message, capsys):
    assert main(["train", "--resume", str(uninterrupted), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_resume_of_a_missing_path(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no such checkpoint file or directory" in capsys.readouterr().err
