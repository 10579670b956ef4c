"""`circuitry verify SPEC...`: check every claim of circuit specs against a model, several models, or the
checkpoints of a training run (`circuitry.across`)."""

from __future__ import annotations

import argparse
import sys

from circuitry.cli.options import add_model_options
from circuitry.errors import UsageError
from circuitry.fileio import check_output

HELP = "check a circuit spec's claims against a model"  # listed by `circuitry --help`

STDIN = "-"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check a circuit spec's claims against a model",
                       description="Check every claim of one or more YAML circuit specs against a model, against "
                                   "several models (--model A --model B) or across the checkpoints of a training "
                                   "run (--checkpoints DIR): a table of checks x models or checkpoints, and the "
                                   "first checkpoint at which every check holds. Exit code 0: every check holds "
                                   "(with --checkpoints: at the last checkpoint; with several --model: on every "
                                   "model); 1: a check failed; 2: usage or spec error; 3: internal or plugin "
                                   "error.")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="YAML circuit spec file(s); - reads one from stdin")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--model", action="append", default=None, metavar="REF",
                   help="check against this model instead of the spec's; repeat it to check several models "
                        "(one table of checks x models)")
    p.add_argument("--checkpoints", action="append", default=None, metavar="DIR",
                   help="check every checkpoint of a training run: a directory with step-*.safetensors in it or "
                        "in its checkpoints/ subdirectory (circuitry train --checkpoint-every N), or checkpoint "
                        "files (repeatable); ordered by step as circuitry track orders them")
    p.add_argument("--data", default=None, metavar="NAME[:k=v,...]",
                   help="check on other data: the spec's dataset with the parameters given changed "
                        "(repeated:seq_len=20), another dataset plugin with its parameters (quote values with "
                        "commas: text:text=\"a, b\") or a token file; the reference data is the same with the next "
                        "seed")
    add_model_options(p)
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="per-node values (the nodes or edges that fail marked), the clean and intervened metric "
                        "values of intervention checks, and timings")
    p.add_argument("--html", default=None, metavar="FILE.html",
                   help="also write a self-contained HTML report: claims, circuit graph, attention heatmaps "
                        "(one model)")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="with --checkpoints or several --model: draw each check's value across them with its "
                        "threshold (needs matplotlib)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, out) -> int:
    models = args.model or []
    across = bool(args.checkpoints) or len(models) > 1
    if args.checkpoints and models:
        raise UsageError("give either --checkpoints or --model, not both")
    if args.html:
        if across:
            raise UsageError("--html reports on one model; across checkpoints or models use --plot FILE.png")
        check_output(args.html, "--html", (".html",))
    if args.plot:
        if not across:
            raise UsageError("--plot draws values across checkpoints or models: give --checkpoints DIR or "
                             "--model twice or more")
        check_output(args.plot, "--plot", (".png",))
        from circuitry.report.plots import require

        require()  # the install hint before any work
    specs = load_specs(args.specs)  # every spec is validated before any runs
    if args.data is not None:
        from circuitry.datasets import resolve

        resolve(args.data)  # a bad --data fails before any model loads
    if across:
        return run_across(args, specs, out)
    return run_one(args, specs, models[0] if models else None, out)


def run_one(args: argparse.Namespace, specs: list, model_ref: str | None, out) -> int:
    from circuitry.report.console import overall_line, report_table, summary_line
    from circuitry.verify import load_spec_model, verify

    reports = []
    for spec in specs:
        model, ref = load_spec_model(spec, model_ref, args.device, args.dtype, args.device_map)
        report = verify(spec, model=model, model_ref=ref, data=data_for(spec, args.data),
                        keep_patterns=bool(args.html))
        reports.append(report)
        if not args.json:
            for line in report.header:
                out.print(line, markup=False)
            out.print(report_table(report, args.verbose))
            out.print(summary_line(report), soft_wrap=True)  # one line, so it can be grepped
    if len(reports) > 1 and not args.json:
        out.print(overall_line(reports), soft_wrap=True)
    if args.html:
        from circuitry.figures import figures_for_verification
        from circuitry.report.html import write_html

        # the pictures are drawn from each report's shared run: no model runs again
        write_html([figures_for_verification(spec, report) for spec, report in zip(specs, reports)], args.html)
        out.info(f"wrote {args.html}")
    if args.json:
        if len(reports) == 1:
            out.json(reports[0].to_json())
        else:
            out.json({"passed": all(r.passed for r in reports), "reports": [r.to_json() for r in reports]})
    return 0 if all(r.passed for r in reports) else 1


def run_across(args: argparse.Namespace, specs: list, out) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from circuitry.across import checkpoint_subjects, model_subjects, plot_across, verify_across
    from circuitry.report.console import across_line, across_overall_line, across_table

    over = "checkpoints" if args.checkpoints else "models"
    subjects = checkpoint_subjects(args.checkpoints) if args.checkpoints else model_subjects(args.model)
    with Progress(TextColumn("[bold]verify"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[label]}"), TimeElapsedColumn(), console=out.err,
                  transient=True) as progress:
        bar = progress.add_task("verify", total=len(subjects), label="")
        results = verify_across(specs, subjects, over, data=[data_for(s, args.data) for s in specs],
                                device=args.device, dtype=args.dtype, device_map=args.device_map,
                                progress=lambda done, total, label: progress.update(bar, completed=done,
                                                                                    label=label))
    if args.plot:
        plot_across(results, args.plot)
    if args.json:
        docs = [a.to_json() for a in results]
        out.json({**docs[0], "plot": args.plot} if len(docs) == 1 else
                 {"passed": all(a.passed for a in results), "over": over, "specs": docs, "plot": args.plot})
    else:
        for a in results:
            out.print(across_table(a))
            out.print(across_line(a), soft_wrap=True)
        if len(results) > 1:
            out.print(across_overall_line(results), soft_wrap=True)
        if args.plot:
            out.print(f"plot written to {args.plot}")
    return 0 if all(a.passed for a in results) else 1


def data_for(spec, data: str | None):
    """The data to verify `spec` on: None (the spec's own), the spec's data with the parameters --data
    changes (when it names the same dataset), or the data --data names."""
    if data is None:
        return None
    from circuitry.datasets import parse_data_ref

    name, params = parse_data_ref(data)
    return {**spec.data, **params} if name == spec.data.get("name") else data


def load_specs(paths: list[str]) -> list:
    """Every spec loaded (`-`: from stdin, located as `<stdin>`); the problems of all of them raised together
    (file by file, line by line)."""
    from circuitry.spec import load_spec
    from circuitry.spec.loader import SpecError, SpecErrors, raise_all

    if paths.count(STDIN) > 1:
        raise UsageError("- (stdin) is given more than once: stdin holds one spec")
    specs, errors = [], []
    for path in paths:
        try:
            specs.append(load_spec(text=_read_stdin(), name="<stdin>") if path == STDIN else load_spec(path))
        except SpecErrors as exc:
            errors.extend(exc.errors)
        except SpecError as exc:
            errors.append(exc)
    if len(errors) > 1:
        raise SpecErrors(errors)
    raise_all(errors)
    return specs


def _read_stdin() -> str:
    try:
        return sys.stdin.read()
    except UnicodeDecodeError:
        from circuitry.spec.loader import Mark, SpecError

        raise SpecError(Mark("<stdin>", 1, 1), (), "stdin is not UTF-8 text") from None
