"""`circuitry track CHECKPOINTS...`: detectors and in-context learning across training, and the phase change."""

from __future__ import annotations

import argparse

from circuitry.cli.options import add_model_options
from circuitry.fileio import check_output

HELP = "follow detectors and in-context learning across training checkpoints"  # listed by `circuitry --help`


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("track", help=HELP,
                       description="For each checkpoint (files, or directories with step-*.safetensors in them "
                                   "or in their checkpoints/ subdirectory, as written by circuitry train "
                                   "--checkpoint-every): the loss on repeated tokens, the in-context learning "
                                   "score, the best previous-token and induction scores and the strongest "
                                   "K-composition; and the step of the induction phase change.")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINTS", help="checkpoint files or directories")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--plot", default=None, metavar="OUT.png", help="also draw the curves (needs matplotlib)")
    add_model_options(p, device_map=False)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, out) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from circuitry.track import plan, plot_track, track

    if args.plot:
        check_output(args.plot, "--plot", (".png",))
        from circuitry.report.plots import require

        require()  # the install hint before any work
    plan(args.checkpoints)  # bad paths and mixed shapes fail before any model loads
    with Progress(TextColumn("[bold]track"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("step {task.fields[step]}"), TimeElapsedColumn(), console=out.err,
                  transient=True) as progress:
        task = progress.add_task("track", total=None, step="")
        result = track(args.checkpoints, device=args.device, dtype=args.dtype,
                       progress=lambda done, total, step: progress.update(task, completed=done, total=total,
                                                                          step=step))
    if args.plot:
        plot_track(result, args.plot)
    if args.json:
        out.json({**result.to_json(), "plot": args.plot})
        return 0
    render(result, out)
    if args.plot:
        out.print(f"plot written to {args.plot}")
    return 0


def render(result, out) -> None:
    from rich.table import Table

    pc = result.phase_change
    table = Table(title="checkpoints", title_justify="left")
    for col in ("step", "loss (repeats)", "ICL score", "previous-token", "induction", "K-composition"):
        table.add_column(col, justify="right")
    for s in result.checkpoints:
        mark = pc is not None and s.step == pc.step
        table.add_row(f"[bold red]{s.step}[/]" if mark else str(s.step), f"{s.loss_repeats:.3f}",
                      f"{s.icl_score:+.3f}", f"{s.previous_token:.3f} {s.previous_token_head}",
                      f"{s.induction:.3f} {s.induction_head}",
                      f"{s.k_composition:.2f}x {s.k_edge.split(' (')[0].replace(' -> ', '→')}" if s.k_edge else "—")
    out.print(table)
    out.print("[dim]ICL score: mean loss of tokens 40..50 minus tokens 5..10 on periodic repeats (nats; lower: "
              "more in-context learning); scores: the best head; K-composition: ratio to the random baseline[/]")
    if pc is None:
        out.print(f"no phase change: {result.reason}")
        return
    before = next(s for s in result.checkpoints if s.step == pc.step_before)
    at = next(s for s in result.checkpoints if s.step == pc.step)
    after = f", at or above {pc.induction_after:.3f} after it" if pc.induction_after is not None else ""
    out.print(f"[bold]phase change at step {pc.step}[/]: best induction score {before.induction:.3f} -> "
              f"{at.induction:.3f} (+{pc.induction_jump:.3f}) while the ICL score falls by {pc.icl_jump:.3f} "
              f"(largest fall in the run {pc.largest_icl_jump:.3f}); induction at most {pc.induction_before:.3f} "
              f"before it{after}")
