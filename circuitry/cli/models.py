"""`circuitry models` (also `circuitry info --list`): the models shipped inside circuitry, each as its
`builtin:NAME` reference with a one-line description and its size, and the model sources a reference can name."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

HELP = "list the shipped models (builtin:NAME) and the model sources"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help=HELP,
                       description="List the models shipped inside circuitry (load them as builtin:NAME, no "
                                   "network needed) with what each is and its size, and the model sources a "
                                   "reference can name (SCHEME:NAME, or a path).")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=run)


@dataclass(frozen=True)
class ShippedModel:
    """One model of the package's builtin/ folder, described from its model card (card.json) and config."""

    ref: str
    description: str
    n_layers: int | None
    n_heads: int | None
    d_model: int | None
    n_params: int | None
    file_bytes: int


def _read(file: Path) -> dict:
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def first_clause(text: str) -> str:
    """The description up to its first '; ', ': ' or '. ' (one line in a table)."""
    cut = min((i for i in (text.find(s) for s in ("; ", ": ", ". ")) if i >= 0), default=len(text))
    return text[:cut].rstrip(".")


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def shipped_models() -> list[ShippedModel]:
    """Every shipped model, by name."""
    from circuitry.sources import builtin_models

    out = []
    for name, folder in builtin_models().items():
        card = _read(folder / "card.json")
        arch = card["architecture"] if isinstance(card.get("architecture"), dict) else _read(folder / "config.json")
        n_layers, n_heads, d_model, n_params = (_int(arch.get(k)) for k in ("n_layers", "n_heads", "d_model",
                                                                             "n_params"))
        out.append(ShippedModel(f"builtin:{name}", first_clause(str(card.get("description", ""))),
                                n_layers, n_heads, d_model, n_params, (folder / "model.safetensors").stat().st_size))
    return out


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1024:.0f} KiB" if n_bytes < 1024**2 else f"{n_bytes / 1024**2:.1f} MiB"


def _or_dash(value: int | None, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def run(args: argparse.Namespace, out) -> int:
    from rich.markup import escape
    from rich.table import Table

    from circuitry.plugins import get_manager

    models = shipped_models()
    sources = get_manager().model_sources()
    if args.json:
        out.json({"models": [asdict(m) for m in models],
                  "sources": [{"scheme": s.scheme, "description": s.description}
                              for s in sorted(sources.values(), key=lambda s: s.scheme)]})
        return 0
    table = Table(title="shipped models (no network needed)", title_justify="left")
    table.add_column("model", no_wrap=True)  # a reference to copy: never cut
    for col in ("layers", "heads", "d_model", "parameters", "file"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("description")
    for m in models:
        table.add_row(escape(m.ref), _or_dash(m.n_layers), _or_dash(m.n_heads), _or_dash(m.d_model),
                      _or_dash(m.n_params, "{:,}"), _size(m.file_bytes), escape(m.description))
    out.print(table)
    schemes = Table(title="model sources: a reference is SCHEME:NAME or a path", title_justify="left")
    schemes.add_column("scheme")
    schemes.add_column("description")
    for s in sorted(sources.values(), key=lambda s: s.scheme):
        schemes.add_row(escape(f"{s.scheme}:"), escape(s.description))
    out.print(schemes)
    out.print("[dim]e.g. circuitry info builtin:attn-only-2l[/]")
    return 0
