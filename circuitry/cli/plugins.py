"""`circuitry plugins`: every plugin, its version, status and what it registers.

It never fails because of one plugin: a plugin that failed to import or to
register is shown as failed with the reason, and a name registered by two
plugins is shown as a clash on both rows, with the `-p no:NAME` hint.
`--datasets`: each dataset with its parameters and their defaults, as a data
reference `NAME:key=value,...` takes them.
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "list plugins and what they register"  # listed by `circuitry --help`


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plugins", help=HELP,
                       description="List every plugin found in the 'circuitry' entry-point group, "
                                   "its version, status (loaded, failed, disabled, clash) and what it "
                                   "registers.")
    p.add_argument("--datasets", action="store_true",
                   help="list each dataset with its parameters and their defaults (for --data NAME:key=value,...)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=run)


def _value(value: Any) -> str:
    """A parameter's default as written in a data reference ('' for an empty text, none for no default)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return "''" if value == "" else str(value)


def _limits(low: Any, high: Any) -> str:
    if low is not None and high is not None:
        return f"{low}..{high}"
    return f">= {low}" if low is not None else f"<= {high}" if high is not None else ""


def dataset_rows(manager: Any) -> list[dict]:
    """name, plugin, description and parameters (name -> default, limits) of every dataset."""
    rows = []
    for name, ds in manager.datasets().items():
        params = {k: {"default": v, "limits": list(ds.limits[k]) if k in ds.limits else None}
                  for k, v in ds.params.items()}
        rows.append({"name": name, "plugin": manager.owner("circuitry_datasets", name),
                     "description": ds.description, "parameters": params})
    return sorted(rows, key=lambda r: r["name"])


def _datasets(args: argparse.Namespace, out) -> int:
    from rich.markup import escape
    from rich.table import Table

    from circuitry.plugins import get_manager

    rows = dataset_rows(get_manager())
    if args.json:
        out.json({"datasets": rows})
        return 0
    table = Table(title="datasets: --data NAME:key=value,...  (in a spec: data: {name: NAME, key: value})",
                  title_justify="left")
    for col in ("dataset", "parameters (default)", "plugin", "description"):
        table.add_column(col, no_wrap=col in ("dataset", "plugin"))
    for r in rows:
        params = [f"{k}={_value(p['default'])}" + (f" ({_limits(*p['limits'])})" if p["limits"] else "")
                  for k, p in r["parameters"].items()]
        table.add_row(escape(r["name"]), escape(", ".join(params)) or "-", escape(r["plugin"]),
                      escape(r["description"]))
    out.print(table)
    return 0


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

    if args.datasets:
        return _datasets(args, out)
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
