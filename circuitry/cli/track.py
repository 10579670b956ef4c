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
                                   "K-composition; the step of the induction phase change; the bump of the training "
                                   "loss (the run's loss.json) and its distance from the phase change; and the "
                                   "loss by token index before and after the phase change.")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINTS", help="checkpoint files or directories")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--plot", default=None, metavar="OUT.png",
                   help="also draw the curves, and the training loss and loss by token index in OUT-loss.png "
                        "(needs matplotlib)")
    p.add_argument("--loss", default=None, metavar="LOSS.json",
                   help="the training loss curve (default: loss.json of the checkpoints' run directory)")
    add_model_options(p, device_map=False)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, out) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from circuitry.track import loss_curve, loss_plot_path, plan, plot_losses, plot_track, track

    loss_png = None
    if args.plot:
        check_output(args.plot, "--plot", (".png",))
        loss_png = str(loss_plot_path(args.plot))
        from circuitry.report.plots import require

        require()  # the install hint before any work
    rows = plan(args.checkpoints)  # bad paths and mixed shapes fail before any model loads
    loss_curve([p for _, p in rows], args.loss)  # and so does a bad loss curve
    with Progress(TextColumn("[bold]track"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("step {task.fields[step]}"), TimeElapsedColumn(), console=out.err,
                  transient=True) as progress:
        task = progress.add_task("track", total=None, step="")
        result = track(args.checkpoints, device=args.device, dtype=args.dtype, loss_file=args.loss,
                       progress=lambda done, total, step: progress.update(task, completed=done, total=total,
                                                                          step=step))
    if args.plot and loss_png:
        plot_track(result, args.plot)
        plot_losses(result, loss_png)
    if args.json:
        out.json({**result.to_json(), "plot": args.plot, "loss_plot": loss_png})
        return 0
    render(result, out)
    render_losses(result, out)
    if args.plot:
        out.print(f"plots written to {args.plot} and {loss_png}")
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


def render_losses(result, out) -> None:
    """The loss bump beside the induction phase change, and the loss by token index."""
    from rich.table import Table

    from circuitry.track import POSITION_BUCKETS, bucket_means, position_checkpoints

    pc, curve, bump = result.phase_change, result.loss_curve, result.bump
    table = Table(title="phase change: training loss and induction heads", title_justify="left")
    for col, just in (("", "left"), ("step", "right"), ("from..to", "right"), ("measured", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]  # "left" / "right"
    if bump is not None:
        table.add_row("loss bump", str(bump.step), f"{bump.start}..{bump.end}",
                      f"smoothed loss {bump.loss_before:.3f} -> {bump.loss_after:.3f} ({bump.window}-step window), "
                      f"falling {bump.peak_rate * 1000:.1f} nats/1000 steps against {bump.plateau_rate * 1000:.1f} "
                      f"on the plateau")
    else:
        why = curve.reason if curve is not None else "no loss curve given"
        table.add_row("loss bump", "none", "", why)
    if pc is not None:
        table.add_row("induction heads", str(pc.step), f"{pc.step_before}..{pc.step}",
                      f"best induction +{pc.induction_jump:.3f}, ICL score falls {pc.icl_jump:.3f}")
    else:
        table.add_row("induction heads", "none", "", result.reason)
    dist = result.bump_distance
    if dist is not None:
        where = "before" if dist < 0 else "after" if dist > 0 else "at"
        table.add_row("distance", f"{dist:+d}", "", f"the bump is {abs(dist)} steps {where} the phase-change step"
                      if dist else "the bump is at the phase-change step")
    out.print(table)
    if curve is not None and curve.path:
        out.print(f"[dim]loss bump: steepest descent of the smoothed training loss ({curve.path}) against the "
                  f"slowest descent before it (circuitry.bump); induction heads: the interval of the phase "
                  f"change[/]")
    shown = position_checkpoints(result)
    if not shown or not shown[0][1].loss_by_token:
        return
    pos = Table(title="loss by token index (nats, mean over the ICL data: periodic repeats)", title_justify="left")
    pos.add_column("checkpoint", justify="left")
    pos.add_column("step", justify="right")
    for lo, hi in POSITION_BUCKETS:
        pos.add_column(f"token {lo}" if lo == hi else f"{lo}-{hi}", justify="right")
    for role, s in shown:
        pos.add_row(role, str(s.step), *(f"{v:.3f}" for v in bucket_means(s.loss_by_token)))
    out.print(pos)
