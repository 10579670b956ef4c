"""`circuitry info MODEL`: a model's config, parameter count and origin (`--list`: the shipped models)."""

from __future__ import annotations

import argparse

from circuitry.cli.options import add_model_options

HELP = "show a model's config, parameter count and source"  # listed by `circuitry --help`


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help=HELP,
                       description="Show a model's config, parameter count and where it was loaded from.")
    p.add_argument("model", metavar="MODEL", nargs="?", default=None,
                   help="model reference: builtin:NAME, a path, hf:NAME ... (`circuitry models` lists them)")
    p.add_argument("--list", action="store_true", help="list the shipped models instead (as `circuitry models`)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    add_model_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, out) -> int:
    from rich.table import Table

    from circuitry.errors import UsageError
    from circuitry.sources import load_model

    if args.list:
        from circuitry.cli import models

        return models.run(args, out)
    if args.model is None:
        raise UsageError("info: give a MODEL (builtin:NAME, a path, hf:NAME ...); `circuitry models` lists the "
                         "shipped models")
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
