"""`circuitry article`: re-run the reproduction of "Induction Heads and In-Context Learning" and write its page."""

from __future__ import annotations

import argparse

HELP = "reproduce the induction-heads article: train the runs, test each claim, write one HTML page and JSON"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("article", help=HELP,
                       description="Train small attention-only models (2 layers, 1 layer, blocked K-composition, "
                                   "smeared keys; one run per seed, two at a time), test each claim of the "
                                   "article on them (one vs two layers, the two-step mechanism by path patching, "
                                   "attention patterns, the phase change, ablation, perturbations, end-to-end "
                                   "circuits of one-layer models) and write OUT/article.html (self-contained) and "
                                   "OUT/article.json. Runs already under OUT/runs are reused. The default budget "
                                   "is sized for 15 minutes on 2 CPU cores.")
    p.add_argument("--out", default="article", metavar="DIR", help="output directory (default ./article)")
    p.add_argument("--seeds", default="0,1,2", metavar="S,S,...", help="training seeds (default 0,1,2)")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="training steps per run (default 1000; --quick 800)")
    p.add_argument("--quick", action="store_true",
                   help="one seed (the first), no perturbation runs: a few minutes")
    p.add_argument("--workers", type=int, default=2, metavar="N",
                   help="training processes at a time, one thread each (default 2)")
    p.add_argument("--json", action="store_true", help="print the JSON document instead of the table")
    p.set_defaults(run=run)


def parse_seeds(text: str) -> tuple[int, ...]:
    from circuitry.errors import UsageError

    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UsageError(f"--seeds {text!r}: expected whole numbers separated by commas, e.g. 0,1,2") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {text!r}: expected distinct seeds >= 0, e.g. 0,1,2")
    return seeds


def run(args: argparse.Namespace, out) -> int:
    from circuitry.errors import UsageError
    from circuitry.fileio import check_output

    seeds = parse_seeds(args.seeds)
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    check_output(args.out, "--out", directory=True)
    from circuitry.article import reproduce

    rep = reproduce(args.out, seeds=seeds, steps=args.steps, quick=args.quick, workers=args.workers,
                    progress=out.info)
    if args.json:
        out.json(rep.to_json())
        return 0
    render(rep, out)
    return 0


def render(rep, out) -> None:
    from rich.markup import escape
    from rich.table import Table

    colour = {"reproduced": "green", "partly": "yellow", "not reproduced": "red", "not testable": "dim"}
    table = Table(title=f"Induction heads and in-context learning: seeds {', '.join(map(str, rep.seeds))}, "
                        f"{rep.steps} steps", title_justify="left")
    for col in ("claim", "verdict", "numbers (mean ± sd over seeds)"):
        table.add_column(col)
    for c in rep.claims:
        nums = "\n".join(f"{escape(n.name)}: {n.text()}" for n in c.numbers)
        table.add_row(escape(c.section), f"[{colour[c.verdict]}]{c.verdict}[/]", nums)
    out.print(table)
    for note in rep.notes:
        out.print(f"[dim]note: {escape(note)}[/]", soft_wrap=True)
    out.print(f"total {rep.seconds:.0f} s (training {rep.train_seconds:.0f} s); page: {rep.page}", soft_wrap=True)
