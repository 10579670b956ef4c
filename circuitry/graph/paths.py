"""Decomposition paths: parsing and validation (component names come from `circuitry.names`).

A decomposition term is addressed by a path, a tuple of names:

    ("direct",)            embeddings straight to the unembedding
    ("L0H1",)              one head reading the embeddings
    ("L0H1", "L1H2")       a virtual head: L0H1's output read as value input by L1H2
    ("M0",)                an MLP's output straight to the unembedding
    ("bias",)              every constant (bias) vector straight to the unembedding
    ("remainder",)         all the other paths (higher orders)

Paths can also be written as strings: "L0H1", "L0H1 -> L1H2" (or "L0H1>L1H2").
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from circuitry.errors import UsageError, did_you_mean
from circuitry.model.config import ModelConfig
from circuitry.names import (  # noqa: F401 - head_index, head_name, mlp_name are re-exported
    HEAD_RE,
    MLP_RE,
    Component,
    check_component,
    head_index,
    head_name,
    head_names,
    mlp_name,
    model_ranges,
)

Path = tuple[str, ...]

SPECIAL_TERMS = ("direct", "bias", "remainder")
PATH_KINDS = ("direct", "head", "virtual", "mlp", "bias", "remainder")


def parse_component(name: str, cfg: ModelConfig) -> Component:
    """The component called `name` in a model with config `cfg` (see `circuitry.names.check_component`)."""
    return check_component(name, cfg)


def _split(path: str | Sequence[str]) -> list[str]:
    if isinstance(path, str):
        parts = re.split(r"\s*(?:->|>|,)\s*", path.strip())
        return [p for p in parts if p] or [path]
    if isinstance(path, Sequence):
        return list(path)
    raise UsageError(f"a path is a tuple of names like ('L0H1', 'L1H2') or a string 'L0H1 -> L1H2', "
                     f"got {path!r}")


def parse_path(path: str | Sequence[str], cfg: ModelConfig) -> Path:
    """A validated decomposition path (a tuple of names), or a UsageError that says what is valid."""
    parts = _split(path)
    valid = ("valid paths: ('direct',), ('bias',), ('remainder',), one head ('L0H0',), a pair of heads "
             "in increasing layers ('L0H0', 'L1H0')" + (", one MLP ('M0',)" if not cfg.attn_only else "")
             + f"; the model has {model_ranges(cfg)}")
    if len(parts) == 0:
        raise UsageError(f"empty path; {valid}")
    if len(parts) == 1:
        name = parts[0].strip() if isinstance(parts[0], str) else parts[0]
        if name in SPECIAL_TERMS:
            return (name,)
        if isinstance(name, str) and (HEAD_RE.match(name) or MLP_RE.match(name)):
            return (parse_component(name, cfg).name,)
        choices = [*SPECIAL_TERMS, *head_names(cfg)]
        raise UsageError(f"unknown path component {name!r}{did_you_mean(str(name), choices)}; {valid}")
    if len(parts) > 2:
        raise UsageError(f"path {tuple(parts)!r} has {len(parts)} components; paths through three or more "
                         f"heads are not separate terms (they are part of ('remainder',)); {valid}")
    comps = []
    for p in parts:
        if not (isinstance(p, str) and HEAD_RE.match(p.strip())):
            raise UsageError(f"a two-component path must be two heads, got {p!r} in {tuple(parts)!r}; {valid}")
        comps.append(parse_component(p, cfg))
    a, b = comps
    if a.layer >= b.layer:  # type: ignore[operator]
        hint = f"; did you mean ({b.name!r}, {a.name!r})?" if b.layer < a.layer else ""  # type: ignore[operator]
        raise UsageError(f"virtual head ({a.name!r}, {b.name!r}): the first head must be in an earlier "
                         f"layer than the second (layer {a.layer} is not before layer {b.layer}){hint}")
    return (a.name, b.name)


def path_kind(path: Path) -> str:
    """direct, head, virtual, mlp, bias or remainder (for a validated path)."""
    if len(path) == 2:
        return "virtual"
    name = path[0]
    if name in SPECIAL_TERMS:
        return name
    return "head" if HEAD_RE.match(name) else "mlp"


def format_path(path: Path) -> str:
    """'L0H1 -> L1H2' for ('L0H1', 'L1H2')."""
    return " -> ".join(path)
