"""Console rendering of a VerificationReport: a rich table and a one-line summary."""

from __future__ import annotations

import math

from rich.markup import escape
from rich.table import Table


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"


def report_table(report, verbose: int = 0) -> Table:
    table = Table(title=f"{report.name}  ({report.spec})", title_justify="left",
                  caption=f"model {report.model} · data {report.data}", caption_justify="left")
    # ids and claims fold rather than end in '…' in narrow terminals: the id names the claim to fix
    table.add_column("check", style="bold", overflow="fold")
    table.add_column("claim", overflow="fold")
    table.add_column("measured", justify="right", no_wrap=True)
    table.add_column("expected", justify="right")
    table.add_column("result", justify="center", no_wrap=True)
    if verbose:
        table.add_column("time", justify="right", no_wrap=True)
    for c in report.checks:
        result = "[bold green]pass[/]" if c.passed else "[bold red]FAIL[/]"
        row = [escape(c.id), escape(c.claim), _fmt(c.value), escape(c.expect), result]
        if verbose:
            row.append(f"{c.seconds * 1000:.0f} ms")
        table.add_row(*row)
        if verbose and c.details.get("values"):
            for k, v in c.details["values"].items():
                extra = [""] if verbose else []
                table.add_row("", f"[dim]  {escape(k)}[/]", f"[dim]{_fmt(v)}[/]", "", "", *extra)
    return table


def summary_line(report) -> str:
    n, failed = len(report.checks), report.failed
    if not failed:
        return f"[bold green]{n} of {n} checks passed[/] in {report.seconds:.2f} s"
    names = ", ".join(f"{escape(c.id)} (measured {_fmt(c.value)}, expected {escape(c.expect)})" for c in failed)
    return f"[bold red]{len(failed)} of {n} checks failed[/]: {names}"
