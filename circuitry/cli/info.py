"""`circuitry info MODEL`: a model's config, parameter count and origin."""

from __future__ import annotations

import argparse

from circuitry.cli.options import add_model_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show a model's config, parameter count and source",
                       description="Show a model's config, parameter count and where it was loaded from.")
    p.add_argument("model", metavar="MODEL", help="model reference: builtin:NAME or a path")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    add_model_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, out) -> int:
    from rich.table import Table

    from circuitry.sources import load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map)
    cfg = model.cfg.to_dict()
    doc = {"model": args.model, "source": model.source, "n_params": model.n_params(), "config": cfg}
    if args.json:
        out.json(doc)
        return 0
    table = Table(title=f"{args.model}", show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value")
    table.add_row("source", str(model.source))
    table.add_row("parameters", f"{model.n_params():,}")
    for k, v in cfg.items():
        table.add_row(k, str(v))
    out.print(table)
    return 0
