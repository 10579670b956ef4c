"""`circuitry plugins`: every plugin, its version and what it registers."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plugins", help="list plugins and what they register",
                       description="List every plugin found in the 'circuitry' entry-point group, "
                                   "its version, status and what it registers.")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, out) -> int:
    from dataclasses import asdict

    from rich.markup import escape
    from rich.table import Table

    from circuitry.plugins import get_manager

    infos = get_manager().summary()
    if args.json:
        out.json({"plugins": [asdict(i) for i in infos]})
        return 0
    table = Table(title="circuitry plugins", title_justify="left")
    for col in ("plugin", "version", "status", "registers"):
        table.add_column(col)
    for i in infos:
        regs = "; ".join(f"{k}: {', '.join(v)}" for k, v in i.registers.items())
        status = {"loaded": "[green]loaded[/]", "disabled": "[yellow]disabled[/]"}.get(
            i.status, f"[red]failed[/]: {escape(i.error)}")
        table.add_row(i.name, i.version, status, regs or "-")
    out.print(table)
    return 0
