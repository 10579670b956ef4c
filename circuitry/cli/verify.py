"""`circuitry verify SPEC...`: check every claim of circuit specs against models."""

from __future__ import annotations

import argparse

from circuitry.fileio import check_output


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check a circuit spec's claims against a model",
                       description="Check every claim of one or more YAML circuit specs against a model. "
                                   "Exit code 0: every check holds; 1: a check failed; 2: usage or spec error; "
                                   "3: internal or plugin error.")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="YAML circuit spec file(s)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--model", default=None, metavar="REF", help="check against this model instead of the spec's")
    p.add_argument("--device", default=None, help="torch device (cpu, cuda, ...)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="per-node values and timings")
    p.add_argument("--html", default=None, metavar="FILE.html",
                   help="also write a self-contained HTML report: claims, circuit graph, attention heatmaps")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, out) -> int:
    from circuitry.report.console import report_table, summary_line
    from circuitry.spec import load_spec
    from circuitry.verify import verify

    if args.html:
        check_output(args.html, "--html", (".html",))
    specs = [load_spec(path) for path in args.specs]  # every spec is validated before any runs
    from circuitry.verify import load_spec_model

    reports, models = [], []
    for spec in specs:
        model, ref = load_spec_model(spec, args.model, args.device)
        report = verify(spec, model=model, model_ref=ref)
        reports.append(report)
        models.append(model if args.html else None)  # kept for the HTML figures only
        if not args.json:
            for line in report.header:
                out.print(line, markup=False)
            out.print(report_table(report, args.verbose))
            out.print(summary_line(report), soft_wrap=True)  # one line, so it can be grepped
    if args.html:
        from circuitry.figures import figures_for_verification
        from circuitry.report.html import write_html

        write_html([figures_for_verification(spec, report, model=model)
                    for spec, report, model in zip(specs, reports, models)], args.html)
        out.info(f"wrote {args.html}")
    if args.json:
        if len(reports) == 1:
            out.json(reports[0].to_json())
        else:
            out.json({"passed": all(r.passed for r in reports), "reports": [r.to_json() for r in reports]})
    return 0 if all(r.passed for r in reports) else 1
