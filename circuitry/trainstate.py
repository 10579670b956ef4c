"""The training state saved beside each numbered checkpoint, so an interrupted run can be resumed exactly.

For `OUT/checkpoints/step-000600.safetensors` (the model, as before), the file
`OUT/train-state/state-000600.safetensors` holds what the weights alone do not
(kept out of `checkpoints/`, which holds models only, a third of the size):
AdamW's per-parameter state (`state.{i}.{name}`: exp_avg, exp_avg_sq, step, in
the order of `model.parameters()`), the state of the data generator
(`generator`), and the loss of every step so far (`losses`, float64 [step]).
Its metadata: `format`, `step`. Safetensors only: nothing is unpickled.

The state file is written before its checkpoint, so a checkpoint that exists
has its state unless it was written by an older version (which wrote none);
such a checkpoint resumes with fresh optimizer moments (`circuitry.train`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from circuitry.errors import UsageError

FORMAT = "circuitry-train-state/1"


STATE_DIR = "train-state"


def state_path(checkpoint: Path) -> Path:
    """`OUT/train-state/state-000600.safetensors` for `OUT/checkpoints/step-000600.safetensors` (for a checkpoint
    outside a checkpoints/ directory: train-state/ beside it)."""
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return run_dir / STATE_DIR / checkpoint.name.replace("step-", "state-", 1)


@dataclass(frozen=True)
class TrainState:
    step: int
    optimizer: dict[int, dict[str, torch.Tensor]]  # parameter index -> AdamW state
    generator: torch.Tensor  # uint8, torch.Generator.get_state()
    losses: list[float]


def save_state(checkpoint: Path, step: int, optimizer: torch.optim.Optimizer, generator: torch.Generator,
               losses: list[float]) -> Path:
    """Write the state of `step` beside `checkpoint` (atomically)."""
    from safetensors.torch import save_file

    from circuitry.fileio import atomic_write

    tensors: dict[str, torch.Tensor] = {"generator": generator.get_state().clone(),
                                        "losses": torch.tensor(losses, dtype=torch.float64).reshape(-1)}
    for i, entry in optimizer.state_dict()["state"].items():
        for name, value in entry.items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            tensors[f"state.{i}.{name}"] = value.detach().to("cpu").contiguous()
    path = state_path(checkpoint)
    meta = {"format": FORMAT, "step": str(step)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_state(checkpoint: Path, step: int) -> TrainState | None:
    """The state saved beside `checkpoint`, None when there is none (a checkpoint of an older version)."""
    from circuitry.model.io import read_safetensors, safetensors_metadata

    path = state_path(checkpoint)
    if not path.is_file():
        return None
    meta = safetensors_metadata(path)
    if meta.get("format") != FORMAT:
        raise UsageError(f"{path}: not a training state of this version (format {meta.get('format')!r}, "
                         f"expected {FORMAT!r})")
    if meta.get("step") != str(step):
        raise UsageError(f"{path}: holds the state of step {meta.get('step')}, but its checkpoint is step {step}")
    tensors = read_safetensors(path)
    if "generator" not in tensors or "losses" not in tensors:
        raise UsageError(f"{path}: incomplete training state (no generator or losses)")
    optimizer: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, index, name = key.split(".", 2)
            optimizer.setdefault(int(index), {})[name] = value
    losses = [float(x) for x in tensors["losses"].tolist()]
    if len(losses) != step:
        raise UsageError(f"{path}: {len(losses)} losses recorded for step {step}")
    return TrainState(step, optimizer, tensors["generator"], losses)


def recorded_recipe(checkpoint: Path) -> dict:
    """The recipe a checkpoint of `circuitry train` records in its metadata (a UsageError without one)."""
    from circuitry.model.io import safetensors_metadata

    raw = safetensors_metadata(checkpoint).get("recipe")
    try:
        recipe = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        recipe = None
    if not isinstance(recipe, dict):
        raise UsageError(f"{checkpoint}: records no training recipe in its metadata; only checkpoints written by "
                         f"circuitry train (--task induction) can be resumed")
    return recipe
