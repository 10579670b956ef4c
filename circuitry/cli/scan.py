"""`circuitry scan MODEL`: every head's detector scores and the strongest composition edges."""

from __future__ import annotations

import argparse

from circuitry.cli.options import add_model_options
from circuitry.fileio import check_output

HELP = "score every head with the detectors"  # listed by `circuitry --help`


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scan", help=HELP,
                       description="Score every head with every detector plugin (or those named) on one "
                                   "cached run, and list the strongest composition edges.")
    p.add_argument("model", metavar="MODEL", help="model reference: builtin:NAME, a path, hf:NAME ...")
    p.add_argument("--data", default=None, metavar="REF",
                   help="data: NAME[:key=value,...] of a dataset plugin or a token file "
                        "(default: repeated:batch=32,seq_len=10,n_repeats=2,seed=0)")
    p.add_argument("--detectors", default=None, metavar="A,B", help="only these detectors (comma-separated)")
    p.add_argument("--top", type=int, default=5, metavar="K", help="composition edges shown per kind (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--html", default=None, metavar="FILE.html",
                   help="also write a self-contained HTML page: head-score grids and composition matrices")
    add_model_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, out) -> int:
    if args.html:
        check_output(args.html, "--html", (".html",))
    from circuitry.datasets import make_batch
    from circuitry.scan import scan
    from circuitry.sources import load_model

    names = [n.strip() for n in args.detectors.split(",") if n.strip()] if args.detectors else None
    from circuitry.scan import select_detectors

    select_detectors(names)  # unknown names fail before the model loads
    model = load_model(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map)
    batch = make_batch(model, args.data).to(model.device)
    result = scan(model, batch, names, model_ref=args.model)
    if args.html:
        from circuitry.figures import figures_for_scan
        from circuitry.report.html import write_html

        write_html(figures_for_scan(result), args.html)
        out.info(f"wrote {args.html}")
    if args.json:
        out.json(result.to_json())
        return 0
    render(result, out, args.top)
    return 0


def render(result, out, top: int) -> None:
    from rich.table import Table

    from circuitry.names import head_index

    table = Table(title=f"{result.model} — {result.data}", title_justify="left")
    table.add_column("head", style="bold")
    for name in result.heads:
        table.add_column(name, justify="right")
    for head in result.head_names():
        l, h = head_index(head)
        cells = []
        for name, scores in result.heads.items():
            v = float(scores[l, h])
            hi = v >= result.detectors[name].threshold
            cells.append(f"[bold green]{v:.3f}[/]" if hi else f"{v:.3f}")
        table.add_row(head, *cells)
    out.print(table)
    out.print("[dim]bold green: at or above the detector's threshold "
              + ", ".join(f"{n} {d.threshold}" for n, d in result.detectors.items() if d.kind == "head")
              + "[/]")
    for pname, ps in result.pairs.items():
        comp = Table(title=f"strongest {pname} edges (score, ratio to the random baseline)", title_justify="left")
        for col in ("kind", "from", "to", "score", "baseline", "ratio"):
            comp.add_column(col, justify="right" if col in ("score", "baseline", "ratio") else "left")
        for kind in ps.scores:
            for row in result.pair_list(pname, kind, top):
                ratio = row["score"] / row["baseline"] if row["baseline"] else float("nan")
                style = "[bold green]" if ratio >= 1.5 else ""
                comp.add_row(kind, row["from"], row["to"], f"{row['score']:.3f}", f"{row['baseline']:.3f}",
                             f"{style}{ratio:.2f}x" + ("[/]" if style else ""))
        out.print(comp)
