"""Names of residual-stream components and of decomposition paths: parsing and validation.

Components: `embed`, `pos_embed`, heads `L{l}H{h}`, MLPs `M{l}`, `logits`.
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
from dataclasses import dataclass

from circuitry.errors import UsageError, did_you_mean
from circuitry.model.config import ModelConfig

Path = tuple[str, ...]

HEAD_RE = re.compile(r"^L(\d+)H(\d+)$")
MLP_RE = re.compile(r"^M(\d+)$")
SPECIAL_TERMS = ("direct", "bias", "remainder")
PATH_KINDS = ("direct", "head", "virtual", "mlp", "bias", "remainder")


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def mlp_name(layer: int) -> str:
    return f"M{layer}"


@dataclass(frozen=True)
class Component:
    """One node of the residual graph: kind is embed, pos_embed, head, mlp or logits."""

    name: str
    kind: str
    layer: int | None = None
    head: int | None = None


def _ranges(cfg: ModelConfig) -> str:
    last = head_name(cfg.n_layers - 1, cfg.n_heads - 1)
    text = (f"heads L0H0..{last} (layers 0..{cfg.n_layers - 1}, heads 0..{cfg.n_heads - 1})")
    if not cfg.attn_only:
        text += f", MLPs M0..M{cfg.n_layers - 1}"
    return text


def component_names(cfg: ModelConfig) -> list[str]:
    """Every node name of the residual graph of a model with this config, in stream order."""
    names = ["embed"] + (["pos_embed"] if cfg.positional == "learned" else [])
    for layer in range(cfg.n_layers):
        names += [head_name(layer, h) for h in range(cfg.n_heads)]
        if not cfg.attn_only:
            names.append(mlp_name(layer))
    return names + ["logits"]


def parse_component(name: str, cfg: ModelConfig) -> Component:
    """The component called `name` in a model with config `cfg`, or a UsageError naming the valid range."""
    if not isinstance(name, str):
        raise UsageError(f"component names are strings like 'L0H1' or 'M0', got {name!r}")
    name = name.strip()
    m = HEAD_RE.match(name)
    if m:
        layer, head = int(m.group(1)), int(m.group(2))
        if layer >= cfg.n_layers or head >= cfg.n_heads:
            raise UsageError(f"no head {name!r} in this model: it has {_ranges(cfg)}")
        return Component(name, "head", layer, head)
    m = MLP_RE.match(name)
    if m:
        layer = int(m.group(1))
        if cfg.attn_only:
            raise UsageError(f"no MLP {name!r}: the model is attention-only; it has {_ranges(cfg)}")
        if layer >= cfg.n_layers:
            raise UsageError(f"no MLP {name!r} in this model: it has {_ranges(cfg)}")
        return Component(name, "mlp", layer)
    if name == "embed":
        return Component(name, "embed")
    if name == "pos_embed":
        if cfg.positional != "learned":
            raise UsageError(f"no component 'pos_embed': the model has {cfg.positional} positions, "
                             "not learned position embeddings")
        return Component(name, "pos_embed")
    if name == "logits":
        return Component(name, "logits")
    raise UsageError(f"unknown component {name!r}{did_you_mean(name, component_names(cfg))}; "
                     f"valid: embed, pos_embed, logits, {_ranges(cfg)}")


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
    valid = (f"valid paths: ('direct',), ('bias',), ('remainder',), one head ('L0H0',), a pair of heads "
             f"in increasing layers ('L0H0', 'L1H0')" + (", one MLP ('M0',)" if not cfg.attn_only else "")
             + f"; the model has {_ranges(cfg)}")
    if len(parts) == 0:
        raise UsageError(f"empty path; {valid}")
    if len(parts) == 1:
        name = parts[0].strip() if isinstance(parts[0], str) else parts[0]
        if name in SPECIAL_TERMS:
            return (name,)
        if isinstance(name, str) and (HEAD_RE.match(name) or MLP_RE.match(name)):
            return (parse_component(name, cfg).name,)
        choices = [*SPECIAL_TERMS, *cfg.head_names()]
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


def head_index(name: str) -> tuple[int, int]:
    """(layer, head) of a head name already validated."""
    m = HEAD_RE.match(name)
    assert m is not None
    return int(m.group(1)), int(m.group(2))
