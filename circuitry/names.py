"""The one vocabulary of components and edges: parsing, validation, messages, colours.

Components (the nodes of the residual graph):

    embed, pos_embed      the token and position embeddings (they only write)
    L{l}H{h}              attention head h of layer l, zero-based (`L0H1`)
    M{l}                  the MLP of layer l
    logits                the unembedding (it only reads)

Edges `A -> B (kind)`: B reads what A wrote, through one of its inputs:

    Q, K, V               a head's query, key or value input
    mlp_in                an MLP's input
    direct                the logits

Every room that names a component or an edge (specs, interventions, verify,
figures, scan, track, the graph and the decomposition) parses and validates
through this module, so every name gets the same error everywhere. Head and
MLP names are read in either case (`l1h3` is `L1H3`, `m0` is `M0`, `l1.resid_pre`
is `L1.resid_pre`); what is written back is always the canonical form
(`Component.name`, `Edge`, `Site.name`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from circuitry.errors import UsageError, did_you_mean

EMBED, POS_EMBED, LOGITS = "embed", "pos_embed", "logits"
NODE_KINDS = ("embed", "pos_embed", "head", "mlp", "logits")
EDGE_KINDS = ("Q", "K", "V", "mlp_in", "direct")
HEAD_INPUTS = ("Q", "K", "V")
# the colour of each edge kind, in every picture (HTML, PNG, terminal, DOT)
EDGE_COLOURS = {"Q": "#6a3d9a", "K": "#e66101", "V": "#1b9e77", "mlp_in": "#a6761d", "direct": "#555555"}

# head and MLP names in either case; character classes rather than flags, so NODE_PATTERN is also a JSON Schema
HEAD_RE = re.compile(r"^[Ll](\d+)[Hh](\d+)$")
MLP_RE = re.compile(r"^[Mm](\d+)$")
NODE_PATTERN = r"[Ll]\d+[Hh]\d+|[Mm]\d+|embed|pos_embed|logits"  # for schemas (no groups)
KIND_PATTERN = "|".join(EDGE_KINDS)
EDGE_PATTERN = rf"\s*(?:{NODE_PATTERN})\s*->\s*(?:{NODE_PATTERN})\s*\(\s*(?:{KIND_PATTERN})\s*\)\s*"
_EDGE_RE = re.compile(r"^\s*(\S+?)\s*->\s*(\S+?)\s*\(\s*(\S+?)\s*\)\s*$")
NODE_DOC = "a component: L{layer}H{head}, M{layer}, embed, pos_embed or logits"
EDGE_DOC = f"an edge 'A -> B (KIND)', KIND one of {', '.join(EDGE_KINDS)}"


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def mlp_name(layer: int) -> str:
    return f"M{layer}"


@dataclass(frozen=True)
class Component:
    """One component: kind embed, pos_embed, head, mlp or logits, with its layer and head."""

    kind: str
    layer: int | None = None
    head: int | None = None

    @property
    def name(self) -> str:
        if self.kind == "head":
            return head_name(self.layer, self.head)  # type: ignore[arg-type]
        if self.kind == "mlp":
            return mlp_name(self.layer)  # type: ignore[arg-type]
        return self.kind

    @property
    def is_head(self) -> bool:
        return self.kind == "head"

    @property
    def is_mlp(self) -> bool:
        return self.kind == "mlp"

    def __str__(self) -> str:
        return self.name

    def stream_position(self, n_layers: int) -> tuple[int, int]:
        """(layer, 0 for heads / 1 for MLPs): embeddings first (-1), logits last (n_layers)."""
        if self.kind in (EMBED, POS_EMBED):
            return (-1, 0)
        if self.kind == LOGITS:
            return (n_layers, 0)
        return (self.layer, 0 if self.is_head else 1)  # type: ignore[return-value]


def parse_component(name: Any) -> Component:
    """The component a name denotes (syntax only; `check_component` checks it against a model)."""
    if isinstance(name, Component):
        return name
    if not isinstance(name, str):
        raise UsageError(f"a component is named like 'L0H1', 'M0', 'embed' or 'logits', got {name!r}")
    text = name.strip()
    if re.search(r"\d{10}", text):
        raise UsageError(f"{text[:40]!r}{'...' if len(text) > 40 else ''} is not a component name: layer and "
                         f"head numbers have at most 9 digits")
    if m := HEAD_RE.match(text):
        return Component("head", int(m.group(1)), int(m.group(2)))
    if m := MLP_RE.match(text):
        return Component("mlp", int(m.group(1)))
    if text in (EMBED, POS_EMBED, LOGITS):
        return Component(text)
    raise UsageError(f"{name!r} is not a component name: expected {NODE_DOC} (e.g. L0H1, M0)"
                     f"{did_you_mean(text, (EMBED, POS_EMBED, LOGITS))}")


def canonical_name(name: Any) -> Any:
    """The canonical spelling of a component name (`l1h3` -> `L1H3`, `m0` -> `M0`), or `name` unchanged when
    it names no component (its error comes where it is checked)."""
    try:
        return parse_component(name).name
    except UsageError:
        return name


def model_ranges(cfg: Any) -> str:
    """'heads L0H0..L1H3 (2 layers x 4 heads), MLPs M0..M1' for a ModelConfig."""
    text = (f"heads L0H0..{head_name(cfg.n_layers - 1, cfg.n_heads - 1)} "
            f"({cfg.n_layers} layers x {cfg.n_heads} heads)")
    return text + ("" if cfg.attn_only else f", MLPs M0..{mlp_name(cfg.n_layers - 1)}")


def check_component(name: Any, cfg: Any, allow: tuple[str, ...] = NODE_KINDS) -> Component:
    """The component `name` of a model with config `cfg`, or a UsageError naming what the model has."""
    comp = parse_component(name)
    if comp.kind not in allow:
        wanted = " or ".join({"head": "a head", "mlp": "an MLP"}.get(k, k) for k in allow)
        raise UsageError(f"{comp.name} is {_article(comp.kind)}; expected {wanted}")
    if comp.is_head and not (comp.layer < cfg.n_layers and comp.head < cfg.n_heads):  # type: ignore[operator]
        raise UsageError(f"the model has no head {comp.name}: it has {model_ranges(cfg)}")
    if comp.is_mlp:
        if cfg.attn_only:
            raise UsageError(f"the model is attention-only: it has no MLP {comp.name} ({model_ranges(cfg)})")
        if comp.layer >= cfg.n_layers:  # type: ignore[operator]
            raise UsageError(f"the model has no MLP {comp.name}: it has {model_ranges(cfg)}")
    if comp.kind == POS_EMBED and cfg.positional != "learned":
        raise UsageError(f"the model has no pos_embed: its positions are {cfg.positional}, not learned "
                         f"position embeddings")
    return comp


def _article(kind: str) -> str:
    return {"head": "a head", "mlp": "an MLP", EMBED: "the token embedding", POS_EMBED: "the position embedding",
            LOGITS: "the logits"}[kind]


def component_names(cfg: Any) -> list[str]:
    """Every component of a model with this config, in stream order."""
    names = [EMBED] + ([POS_EMBED] if cfg.positional == "learned" else [])
    for layer in range(cfg.n_layers):
        names += [head_name(layer, h) for h in range(cfg.n_heads)]
        if not cfg.attn_only:
            names.append(mlp_name(layer))
    return names + [LOGITS]


def head_names(cfg: Any) -> list[str]:
    return [head_name(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]


def head_index(name: str) -> tuple[int, int]:
    """(layer, head) of a head name; a UsageError for anything else."""
    try:
        comp = parse_component(name)
    except UsageError:
        comp = Component(EMBED)
    if not comp.is_head:
        raise UsageError(f"{name!r} is not a head name: expected L{{layer}}H{{head}}, e.g. L1H2")
    return comp.layer, comp.head  # type: ignore[return-value]


# ------------------------------------------------------------------ edges
@dataclass(frozen=True)
class Edge:
    """sender -> receiver (kind), by name."""

    sender: str
    receiver: str
    kind: str

    def __str__(self) -> str:
        return f"{self.sender} -> {self.receiver} ({self.kind})"

    @property
    def name(self) -> str:
        return str(self)


def check_kind(kind: Any) -> str:
    """An edge kind, or a UsageError with the valid kinds (and the right spelling when only the case is off)."""
    if kind in EDGE_KINDS:
        return kind
    same = [k for k in EDGE_KINDS if k.lower() == str(kind).lower()]
    hint = f" (did you mean {same[0]!r}?)" if same else did_you_mean(str(kind), EDGE_KINDS)
    raise UsageError(f"unknown edge kind {kind!r}{hint}; valid: {', '.join(EDGE_KINDS)}")


def receiver_kinds(receiver: Component) -> tuple[str, ...]:
    """The edge kinds through which a component reads."""
    return {"head": HEAD_INPUTS, "mlp": ("mlp_in",), LOGITS: ("direct",)}.get(receiver.kind, ())


def parse_edge(value: Any) -> Edge:
    """An edge from 'A -> B (KIND)' or {from: A, to: B, kind: KIND}, checked for syntax and for kinds
    that fit the receiver (Q/K/V into heads, mlp_in into MLPs, direct into logits)."""
    if isinstance(value, Edge):
        return value
    if isinstance(value, Mapping):
        missing = [k for k in ("from", "to", "kind") if k not in value]
        if missing:
            raise UsageError(f"an edge mapping needs from, to and kind; missing {', '.join(missing)}")
        sender, receiver, kind = value["from"], value["to"], value["kind"]
    elif isinstance(value, str) and (m := _EDGE_RE.match(value)):
        sender, receiver, kind = m.groups()
    else:
        raise UsageError(f"{value!r} is not an edge: expected {EDGE_DOC} (e.g. 'L0H0 -> L1H1 (K)')")
    check_kind(kind)
    s, r = parse_component(sender), parse_component(receiver)
    edge = Edge(s.name, r.name, kind)
    if s.kind == LOGITS:
        raise UsageError(f"edge {edge}: logits write nothing; an edge starts at embed, pos_embed, a head or "
                         f"an MLP")
    kinds = receiver_kinds(r)
    if not kinds:
        raise UsageError(f"edge {edge}: {r.name} reads nothing; an edge ends at a head, an MLP or logits")
    if kind not in kinds:
        verb = "read" if r.kind == LOGITS else "reads"
        raise UsageError(f"edge {edge}: {r.name} {verb} through {' / '.join(kinds)}, not {kind}")
    return edge


def check_edge(value: Any, cfg: Any) -> Edge:
    """An edge of a model with config `cfg`: both ends exist and the sender writes before the receiver reads."""
    edge = parse_edge(value)
    s, r = check_component(edge.sender, cfg), check_component(edge.receiver, cfg)
    if not writes_before(s, r, cfg):
        if r.is_mlp and cfg.parallel_attn_mlp and s.layer == r.layer:
            why = f"in a parallel-attention model M{r.layer} reads the stream before the heads of its layer write"
        elif r.is_mlp:
            why = f"M{r.layer} reads only components up to the heads of its own layer"
        else:
            why = (f"the sender must be in an earlier layer than the receiver (layer {s.layer} is not "
                   f"before layer {r.layer})")
        raise UsageError(f"edge {edge}: {why}")
    keys_read_embeddings = getattr(cfg, "keys_read_embeddings", None)
    if edge.kind == "K" and s.kind not in (EMBED, POS_EMBED) and keys_read_embeddings is not None \
            and keys_read_embeddings(r.layer):
        raise UsageError(f"edge {edge}: the keys of layer {r.layer} read only the embeddings (the model's "
                         f"key_input is 'embeddings': K-composition is blocked), so nothing of {s.name} reaches them")
    return edge


def writes_before(sender: Component, receiver: Component, cfg: Any) -> bool:
    """Whether the receiver reads what the sender writes (the residual stream's order)."""
    if receiver.kind == LOGITS:
        return True
    if sender.kind in (EMBED, POS_EMBED):
        return True
    if receiver.is_head:
        return sender.layer < receiver.layer  # type: ignore[operator]
    # an MLP reads earlier layers and, unless attention and MLP run in parallel, its own layer's heads
    if sender.layer < receiver.layer:  # type: ignore[operator]
        return True
    return sender.is_head and sender.layer == receiver.layer and not cfg.parallel_attn_mlp


# ------------------------------------------------------------------ activation sites
# What activation patching can replace. Layer sites are written `L{l}.{kind}` (`L1.resid_pre`), head sites
# `L{l}H{h}.{kind}` (`L1H3.q`); a head alone (`L1H3`) is its output z, an MLP alone (`M0`) its output.
LAYER_SITES = {  # kind -> hook name, shape [batch, pos, d_model]
    "resid_pre": "blocks.{l}.hook_resid_pre",
    "resid_mid": "blocks.{l}.hook_resid_mid",
    "resid_post": "blocks.{l}.hook_resid_post",
    "attn_out": "blocks.{l}.hook_attn_out",
    "mlp_out": "blocks.{l}.hook_mlp_out",
}
HEAD_SITES = {  # kind -> hook name; the head's slice of it
    "z": "blocks.{l}.attn.hook_z",  # [batch, pos, head, d_head]
    "q": "blocks.{l}.attn.hook_q",  # [batch, pos, head, d_head]
    "k": "blocks.{l}.attn.hook_k",
    "v": "blocks.{l}.attn.hook_v",
    "q_input": "blocks.{l}.attn.hook_q_input",  # [batch, pos, head, d_model]
    "k_input": "blocks.{l}.attn.hook_k_input",
    "v_input": "blocks.{l}.attn.hook_v_input",
    "pattern": "blocks.{l}.attn.hook_pattern",  # [batch, head, q, k]
}
STREAM_SITES = {EMBED: "hook_embed", POS_EMBED: "hook_pos_embed"}  # what an embedding sender writes (internal)
SITE_DOC = ("an activation: L{l}.resid_pre / resid_mid / resid_post / attn_out / mlp_out, a head L{l}H{h} (its "
            "output) or L{l}H{h}.q / k / v / q_input / k_input / v_input / pattern, an MLP M{l} (its output)")


@dataclass(frozen=True)
class Site:
    """An activation that can be patched: `kind` (a key of LAYER_SITES or HEAD_SITES), its layer and head."""

    kind: str
    layer: int
    head: int | None = None

    @property
    def name(self) -> str:
        if self.kind in STREAM_SITES:
            return self.kind
        if self.head is None:
            return mlp_name(self.layer) if self.kind == "mlp_out" else f"L{self.layer}.{self.kind}"
        base = head_name(self.layer, self.head)
        return base if self.kind == "z" else f"{base}.{self.kind}"

    @property
    def hook(self) -> str:
        if self.kind in STREAM_SITES:
            return STREAM_SITES[self.kind]
        table = HEAD_SITES if self.head is not None else LAYER_SITES
        return table[self.kind].format(l=self.layer)

    def __str__(self) -> str:
        return self.name


def parse_site(text: Any) -> Site:
    """The site a name denotes (syntax only; `check_site` checks it against a model)."""
    if isinstance(text, Site):
        return text
    if not isinstance(text, str):
        raise UsageError(f"an activation site is named like 'L1.resid_pre' or 'L1H3.q', got {text!r}")
    base, dot, kind = text.strip().partition(".")
    if m := re.fullmatch(r"[Ll](\d{1,9})", base):
        if dot and kind in LAYER_SITES:
            return Site(kind, int(m.group(1)))
        hint = did_you_mean(kind, LAYER_SITES) if dot else ""
        raise UsageError(f"{text!r} is not an activation site{hint}: a layer site is L{{l}}.KIND, KIND one of "
                         f"{', '.join(LAYER_SITES)}")
    comp = parse_component(base)
    if comp.is_mlp and not dot:
        return Site("mlp_out", comp.layer)  # type: ignore[arg-type]
    if comp.is_head and (not dot or kind in HEAD_SITES):
        return Site(kind or "z", comp.layer, comp.head)  # type: ignore[arg-type]
    hint = did_you_mean(kind, HEAD_SITES) if comp.is_head else ""
    raise UsageError(f"{text!r} is not an activation site{hint}; expected {SITE_DOC}")


def check_site(text: Any, cfg: Any) -> Site:
    """A site of a model with config `cfg`, or a UsageError in the vocabulary's words."""
    site = parse_site(text)
    if site.head is not None:
        check_component(head_name(site.layer, site.head), cfg, allow=("head",))
    elif not 0 <= site.layer < cfg.n_layers:
        raise UsageError(f"the model has no layer {site.layer}: it has layers 0..{cfg.n_layers - 1}")
    elif site.kind == "mlp_out" and cfg.attn_only:
        raise UsageError(f"the model is attention-only: it has no {site.name}")
    elif site.kind == "resid_mid" and (cfg.attn_only or cfg.parallel_attn_mlp):
        raise UsageError(f"the model has no {site.name}: its blocks have no residual stream between attention "
                         f"and MLP")
    return site
