"""`circuitry patch MODEL --task FILE`: activation-patching sweeps of a contrastive task, as heatmaps."""

from __future__ import annotations

import argparse

from circuitry.cli.options import add_model_options
from circuitry.fileio import check_output

DEFAULT_WHAT = "resid_pre,attn_out,mlp_out,heads"

HELP = "activation patching of a task: which activations carry its effect"  # listed by `circuitry --help`


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("patch", help=HELP,
                       description="Patch each activation of the model (the residual stream and layer outputs per "
                                   "layer and position, each head's output, queries, keys, values or pattern) "
                                   "with the paired run of a contrastive task, and measure the task's metric: "
                                   "layer x position and layer x head heatmaps of the normalised effect (1: the "
                                   "patch carries the whole clean-corrupted difference). Noising by default "
                                   "(corrupted activations into the clean run).")
    p.add_argument("model", metavar="MODEL", help="model reference: builtin:NAME, a path, hf:NAME ...")
    p.add_argument("--task", required=True, metavar="FILE", help="a task file (kind: Task)")
    p.add_argument("--what", default=DEFAULT_WHAT, metavar="A,B",
                   help=f"what to patch, comma-separated: resid_pre, resid_mid, resid_post, attn_out, mlp_out, "
                        f"heads, q, k, v, q_input, k_input, v_input, pattern (default {DEFAULT_WHAT}; MLP kinds "
                        f"are left out for attention-only models)")
    p.add_argument("--per-position", action="store_true",
                   help="also split head kinds by position (layer x head x position)")
    p.add_argument("--denoise", action="store_true",
                   help="denoising: clean activations patched into the corrupted run")
    p.add_argument("--metric", default=None, metavar="NAME", help="a metric plugin (default: the task's)")
    p.add_argument("--top", type=int, default=8, metavar="K", help="strongest patches listed per kind (default 8)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--html", default=None, metavar="FILE.html", help="also write the heatmaps as a page")
    p.add_argument("--png", default=None, metavar="FILE.png", help="also draw the heatmaps as a PNG")
    add_model_options(p)
    p.set_defaults(run=run)


def _whats(text: str, model) -> list[str]:
    from circuitry.errors import UsageError, did_you_mean
    from circuitry.patching import WHATS

    whats = [w.strip() for w in text.split(",") if w.strip()]
    if not whats:
        raise UsageError(f"--what: give at least one of {', '.join(WHATS)}")
    for w in whats:
        if w not in WHATS:
            raise UsageError(f"--what: unknown kind {w!r}{did_you_mean(w, WHATS)}; one of {', '.join(WHATS)}")
    if model is not None and model.cfg.attn_only and text == DEFAULT_WHAT:
        whats = [w for w in whats if w != "mlp_out"]
    return whats


def run(args: argparse.Namespace, out) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from circuitry.errors import UsageError
    from circuitry.patching import activation_patching
    from circuitry.plugins import get_manager
    from circuitry.sources import load_model
    from circuitry.tasks.build import build_batch
    from circuitry.tasks.format import load_task

    if args.html:
        check_output(args.html, "--html", (".html",))
    if args.png:
        check_output(args.png, "--png", (".png",))
        from circuitry.report.plots import require

        require()
    if args.top < 1:
        raise UsageError(f"--top must be >= 1, got {args.top}")
    _whats(args.what, None)
    task = load_task(args.task)
    metric = get_manager().get("circuitry_metrics", args.metric or task.metric, "metric")
    model = load_model(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map)
    batch = build_batch(task, model)
    whats = _whats(args.what, model)
    results = []
    with Progress(TextColumn("[bold]patch[/] {task.description}"), BarColumn(), TextColumn("{task.completed}/"
                  "{task.total} passes"), TimeElapsedColumn(), console=out.err, transient=True) as progress:
        for what in whats:
            bar = progress.add_task(what, total=None)

            def advance(done: int, total: int, bar=bar) -> None:
                progress.update(bar, completed=done, total=total)

            results.append(activation_patching(model, batch, what, metric, denoise=args.denoise,
                                               per_position=True if args.per_position else None, progress=advance))
    ref = args.model
    if args.html or args.png:
        from circuitry.figures import figures_for_patching

        figures = figures_for_patching(results, ref, batch.description)
        if args.html:
            from circuitry.report.html import write_html

            write_html(figures, args.html)
            out.info(f"wrote {args.html}")
        if args.png:
            from circuitry.report.plots import figures_png

            figures_png(figures, args.png)
            out.info(f"wrote {args.png}")
    if args.json:
        out.json({"model": ref, "task": task.name, "data": batch.description, "metric": metric.name,
                  "direction": results[0].direction if results else "", "results": [_json(r) for r in results]})
        return 0
    _render(results, out, args.top, ref, batch.description, metric.name)
    return 0


def _json(result) -> dict:
    from circuitry.jsonable import finite_tree

    return {"what": result.what, "dims": list(result.dims), "labels": [list(x) for x in result.labels],
            "clean": result.clean, "corrupted": result.corrupted, "values": finite_tree(result.values.tolist()),
            "normalised": finite_tree(result.normalised.tolist()), "forward_passes": result.n_passes,
            "patches": result.n_patches}


def strongest(result, k: int) -> list[tuple[str, float, float]]:
    """The k patches with the largest normalised effect (NaN last): (cell label, normalised, metric value)."""
    import itertools
    import math

    cells = []
    for idx in itertools.product(*(range(n) for n in result.values.shape)):
        label = " ".join(result.labels[d][i] for d, i in enumerate(idx))
        cells.append((label, float(result.normalised[idx]), float(result.values[idx])))
    cells.sort(key=lambda c: -c[1] if math.isfinite(c[1]) else math.inf)
    return cells[:k]


def _render(results, out, top: int, model: str, data: str, metric: str) -> None:
    from rich.table import Table

    out.print(f"{model} on {data}; metric {metric}", soft_wrap=True)
    for r in results:
        out.print(f"[bold]{r.what}[/] ({r.direction}): clean {r.clean:.4g}, corrupted {r.corrupted:.4g}; "
                  f"{r.n_patches} patches in {r.n_passes} forward passes", soft_wrap=True)
        table = Table(title=f"strongest {r.what} patches", title_justify="left")
        table.add_column(" ".join(r.dims))
        table.add_column("normalised", justify="right")
        table.add_column(metric, justify="right")
        for label, norm, value in strongest(r, top):
            table.add_row(label, "—" if norm != norm else f"{norm:.3f}", f"{value:.4g}")
        out.print(table)
