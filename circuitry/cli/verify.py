"""`circuitry verify SPEC...`: check every claim of circuit specs against models."""

from __future__ import annotations

import argparse

from circuitry.cli.options import add_model_options
from circuitry.fileio import check_output


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check a circuit spec's claims against a model",
                       description="Check every claim of one or more YAML circuit specs against a model. "
                                   "Exit code 0: every check holds; 1: a check failed; 2: usage or spec error; "
                                   "3: internal or plugin error.")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="YAML circuit spec file(s)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--model", default=None, metavar="REF", help="check against this model instead of the spec's")
    p.add_argument("--data", default=None, metavar="NAME[:k=v,...]",
                   help="check on other data: the spec's dataset with the parameters given changed "
                        "(repeated:seq_len=20), another dataset plugin with its parameters (quote values with "
                        "commas: text:text=\"a, b\") or a token file; the reference data is the same with the next "
                        "seed")
    add_model_options(p)
    p.add_argument("-v", "--verbose", action="count", default=0, help="per-node values and timings")
    p.add_argument("--html", default=None, metavar="FILE.html",
                   help="also write a self-contained HTML report: claims, circuit graph, attention heatmaps")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, out) -> int:
    from circuitry.report.console import report_table, summary_line
    from circuitry.verify import load_spec_model, verify

    if args.html:
        check_output(args.html, "--html", (".html",))
    specs = load_specs(args.specs)  # every spec is validated before any runs
    if args.data is not None:
        from circuitry.datasets import resolve

        resolve(args.data)  # a bad --data fails before any model loads
    reports = []
    for spec in specs:
        model, ref = load_spec_model(spec, args.model, args.device, args.dtype, args.device_map)
        report = verify(spec, model=model, model_ref=ref, data=data_for(spec, args.data),
                        keep_patterns=bool(args.html))
        reports.append(report)
        if not args.json:
            for line in report.header:
                out.print(line, markup=False)
            out.print(report_table(report, args.verbose))
            out.print(summary_line(report), soft_wrap=True)  # one line, so it can be grepped
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


def data_for(spec, data: str | None):
    """The data to verify `spec` on: None (the spec's own), the spec's data with the parameters --data
    changes (when it names the same dataset), or the data --data names."""
    if data is None:
        return None
    from circuitry.datasets import parse_data_ref

    name, params = parse_data_ref(data)
    return {**spec.data, **params} if name == spec.data.get("name") else data


def load_specs(paths: list[str]) -> list:
    """Every spec loaded; the problems of all of them raised together (file by file, line by line)."""
    from circuitry.spec import load_spec
    from circuitry.spec.loader import SpecError, SpecErrors, raise_all

    specs, errors = [], []
    for path in paths:
        try:
            specs.append(load_spec(path))
        except SpecErrors as exc:
            errors.extend(exc.errors)
        except SpecError as exc:
            errors.append(exc)
    if len(errors) > 1:
        raise SpecErrors(errors)
    raise_all(errors)
    return specs
