"""A self-contained HTML page of a head's end-to-end circuits, drawn from `circuitry.e2e.document`.

Inline CSS (the stylesheet of `circuitry.report.html`), no scripts, no network.
Every number sits in a `data-value` attribute at full precision, so the page
can be read back from its DOM; this module computes nothing.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from circuitry.report.html import CSS


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _num(value: float | None) -> str:
    shown = "n/a" if value is None else f"{value:.4g}"
    return f'<td class="num" data-value="{"nan" if value is None else repr(float(value))}">{shown}</td>'


def _table(title: str, hint: str, head: list[str], rows: list[str], uid: str) -> str:
    cols = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join(rows) or f'<tr><td colspan="{len(head)}">none</td></tr>'
    return (f'<section class="card" id="{uid}"><h2>{_e(title)}</h2><p class="hint">{_e(hint)}</p>'
            f'<table class="claims"><thead><tr>{cols}</tr></thead><tbody>{body}</tbody></table></section>')


def _tok(entry: dict, role: str) -> str:
    return f'<td data-token="{entry[role]}">{_e(entry[role + "_label"])} <small>({entry[role]})</small></td>'


def render(doc: dict) -> str:
    """The page of one `document(...)`."""
    from circuitry import __version__

    copying, pos = doc["copying"], doc["positional"]
    summary = [f"<tr><td>copying score (Σλ/Σ|λ| of the OV circuit)</td>{_num(copying['score'])}</tr>",
               f"<tr><td>tokens whose own OV entry tops their row</td>{_num(copying['diagonal_top_of_row'])}</tr>",
               f"<tr><td>tokens whose own OV entry tops their column</td>"
               f"{_num(copying['diagonal_top_of_column'])}</tr>"]
    if pos is not None:
        summary.append(f"<tr><td>mean positional weight on the previous token</td>"
                       f"{_num(pos['mean_previous_token_weight'])}</tr>")
        counts = ", ".join(f"{c['offset']}: {c['positions']}" for c in pos["argmax_offset_counts"][:6])
        summary.append(f"<tr><td>offset of the largest positional weight (offset: positions)</td>"
                       f"<td>{_e(counts)}</td></tr>")
    else:
        summary.append(f"<tr><td>positional preference</td><td>{_e(doc['positional_reason'])}</td></tr>")
    parts = [_table("Summary", "; ".join(doc["notes"]) or "no approximations", ["measure", "value"], summary, "sum")]
    parts.append(_table("OV circuit: top token pairs", "attending to the source token raises the logit of the "
                        "output token by the value (W_E W_OV W_U)", ["source", "output", "value"],
                        [f"<tr>{_tok(p, 'source')}{_tok(p, 'output')}{_num(p['value'])}</tr>"
                         for p in doc["ov"]["top_pairs"]], "ov"))
    parts.append(_table("OV circuit: top outputs of the strongest sources", "each source token's top output tokens",
                        ["source", "outputs"],
                        [f"<tr>{_tok(s, 'source')}<td>" + ", ".join(
                            f'<span data-token="{o["output"]}" data-value="{o["value"]!r}">{_e(o["output_label"])} '
                            f'({o["value"]:.3g})</span>' for o in s["outputs"]) + "</td></tr>"
                         for s in doc["ov"]["by_source"]], "by-source"))
    parts.append(_table("Skip-trigrams", "query ... key -> output: the query attends to the key (QK), which raises "
                        "the output's logit (OV); score = QK x OV", ["query", "key", "output", "QK", "OV", "score"],
                        [f"<tr>{_tok(s, 'query')}{_tok(s, 'key')}{_tok(s, 'output')}{_num(s['qk'])}"
                         f"{_num(s['ov'])}{_num(s['score'])}</tr>" for s in doc["skip_trigrams"]], "trigrams"))
    parts.append(_table("QK circuit: top token pairs", "the attention score the query token gives the key token, "
                        "before scaling (W_E W_QK W_E^T)", ["query", "key", "value"],
                        [f"<tr>{_tok(p, 'query')}{_tok(p, 'key')}{_num(p['value'])}</tr>"
                         for p in doc["qk"]["top_pairs"]], "qk"))
    title = f"{doc['head']}: end-to-end circuits"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{CSS}</style></head>\n<body><main>\n<header class=\"page\"><h1>{_e(title)}</h1>"
            f'<div class="meta"><span>model <b>{_e(doc["model"])}</b></span><span>vocabulary <b>{doc["d_vocab"]}'
            f'</b></span><span>top <b>{doc["top"]}</b></span></div></header>\n' + "\n".join(parts)
            + f"\n<footer>circuitry {_e(__version__)}</footer></main></body></html>\n")


def write_page(doc: dict, path: str | Path) -> Path:
    """Write the page atomically."""
    from circuitry.fileio import atomic_write_text

    atomic_write_text(path, render(doc))
    return Path(path)
