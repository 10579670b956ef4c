"""Console rendering of verification: a rich table per report, one-line summaries (per spec and for several
specs), and the checks x checkpoints (or models) table of `circuitry.across`."""

from __future__ import annotations

import math

from rich.markup import escape
from rich.table import Table

PASS, FAIL = "[bold green]pass[/]", "[bold red]FAIL[/]"
METRIC_ROWS = {"metric_clean": "clean run", "metric_intervened": "intervened run", "metric_corrupted": "corrupted run"}


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"


def _short(value: float | None) -> str:
    """Two decimals (three significant digits from 1000 on), for the cells of wide tables."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.2f}" if abs(value) < 1000 else f"{value:.3g}"


def report_table(report, verbose: int = 0) -> Table:
    """One row per check; with `verbose`, the time of each, the value of each node or edge of a check that
    has several (the ones that break the expectation marked FAIL) and the metric's clean, intervened and
    corrupted values of intervention and metric checks."""
    from circuitry.verify import failing_parts

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
        row = [escape(c.id), escape(c.claim), _fmt(c.value), escape(c.expect), PASS if c.passed else FAIL]
        if verbose:
            row.append(f"{c.seconds * 1000:.0f} ms")
        table.add_row(*row)
        if not verbose:
            continue
        failing = set(failing_parts(report, c))
        for k, v in (c.details.get("values") or {}).items():
            mark = "[red]FAIL[/]" if k in failing else ""
            table.add_row("", f"[dim]  {escape(k)}[/]", f"[dim]{_fmt(v)}[/]", "", mark, "")
        for key, label in METRIC_ROWS.items():
            if key in c.details:
                table.add_row("", f"[dim]  metric, {label}[/]", f"[dim]{_fmt(c.details[key])}[/]", "", "", "")
    return table


def summary_line(report) -> str:
    n, failed = len(report.checks), report.failed
    if not failed:
        return f"[bold green]{n} of {n} checks passed[/] in {report.seconds:.2f} s"
    names = ", ".join(f"{escape(c.id)} (measured {_fmt(c.value)}, expected {escape(c.expect)})" for c in failed)
    return f"[bold red]{len(failed)} of {n} checks failed[/]: {names}"


def overall_line(reports) -> str:
    """One line for several specs: `3 specs: 2 passed, 1 failed (12/14 checks)`."""
    passed = sum(r.passed for r in reports)
    checks = sum(len(r.checks) for r in reports)
    held = sum(c.passed for r in reports for c in r.checks)
    colour = "green" if passed == len(reports) else "red"
    return (f"[bold {colour}]{len(reports)} specs: {passed} passed, {len(reports) - passed} failed[/] "
            f"({held}/{checks} checks)")


# ------------------------------------------------------------------ across models or checkpoints
def across_table(across) -> Table:
    """One row per checkpoint (or model), one column per check: the measured value, ✓ where the check holds
    and ✗ where it fails; the last column (all) says whether every check holds."""
    from rich import box

    what = "checkpoints" if across.over == "checkpoints" else "models"
    # light rules and no outer padding: a column per check still fits 80 columns for ten checks
    table = Table(title=f"{across.name}  ({across.spec}) across {len(across.subjects)} {what}", title_justify="left",
                  caption="✓ the check holds · ✗ it fails", caption_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, collapse_padding=True)
    table.add_column("step" if across.over == "checkpoints" else "model", style="bold", overflow="fold")
    ids = across.check_ids
    for cid in ids:
        table.add_column(escape(cid), justify="right", overflow="fold")
    table.add_column("all", justify="center", no_wrap=True)
    columns = {cid: (across.values(cid), across.holds(cid)) for cid in ids}
    for j, (subject, report) in enumerate(zip(across.subjects, across.reports)):
        label = str(subject.step) if across.over == "checkpoints" else subject.label
        cells = [_short(columns[cid][0][j]) + ("[green]✓[/]" if columns[cid][1][j] else "[bold red]✗[/]")
                 for cid in ids]
        table.add_row(escape(label), *cells, "[bold green]✓[/]" if report.passed else "[bold red]✗[/]")
    return table


def across_line(across) -> str:
    """Where every check first holds: `every check holds first at step 600 (...)`, or `never`."""
    first, since = across.first_passing, across.holds_from
    if across.over == "models":
        good = [s.label for s, r in zip(across.subjects, across.reports) if r.passed]
        colour = "green" if across.passed else "red"
        return (f"[bold {colour}]every check holds on {len(good)} of {len(across.subjects)} models[/]"
                + (f": {escape(', '.join(good))}" if good else ""))
    if first is None:
        return f"[bold red]every check holds at no checkpoint: never[/] ({len(across.subjects)} checkpoints)"
    later = "" if since is None or since.step == first.step else (
        f"; it fails again later and holds from step {since.step} on")
    if since is None:
        later = "; the last checkpoint fails"
    colour = "green" if across.passed else "red"
    return f"[bold {colour}]every check holds first at step {first.step}[/] ({escape(first.ref)}){later}"


def across_overall_line(results) -> str:
    """One line for several specs across checkpoints or models."""
    what = "the last checkpoint" if results[0].over == "checkpoints" else "every model"
    passed = sum(a.passed for a in results)
    colour = "green" if passed == len(results) else "red"
    return (f"[bold {colour}]{len(results)} specs: {passed} hold on {what}, {len(results) - passed} do not[/] "
            f"({len(results[0].subjects)} {results[0].over})")
