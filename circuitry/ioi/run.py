"""`circuitry train --task ioi`: train, measure on held-out prompts, write the run's files.

The files are those of every `circuitry train` run (`circuitry.train.write_run`:
model.safetensors, config.json, train.json, loss.json, checkpoints), plus the
tokenizer (tokenizer.json, written with the model) and, in train.json,
`held_out`: the accuracy and logit difference on the fixed held-out prompts
(`circuitry.ioi.measure.held_out`) of the recipe's templates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from circuitry.ioi.measure import evaluate, held_out
from circuitry.ioi.recipe import IOIRecipe, train_ioi
from circuitry.jsonable import strict_dumps
from circuitry.model import HookedTransformer
from circuitry.train import TrainResult, save_checkpoint, write_run


def held_out_scores(model: HookedTransformer, templates: str) -> dict[str, dict]:
    """Scores on the held-out prompts with and without filler prefixes."""
    return {"prompts": evaluate(model, held_out(templates=templates)).as_dict(),
            "prompts_without_prefix": evaluate(model, held_out(max_prefix=0, templates=templates)).as_dict()}


def train_ioi_run(recipe: IOIRecipe, out: str | Path | None = None,
                  on_step: Callable[[int, float], None] | None = None, command: str | None = None) -> TrainResult:
    """Train an IOI model; with `out`, write the model, tokenizer, records and checkpoints there."""
    out_dir = Path(out) if out is not None else None
    recipe_doc = dataclasses.asdict(recipe)
    meta = {"recipe": strict_dumps(recipe_doc, indent=None), "command": command or ""}
    checkpoints: list[Path] = []

    def on_checkpoint(step: int, model: HookedTransformer) -> None:
        if out_dir is not None:
            checkpoints.append(save_checkpoint(model, out_dir, step, meta))

    model, losses, seconds = train_ioi(recipe, on_step=on_step, on_checkpoint=on_checkpoint)
    if out_dir is not None:
        extra = {"task": "ioi", "held_out": held_out_scores(model, recipe.templates)}
        write_run(out_dir, model, losses, seconds, recipe_doc, command, meta, extra)
    return TrainResult(model, losses, seconds, checkpoints)
