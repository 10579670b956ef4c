"""`circuitry paths MODEL`: the strongest residual paths for a logit, and the loss ladder of the decomposition."""

from __future__ import annotations

import argparse

from circuitry.cli.options import add_model_options

DEFAULT_DATA = "repeated:batch=16"

HELP = "decompose the logits into residual paths and rank them"  # listed by `circuitry --help`


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "paths", help=HELP,
        description="Split the model's logits on a token batch into path terms (direct path, single heads, "
                    "virtual heads, MLPs, bias, remainder; exact given the run's attention patterns and norm "
                    "scales), rank the terms by their mean contribution to a logit, and show the loss when "
                    "only the direct path, then single heads, then virtual heads are kept.")
    p.add_argument("model", metavar="MODEL", help="model reference: builtin:NAME or a path")
    p.add_argument("--data", default=DEFAULT_DATA, metavar="NAME[:k=v,...]",
                   help=f"data: a dataset plugin and its parameters (repeated:seq_len=10,n_repeats=2, "
                        f"periodic:period=8, ...) or a token file (default {DEFAULT_DATA})")
    p.add_argument("--target", default="correct", metavar="correct|TOKEN|A-B",
                   help="logit to explain: the correct next token, one token id, or the logit difference "
                        "of two token ids A-B (default correct)")
    p.add_argument("--top", type=int, default=10, metavar="K", help="number of paths to show (default 10)")
    p.add_argument("--by", choices=("mean", "abs", "mean_abs"), default="mean",
                   help="rank by mean contribution, |mean| or mean |contribution| (default mean)")
    p.add_argument("--positions", choices=("predictable", "fresh", "all"), default="predictable",
                   help="positions averaged over: predictable (the repeated part), fresh or all (default predictable)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    add_model_options(p)
    p.set_defaults(run=run)


def parse_target(text: str):
    """'correct', a token id, or a pair (a, b) for 'A-B'."""
    from circuitry.errors import UsageError

    text = text.strip()
    if text == "correct":
        return "correct"
    try:
        if "-" in text.lstrip("-"):
            a, b = text.split("-", 1)
            return int(a), int(b)
        return int(text)
    except ValueError:
        raise UsageError(f"--target must be 'correct', a token id or a logit difference A-B of token ids, "
                         f"got {text!r}") from None


def run(args: argparse.Namespace, out) -> int:
    import torch

    from circuitry.datasets import make_batch
    from circuitry.errors import UsageError
    from circuitry.graph import decompose
    from circuitry.sources import load_model

    if args.top < 1:
        raise UsageError(f"--top must be >= 1, got {args.top}")
    target = parse_target(args.target)
    model = load_model(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map)
    batch = make_batch(model, args.data).to(model.device)
    dec = decompose(model, batch.tokens)
    mask = {"predictable": batch.predictable, "fresh": batch.fresh,
            "all": torch.ones_like(batch.predictable)}[args.positions].to(dec.tokens.device)
    projection = dec.project(target)
    top = projection.top(args.top, mask=mask, by=args.by)
    ladder = dec.loss_ladder(mask)
    sum_error = float((dec.total() - dec.logits).abs().max())
    n_positions = int((mask & projection.valid).sum())
    model_loss = dec.loss(dec.logits, mask)
    doc = {
        "model": args.model, "data": batch.description, "shape": list(batch.tokens.shape),
        "target": projection.target, "positions": args.positions, "n_positions": n_positions,
        "ranked_by": args.by, "n_terms": len(projection.paths),
        "top": [{"rank": i + 1, "path": list(s.path), "name": s.name, "kind": s.kind, "mean": s.mean,
                 "mean_abs": s.mean_abs} for i, s in enumerate(top)],
        "total_mean": float(projection.mean(mask).sum()),
        "loss_ladder": [{"name": s.name, "kinds": list(s.kinds), "loss": s.loss} for s in ladder],
        "model_loss": model_loss,
        "sum_max_abs_error": sum_error,
    }
    if args.json:
        out.json(doc)
        return 0
    from rich.table import Table

    out.print(f"{args.model} on {batch.description}", soft_wrap=True)
    out.print(f"target: {projection.target}; mean over {n_positions} {args.positions} positions", soft_wrap=True)
    table = Table(title=f"top {len(top)} of {len(projection.paths)} paths", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("path")
    table.add_column("kind")
    table.add_column("mean", justify="right")
    table.add_column("mean |.|", justify="right")
    for i, s in enumerate(top, start=1):
        table.add_row(str(i), s.name, s.kind, f"{s.mean:+.3f}", f"{s.mean_abs:.3f}")
    out.print(table)
    out.print(f"sum of all terms (mean): {doc['total_mean']:+.3f}")
    out.print(f"loss ladder ({args.positions} positions)")
    lt = Table()
    lt.add_column("terms kept")
    lt.add_column("loss", justify="right")
    for step in ladder:
        lt.add_row(step.name, f"{step.loss:.3f}")
    out.print(lt)
    out.print(f"model loss {model_loss:.3f}; terms sum to the logits within {sum_error:.1e} (max abs error)")
    return 0
