"""`circuitry train`: train a small attention-only model with a live progress bar."""

from __future__ import annotations

import argparse
import shlex

from circuitry.fileio import check_output

# options that shape the model, with their defaults (left out of the recorded command when unchanged)
SHAPE_DEFAULTS = {"layers": 2, "heads": 4, "d_model": 64, "weight_decay": 0.3, "checkpoint_every": None}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a small attention-only model on periodic repeats",
                       description="Train a small attention-only transformer on periodic repeats of random "
                                   "tokens (BOS + a random block of 8..24 tokens tiled to the context). "
                                   "Induction heads form at a phase change a few hundred steps in.")
    p.add_argument("--steps", type=int, default=1500, help="optimiser steps (default 1500)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", default="runs/attn-only", metavar="DIR",
                   help="output directory, created with its parents if missing (default runs/attn-only)")
    p.add_argument("--layers", type=int, default=2, help="number of layers (default 2)")
    p.add_argument("--heads", type=int, default=4, help="heads per layer (default 4)")
    p.add_argument("--d-model", type=int, default=64, help="residual width (default 64)")
    p.add_argument("--weight-decay", type=float, default=0.3,
                   help="AdamW weight decay (default 0.3; it makes the K-composition of the circuit clearer)")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="also save numbered checkpoints every N steps under OUT/checkpoints")
    p.set_defaults(run=run)


def recorded_command(args: argparse.Namespace) -> str:
    """The command line that repeats this run, built from the parsed arguments (not sys.argv,
    which is the caller's own command when `circuitry.cli.main([...])` is called from Python)."""
    parts = ["circuitry", "train", "--steps", str(args.steps), "--seed", str(args.seed), "--out", str(args.out)]
    for name, default in SHAPE_DEFAULTS.items():
        value = getattr(args, name)
        if value != default:
            parts += ["--" + name.replace("_", "-"), str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def run(args: argparse.Namespace, out) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from circuitry.train import TrainRecipe, plot_losses, train

    check_output(args.out, "--out", directory=True)
    recipe = TrainRecipe(steps=args.steps, seed=args.seed, n_layers=args.layers, n_heads=args.heads,
                         d_model=args.d_model, weight_decay=args.weight_decay,
                         checkpoint_every=args.checkpoint_every)
    command = recorded_command(args)
    with Progress(TextColumn("[bold]training"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=out.err, transient=False) as progress:
        task = progress.add_task("train", total=recipe.steps, loss=float("nan"))

        def on_step(step: int, loss: float) -> None:
            progress.update(task, completed=step, loss=loss)

        result = train(recipe, out=args.out, on_step=on_step, command=command)
    png = plot_losses(result.losses, f"{args.out}/loss.png")
    out.print(f"trained {recipe.steps} steps in {result.seconds:.1f} s; final loss {result.losses[-1]:.3f}")
    plot = ", loss.png" if png else "; install matplotlib for loss.png"
    out.print(f"model: {args.out}  (loss curve: loss.json{plot})")
    if result.checkpoints:
        out.print(f"checkpoints: {len(result.checkpoints)} in {args.out}/checkpoints")
    return 0
