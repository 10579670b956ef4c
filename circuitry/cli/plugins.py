"""`circuitry plugins`: every plugin, its version, status and what it registers.

It never fails because of one plugin: a plugin that failed to import or to
register is shown as failed with the reason, and a name registered by two
plugins is shown as a clash on both rows, with the `-p no:NAME` hint.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plugins", help="list plugins and what they register",
                       description="List every plugin found in the 'circuitry' entry-point group, "
                                   "its version, status (loaded, failed, disabled, clash) and what it "
                                   "registers.")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=run)


def _status(info) -> str:
    """The status cell of one plugin (rich markup)."""
    from rich.markup import escape

    if info.status == "loaded":
        return "[green]loaded[/]"
    if info.status == "disabled":
        return "[yellow]disabled[/]"
    if info.status == "clash":
        return "[red]clash[/]: " + "; ".join(escape(c.message) for c in info.clashes)
    return f"[red]{escape(info.status)}[/]: {escape(info.error)}"


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
        table.add_row(escape(i.name), escape(i.version), _status(i), escape(regs) or "-")
    out.print(table)
    return 0
