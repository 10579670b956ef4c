"""The reproduction's page: one self-contained HTML file (the report's CSS, pictures inlined as data URIs, no
scripts, no network), the claims in the article's order with their numbers per seed and verdicts."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from circuitry.article.records import ClaimResult, Number, Reproduction
from circuitry.report.html import CSS

EXTRA_CSS = """
.verdict { font-weight: 700; font-size: 12px; padding: 2px 8px; border-radius: 4px; color: #fff; white-space: nowrap; }
.verdict.reproduced { background: var(--pass); } .verdict.partly { background: #b06d00; }
.verdict.not-reproduced { background: var(--fail); } .verdict.not-testable { background: #7a8294; }
table.nums { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
table.nums th, table.nums td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: right; }
table.nums th:first-child, table.nums td:first-child { text-align: left; }
code.how { display: block; white-space: pre-wrap; background: #f4f6f9; padding: 6px 8px; border-radius: 6px;
  font-size: 12.5px; margin: 6px 0; }
figure.pic { margin: 10px 0; } figure.pic img { max-width: 100%; border: 1px solid var(--line); }
figure.pic figcaption { color: var(--muted); font-size: 12px; }
"""


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _numbers(claim: ClaimResult) -> str:
    head = "".join(f"<th>seed {s}</th>" for s in claim.seeds)
    rows = []
    for n in claim.numbers:
        cells = "".join(f'<td data-value="{_num(v, 6)}">{_num(v)}</td>' for v in n.per_seed)
        rows.append(f'<tr data-number="{_e(n.name)}"><td>{_e(n.name)}{_unit(n)}</td>{cells}'
                    f"<td><b>{_num(n.mean)}</b></td><td>{_num(n.spread)}</td></tr>")
    return (f'<table class="nums"><thead><tr><th>number</th>{head}<th>mean</th><th>sd</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def _unit(n: Number) -> str:
    return f" <small>({_e(n.unit)})</small>" if n.unit else ""


def _picture(path: Path, caption: str) -> str:
    if not path.is_file():
        return f'<p class="hint">(picture {_e(path)} was not written: matplotlib is not installed)</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure class="pic"><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _verdict(v: str) -> str:
    return f'<span class="verdict {v.replace(" ", "-")}">{_e(v)}</span>'


def render(rep: Reproduction, out_dir: str | Path) -> str:
    """The page of `rep`; pictures are read from under `out_dir` and inlined."""
    from circuitry import __version__

    out = Path(out_dir)
    summary = "".join(
        f'<tr data-claim="{_e(c.key)}" data-verdict="{_e(c.verdict)}"><td>{_verdict(c.verdict)}</td>'
        f'<td class="id">{_e(c.section)}</td><td>{_e(c.claim)}</td></tr>' for c in rep.claims)
    sections = []
    for c in rep.claims:
        pics = "".join(_picture(out / p, f"{c.key}: {Path(p).name}") for p in c.pictures)
        sections.append(
            f'<section class="card" id="{_e(c.key)}"><h2>{_e(c.section)} {_verdict(c.verdict)}</h2>'
            f'<p>{_e(c.claim)}</p><code class="how">{_e(c.how)}</code>{_numbers(c)}'
            f'<p class="sub"><b>Why:</b> {_e(c.why)}</p>{pics}</section>')
    notes = "".join(f"<li>{_e(n)}</li>" for n in rep.notes)
    meta = (f"<span>seeds <b>{', '.join(map(str, rep.seeds))}</b></span><span>training <b>{rep.steps} steps</b>, "
            f"checkpoints every <b>{rep.checkpoint_every}</b></span><span>total <b>{rep.seconds:.0f} s</b> "
            f"(training {rep.train_seconds:.0f} s)</span>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Induction heads and in-context learning: reproduction</title>"
            f"<style>{CSS}{EXTRA_CSS}</style></head>\n<body><main>\n"
            f'<header class="page"><h1>Induction Heads and In-Context Learning — reproduction</h1>'
            f'<p class="sub">Each claim of the article tested on small attention-only models trained here; numbers '
            f'per seed, their mean and sample standard deviation.</p><div class="meta">{meta}</div></header>'
            f'<section class="card"><h2>Claims</h2><table class="claims"><thead><tr><th>verdict</th><th>section'
            f"</th><th>claim</th></tr></thead><tbody>{summary}</tbody></table>"
            + (f"<ul>{notes}</ul>" if notes else "") + "</section>\n"
            + "\n".join(sections) + f"\n<footer>circuitry {_e(__version__)}</footer></main></body></html>\n")


def write_page(rep: Reproduction, out_dir: str | Path, path: str | Path) -> Path:
    from circuitry.fileio import atomic_write_text

    atomic_write_text(path, render(rep, out_dir))
    return Path(path)
