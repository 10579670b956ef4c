"""`circuitry e2e MODEL --head L0H1`: a head's end-to-end QK and OV circuits over the vocabulary."""

from __future__ import annotations

import argparse

from circuitry.cli.options import add_model_options
from circuitry.fileio import check_output

MAX_TOP = 1000
HELP = "a head's end-to-end QK and OV circuits: top token pairs, skip-trigrams, copying, positional preference"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("e2e", help=HELP,
                       description="Rank the entries of a head's end-to-end circuits, W_E W_QK W_E^T (query token "
                                   "x key token) and W_E W_OV W_U (source token -> output logit), from their "
                                   "low-rank factors without forming the vocab x vocab matrices; with the copying "
                                   "score and the previous-token preference of its positional QK circuit. "
                                   "Normalisation weights are folded in, their scales ignored.")
    p.add_argument("model", metavar="MODEL", help="model reference: builtin:NAME, a path, hf:NAME ...")
    p.add_argument("--head", required=True, metavar="LxHy", help="the head, e.g. L0H1")
    p.add_argument("--top", type=int, default=10, metavar="K", help=f"entries per table (1..{MAX_TOP}, default 10)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--html", default=None, metavar="FILE.html", help="also write a self-contained HTML page")
    add_model_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, out) -> int:
    from circuitry.errors import UsageError
    from circuitry.names import head_index

    if not 1 <= args.top <= MAX_TOP:
        raise UsageError(f"--top {args.top}: expected a number of entries from 1 to {MAX_TOP}")
    if args.html:
        check_output(args.html, "--html", (".html",))
    try:
        head_index(args.head.strip())  # syntax, before the model loads
    except UsageError as exc:
        raise UsageError(f"--head {args.head}: {exc}") from None
    from circuitry.e2e import end_to_end, parse_head
    from circuitry.e2e.document import document
    from circuitry.sources import load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map)
    try:
        parse_head(args.head.strip(), model.cfg)
    except UsageError as exc:
        raise UsageError(f"--head {args.head}: {exc}") from None
    e2e = end_to_end(model, args.head.strip(), model_name=args.model)
    doc = document(e2e, args.top)
    if args.html:
        from circuitry.e2e.page import write_page

        write_page(doc, args.html)
        out.info(f"wrote {args.html}")
    if args.json:
        out.json(doc)
        return 0
    render(doc, out)
    return 0


def _tok(entry: dict, role: str) -> str:
    from rich.markup import escape

    label, token = entry[role + "_label"], entry[role]
    return escape(label) if label == str(token) else f"{escape(label)} [dim]({token})[/]"  # the id once


def render(doc: dict, out) -> None:
    from rich.table import Table

    out.print(f"[bold]{doc['head']}[/] of {doc['model']}: end-to-end circuits over {doc['d_vocab']} tokens",
              soft_wrap=True)
    for note in doc["notes"]:
        out.print(f"[dim]note: {note}[/]", soft_wrap=True)
    ov = Table(title="OV: top token pairs", caption="attending to SOURCE raises the logit of OUTPUT by VALUE",
               title_justify="left", caption_justify="left")
    for col in ("source", "output", "value"):
        ov.add_column(col, justify="right" if col == "value" else "left")
    for p in doc["ov"]["top_pairs"]:
        ov.add_row(_tok(p, "source"), _tok(p, "output"), f"{p['value']:.4g}")
    out.print(ov)
    tri = Table(title="skip-trigrams", caption="QUERY ... KEY -> OUTPUT; score = QK x OV", title_justify="left",
                caption_justify="left")
    for col in ("query", "key", "output", "QK", "OV", "score"):
        tri.add_column(col, justify="right" if col in ("QK", "OV", "score") else "left")
    for s in doc["skip_trigrams"]:
        tri.add_row(_tok(s, "query"), _tok(s, "key"), _tok(s, "output"), f"{s['qk']:.4g}", f"{s['ov']:.4g}",
                    f"{s['score']:.4g}")
    out.print(tri)
    c = doc["copying"]
    score = "n/a" if c["score"] is None else f"{c['score']:.3f}"
    out.print(f"copying score (Σλ/Σ|λ| of the OV circuit): [bold]{score}[/]"
              + (f" [dim]({c['reason']})[/]" if c.get("reason") else ""), soft_wrap=True)
    out.print(f"own token tops its OV row: {c['diagonal_top_of_row']:.3f}; "
              f"tops its OV column: {c['diagonal_top_of_column']:.3f}")
    pos = doc["positional"]
    if pos is None:
        out.print(f"positional preference: n/a ({doc['positional_reason']})", soft_wrap=True)
        return
    mean = pos["mean_previous_token_weight"]
    counts = ", ".join(f"{r['offset']}: {r['positions']}" for r in pos["argmax_offset_counts"][:5])
    out.print(f"positional QK: mean weight on the previous token [bold]"
              f"{'n/a' if mean is None else f'{mean:.3f}'}[/]; offset of the largest weight (offset: query "
              f"positions) {counts}", soft_wrap=True)
