"""`circuitry show MODEL --head L1H2`: attention patterns as heatmaps (terminal, PNG or HTML)."""

from __future__ import annotations

import argparse

from circuitry.cli.options import add_model_options
from circuitry.fileio import check_output

DEFAULT_DATA = "repeated"

HELP = "draw the attention pattern of heads as heatmaps"  # listed by `circuitry --help`


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help=HELP,
                       description="Draw the attention pattern of one or more heads on one token sequence, with "
                                   "token labels on both axes: coloured in the terminal, or to a file "
                                   "(.png needs matplotlib: pip install 'circuitry[plot]'; .html is "
                                   "self-contained).")
    p.add_argument("model", metavar="MODEL", help="model reference: builtin:NAME, a path, hf:NAME ...")
    p.add_argument("--head", action="append", required=True, metavar="LxHy",
                   help="a head such as L1H2 (repeatable, or comma-separated)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", default=None, help="text to tokenize (needs a model with a tokenizer)")
    src.add_argument("--tokens", default=None, metavar="IDS", help="token ids, space- or comma-separated")
    src.add_argument("--data", default=None, metavar="REF",
                     help=f"data: NAME[:key=value,...] of a dataset plugin or a token file (default: {DEFAULT_DATA})")
    p.add_argument("--index", type=int, default=0, metavar="I", help="which sequence of --data (default 0)")
    p.add_argument("--out", default=None, metavar="FILE", help="write FILE.png or FILE.html instead of printing")
    add_model_options(p)
    p.set_defaults(run=run)


def parse_heads(values: list[str]) -> list[str]:
    """Head names (canonical: L1H2 for l1h2) from repeated or comma-separated --head values, checked for syntax
    before any model loads."""
    from circuitry.names import head_index, head_name

    return [head_name(*head_index(h.strip())) for v in values for h in v.split(",") if h.strip()]


def parse_token_ids(text: str) -> list[int]:
    from circuitry.errors import UsageError

    items = text.replace(",", " ").split()
    try:
        ids = [int(x) for x in items]
    except ValueError:
        raise UsageError(f"--tokens: expected integer token ids separated by spaces or commas, got {text!r}") from None
    if not ids:
        raise UsageError("--tokens: no token ids given")
    return ids


def _tokens(args: argparse.Namespace, model) -> tuple[list[int], str]:
    """The token ids [pos] to show, and a description of where they come from."""
    from circuitry.errors import UsageError

    if args.text is not None:
        tok = getattr(model, "tokenizer", None)
        if tok is None:
            raise UsageError(f"--text needs a model with a tokenizer, and {args.model} has none; "
                             "give token ids with --tokens IDS or data with --data REF")
        ids = [int(t) for t in tok.encode(args.text)]
        bos = model.cfg.bos_token_id
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return ids, f"text {args.text!r}"
    if args.tokens is not None:
        return parse_token_ids(args.tokens), "token ids"
    from circuitry.datasets import make_batch

    batch = make_batch(model, args.data or DEFAULT_DATA)
    n = batch.tokens.shape[0]
    if not 0 <= args.index < n:
        raise UsageError(f"--index {args.index}: the data has {n} sequence{'s' if n != 1 else ''} (0..{n - 1})")
    return [int(t) for t in batch.tokens[args.index].tolist()], f"{batch.description}, sequence {args.index}"


def run(args: argparse.Namespace, out) -> int:
    from circuitry.errors import UsageError
    from circuitry.figures import figures_for_heads
    from circuitry.sources import load_model

    suffix = check_output(args.out, "--out", (".png", ".html")).suffix.lower() if args.out else None
    heads = parse_heads(args.head)
    if not heads:
        raise UsageError("--head: give at least one head, e.g. --head L1H2")
    if suffix == ".png":
        from circuitry.report.plots import require

        require()  # the install hint comes before any model is loaded
    model = load_model(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map)
    ids, where = _tokens(args, model)
    figures = figures_for_heads(model, ids, heads, data=where)
    if suffix is None:
        from circuitry.report.terminal import heatmaps

        out.print(heatmaps(figures, width=out.console.width))
        return 0
    if suffix == ".png":
        from circuitry.report.plots import figures_png

        figures_png(figures, args.out)
    else:
        from circuitry.report.html import write_html

        write_html(figures, args.out)
    out.print(f"wrote {args.out}", markup=False)
    return 0
