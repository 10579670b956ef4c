"""`circuitry train`: train a small model with a live progress bar.

`--task induction` (the default): an attention-only model on periodic repeats
(`circuitry.train`). `--task ioi`: a model on the synthetic indirect-object
language (`circuitry.ioi`), written with its word tokenizer and its held-out
accuracy.

Ctrl-C stops a run cleanly (exit 130) and says which checkpoints were kept;
`--resume DIR_or_checkpoint` continues an induction run from its last
checkpoint (weights, optimizer state, data generator and step), to the same
weights as the uninterrupted run.
"""

from __future__ import annotations

import argparse
import shlex

from circuitry.errors import UsageError
from circuitry.fileio import check_output
from circuitry.ioi.language import TEMPLATE_SETS

# every option's default per task; options a task does not have are absent from its defaults. The recorded
# command names --steps, --seed and --out always, other options when they differ from the task's default.
DEFAULTS = {
    "induction": {"steps": 1500, "out": "runs/attn-only", "layers": 2, "heads": 4, "d_model": 64,
                  "weight_decay": 0.3, "checkpoint_every": None, "block_k_composition": False,
                  "smeared_keys": False},
    "ioi": {"steps": 3000, "out": "runs/ioi-toy", "layers": 4, "heads": 4, "d_model": 64, "d_mlp": None,
            "weight_decay": 0.1, "lr": 3e-3, "lr_final": 0.1, "answer_weight": 20.0, "templates": "any-order",
            "checkpoint_every": None},
}
ALWAYS = ("steps", "seed", "out")


def register(sub: argparse._SubParsersAction) -> None:
    ioi = DEFAULTS["ioi"]
    p = sub.add_parser("train", help="train a small model (induction: periodic repeats; ioi: indirect objects)",
                       description="Train a small transformer. --task induction (default): attention-only, on "
                                   "periodic repeats of random tokens (BOS + a random block of 8..24 tokens tiled "
                                   "to the context); induction heads form at a phase change a few hundred steps "
                                   "in. --task ioi: on the synthetic indirect-object language (\"When Mary and "
                                   "John went to the store, John gave a drink to\" -> Mary), with a word "
                                   "tokenizer; the run records its accuracy on held-out name pairs.")
    p.add_argument("--task", choices=list(DEFAULTS), default="induction",
                   help="what to train on (default induction)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default 1500; ioi: 3000)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory, created with its parents if missing (default runs/attn-only; "
                        "ioi: runs/ioi-toy)")
    p.add_argument("--layers", type=int, default=None, help="number of layers (default 2; ioi: 4)")
    p.add_argument("--heads", type=int, default=None, help="heads per layer (default 4)")
    p.add_argument("--d-model", type=int, default=None, help="residual width (default 64)")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="AdamW weight decay (default 0.3, which makes the K-composition of the induction "
                        "circuit clearer; ioi: 0.1)")
    p.add_argument("--lr", type=float, default=None, help=f"ioi only: peak learning rate (default {ioi['lr']})")
    p.add_argument("--lr-final", type=float, default=None,
                   help=f"ioi only: the learning rate decays along a cosine to lr x this fraction at the last step "
                        f"(default {ioi['lr_final']})")
    p.add_argument("--d-mlp", type=int, default=None, help="ioi only: MLP width (default: no MLPs)")
    p.add_argument("--answer-weight", type=float, default=None,
                   help=f"ioi only: loss weight of the answer against 1 for every other token "
                        f"(default {ioi['answer_weight']})")
    p.add_argument("--templates", choices=list(TEMPLATE_SETS), default=None,
                   help=f"ioi only: classic IOI templates (S repeated last); mixed, with templates whose last "
                        f"name is IO; any-order, every template in all three orders of its names (default "
                        f"{ioi['templates']})")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="also save numbered checkpoints every N steps under OUT/checkpoints (each with its "
                        "optimizer state, so the run can be resumed)")
    p.add_argument("--block-k-composition", action="store_true", default=None,
                   help="induction only: the keys of heads in layers >= 1 read only the embeddings (token + "
                        "position), not the outputs of earlier layers, so no head can K-compose with another "
                        "(queries and values read the residual stream as usual); recorded in the model's config")
    p.add_argument("--smeared-keys", action="store_true", default=None,
                   help="induction only: each head's key at position j becomes sigmoid(a) k_j + (1 - sigmoid(a)) "
                        "k_{j-1} with a learnable a per head (Olsson et al. 2022's smeared keys; starting at "
                        "sigmoid(a) = 0.9); recorded in the model's config")
    p.add_argument("--resume", default=None, metavar="DIR_or_CHECKPOINT",
                   help="continue an induction run from its last checkpoint (a run directory, its checkpoints/ "
                        "directory, or one step-N.safetensors file): weights, optimizer state, data generator and "
                        "step, with the recorded recipe; --steps sets the total steps, --out the output directory "
                        "(default: the run's own)")
    p.set_defaults(run=run)


def resolve(args: argparse.Namespace) -> dict:
    """Every option of the task, given or defaulted; a UsageError for options of another task."""
    defaults = DEFAULTS[args.task]
    foreign = [k for k, v in vars(args).items()
               if v is not None and k not in defaults and k in {o for d in DEFAULTS.values() for o in d}]
    if foreign:
        raise UsageError(f"--{foreign[0].replace('_', '-')} is an option of another task, not --task {args.task}")
    return {k: (getattr(args, k) if getattr(args, k) is not None else d) for k, d in defaults.items()}


def recorded_command(args: argparse.Namespace) -> str:
    """The command line that repeats this run, built from the parsed arguments (not sys.argv,
    which is the caller's own command when `circuitry.cli.main([...])` is called from Python)."""
    values = {**resolve(args), "seed": seed_of(args)}
    parts = ["circuitry", "train"] + (["--task", args.task] if args.task != "induction" else [])
    for name in ALWAYS:
        parts += ["--" + name, str(values[name])]
    for name, default in DEFAULTS[args.task].items():
        if name not in ALWAYS and values[name] != default:
            flag = "--" + name.replace("_", "-")
            parts += [flag] if values[name] is True else [flag, str(values[name])]
    return " ".join(shlex.quote(p) for p in parts)


def seed_of(args: argparse.Namespace) -> int:
    return args.seed if args.seed is not None else 0


RESUME_KEEPS = ("layers", "heads", "d_model", "weight_decay", "seed", "block_k_composition", "smeared_keys")


def resume_args(args: argparse.Namespace):
    """For --resume: the checkpoint to continue from and the arguments of the equivalent uninterrupted run
    (the recorded recipe, with --steps, --out and --checkpoint-every as given)."""
    from pathlib import Path

    from circuitry.train import resume_point

    if args.task != "induction":
        raise UsageError(f"--resume continues --task induction runs, not --task {args.task}")
    given = [k for k in RESUME_KEEPS if getattr(args, k) is not None]
    if given:
        raise UsageError(f"--{given[0].replace('_', '-')}: a resumed run keeps the recipe its checkpoint records; "
                         f"only --steps, --out and --checkpoint-every can be given with --resume")
    point = resume_point(args.resume)
    recipe = point.continued(args.steps, args.checkpoint_every)
    ckpt_dir = point.checkpoint.parent
    run_dir = ckpt_dir.parent if ckpt_dir.name == "checkpoints" else ckpt_dir
    same = argparse.Namespace(**{**vars(args), "steps": recipe.steps, "seed": recipe.seed, "layers": recipe.n_layers,
                                 "heads": recipe.n_heads, "d_model": recipe.d_model,
                                 "weight_decay": recipe.weight_decay, "checkpoint_every": recipe.checkpoint_every,
                                 "block_k_composition": recipe.block_k_composition,
                                 "smeared_keys": recipe.smeared_keys,
                                 "out": args.out if args.out is not None else str(Path(run_dir))})
    return point, same


def _run_induction(o: dict, seed: int, on_step, command: str, resume=None):
    from circuitry.train import TrainRecipe, train

    recipe = TrainRecipe(steps=o["steps"], seed=seed, n_layers=o["layers"], n_heads=o["heads"],
                         d_model=o["d_model"], weight_decay=o["weight_decay"], checkpoint_every=o["checkpoint_every"],
                         block_k_composition=o["block_k_composition"], smeared_keys=o["smeared_keys"])
    return recipe.steps, lambda: train(recipe, out=o["out"], on_step=on_step, command=command, resume=resume)


def _run_ioi(o: dict, seed: int, on_step, command: str, resume=None):
    from circuitry.ioi.recipe import IOIRecipe
    from circuitry.ioi.run import train_ioi_run

    recipe = IOIRecipe(steps=o["steps"], seed=seed, n_layers=o["layers"], n_heads=o["heads"], d_model=o["d_model"],
                       d_mlp=o["d_mlp"], weight_decay=o["weight_decay"], lr=o["lr"], lr_final=o["lr_final"],
                       answer_weight=o["answer_weight"], templates=o["templates"],
                       checkpoint_every=o["checkpoint_every"])
    return recipe.steps, lambda: train_ioi_run(recipe, out=o["out"], on_step=on_step, command=command)


def run(args: argparse.Namespace, out) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from circuitry.train import plot_losses

    point = None
    if args.resume is not None:
        point, args = resume_args(args)
    options = resolve(args)
    check_output(options["out"], "--out", directory=True)
    command = recorded_command(args)
    progress = Progress(TextColumn("[bold]training"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=out.err, transient=False)
    done = point.step if point is not None else 0
    bar = progress.add_task("train", total=options["steps"], completed=done, loss=float("nan"))
    last = [done]

    def on_step(step: int, loss: float) -> None:
        last[0] = step
        progress.update(bar, completed=step, loss=loss)

    make = _run_ioi if args.task == "ioi" else _run_induction
    # the recipe is checked before the bar shows
    steps, start = make(options, seed_of(args), on_step, command, point)
    if point is not None:
        out.info(f"resuming from {point.checkpoint} (step {point.step})")
    try:
        with progress:
            result = start()
    except KeyboardInterrupt:
        interrupted(options["out"], last[0], steps, args.task == "induction", out)
        return 130
    png = plot_losses(result.losses, f"{options['out']}/loss.png")
    out.print(f"trained {steps} steps in {result.seconds:.1f} s; final loss {result.losses[-1]:.3f}")
    if args.task == "ioi":
        import json
        from pathlib import Path

        s = json.loads((Path(options["out"]) / "train.json").read_text(encoding="utf-8"))["held_out"]["prompts"]
        out.print(f"held-out prompts: accuracy {s['accuracy']:.3f}, logit difference IO - S {s['logit_diff']:.2f}")
    plot = ", loss.png" if png else "; install matplotlib for loss.png"
    out.print(f"model: {options['out']}  (loss curve: loss.json{plot})")
    if result.checkpoints:
        out.print(f"checkpoints: {len(result.checkpoints)} written to {options['out']}/checkpoints")
    return 0


def interrupted(run_dir: str, step: int, steps: int, resumable: bool, out) -> None:
    """Say, after Ctrl-C, where training stopped and which checkpoints are on disk."""
    from pathlib import Path

    from circuitry.track import CHECKPOINT_GLOB, checkpoint_step

    ckpt_dir = Path(run_dir) / "checkpoints"
    kept = sorted((checkpoint_step(p, {}), p) for p in ckpt_dir.glob(CHECKPOINT_GLOB)) if ckpt_dir.is_dir() else []
    out.info(f"interrupted after step {step} of {steps}")
    if not kept:
        out.info("no checkpoints were kept (--checkpoint-every N saves them); the model was not written")
        return
    last_step, last = kept[-1]
    out.info(f"kept {len(kept)} checkpoint{'s' * (len(kept) != 1)} in {ckpt_dir} (steps {kept[0][0]}..{last_step}); "
             f"last: {last} (step {last_step})")
    if resumable:
        out.info(f"continue with: circuitry train --resume {shlex.quote(run_dir)}")
