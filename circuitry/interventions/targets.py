"""What an intervention acts on: nodes (a head `L{l}H{h}`, an MLP `M{l}`) and edges.

An edge `sender -> receiver (kind)` is the path through which the sender's
output reaches a later head's query, key or value input (kind "Q", "K", "V"),
an MLP's input (kind "mlp_in") or the logits directly (kind "direct", receiver
`logits`). A sender is a node or an embedding (`Stream`: `embed`, `pos_embed`).
"""

from __future__ import annotations

from dataclasses import dataclass

from circuitry.errors import UsageError
from circuitry.model.config import ModelConfig
from circuitry.names import (
    EDGE_KINDS,  # noqa: F401 - re-exported by circuitry.interventions
    EMBED,
    LOGITS,
    POS_EMBED,
    check_component,
    check_edge,
    check_kind,
    parse_component,
    parse_edge,
)

PATCHABLE_KINDS = ("Q", "K", "V", "mlp_in", "direct")  # the edge kinds path patching can act on


@dataclass(frozen=True, order=True)
class Node:
    """A component that writes into the residual stream: head `L{layer}H{head}` or MLP `M{layer}` (head None)."""

    layer: int
    head: int | None = None

    @classmethod
    def parse(cls, name: "str | Node") -> "Node":
        """Node from "L0H1" or "M0" (a Node is returned unchanged)."""
        if isinstance(name, Node):
            return name
        comp = parse_component(name)
        if comp.kind not in ("head", "mlp"):
            raise UsageError(f"{comp.name}: interventions act on heads (L{{layer}}H{{head}}) and MLPs "
                             f"(M{{layer}}), not on {comp.name}")
        return cls(comp.layer, comp.head)  # type: ignore[arg-type]

    @property
    def is_head(self) -> bool:
        return self.head is not None

    @property
    def name(self) -> str:
        return f"L{self.layer}H{self.head}" if self.is_head else f"M{self.layer}"

    def __str__(self) -> str:
        return self.name

    def check(self, cfg: ModelConfig) -> "Node":
        """self, or a UsageError when the model has no such component."""
        check_component(self.name, cfg, allow=("head", "mlp"))
        return self


@dataclass(frozen=True)
class Stream:
    """An embedding as a sender: `embed` (token embeddings) or `pos_embed` (learned positions)."""

    name: str
    layer = None
    head = None
    is_head = False
    is_mlp = False

    def __post_init__(self) -> None:
        if self.name not in (EMBED, POS_EMBED):
            raise UsageError(f"{self.name!r} is not an embedding: expected {EMBED} or {POS_EMBED}")

    def __str__(self) -> str:
        return self.name

    def check(self, cfg: ModelConfig) -> "Stream":
        check_component(self.name, cfg, allow=(EMBED, POS_EMBED))
        return self


def sender_of(name: "str | Node | Stream") -> "Node | Stream":
    """The sender a name denotes: an embedding or a node."""
    if isinstance(name, (Node, Stream)):
        return name
    return Stream(name) if name in (EMBED, POS_EMBED) else Node.parse(name)


@dataclass(frozen=True)
class Edge:
    """The path sender -> receiver: into a later head's Q, K or V input, or "direct" into the logits.

    `receiver` is a head Node for Q/K/V edges, an MLP Node for mlp_in edges and
    None (the logits) for direct edges. Names are accepted for convenience:
    `Edge("L0H0", "L1H0", "K")`, `Edge("embed", "M0", "mlp_in")`, `Edge("L1H2", "logits", "direct")`.
    """

    sender: Node | Stream
    receiver: Node | None
    kind: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "sender", sender_of(self.sender))
        check_kind(self.kind)
        if self.kind not in PATCHABLE_KINDS:
            raise UsageError(f"{self.kind} edges cannot be patched; path patching acts on "
                             f"{', '.join(PATCHABLE_KINDS)} edges")
        recv = self.receiver
        receiver = LOGITS if recv is None else (recv.name if isinstance(recv, Node) else recv)
        edge = parse_edge(f"{self.sender} -> {receiver} ({self.kind})")  # kinds that fit the receiver
        if self.kind == "direct":
            object.__setattr__(self, "receiver", None)
            return
        recv = Node.parse(edge.receiver)
        s = self.sender
        same_layer_ok = recv.layer == s.layer and not recv.is_head and s.is_head  # a head into its layer's MLP
        if isinstance(s, Node) and recv.layer <= s.layer and not same_layer_ok:
            raise UsageError(f"edge {edge}: the receiver must read after the sender writes (a later layer, or "
                             f"the MLP of the sender's layer)")
        object.__setattr__(self, "receiver", recv)

    @property
    def name(self) -> str:
        return f"{self.sender} -> {self.receiver or LOGITS} ({self.kind})"

    def __str__(self) -> str:
        return self.name

    def check(self, cfg: ModelConfig) -> "Edge":
        self.sender.check(cfg)
        if self.receiver is not None:
            self.receiver.check(cfg)
        check_edge(self.name, cfg)  # the sender writes before the receiver reads (parallel MLPs)
        return self


def all_heads(cfg: ModelConfig) -> list[Node]:
    """Every head of the model, layer by layer."""
    return [Node(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]


def all_mlps(cfg: ModelConfig) -> list[Node]:
    """Every MLP of the model (none for attention-only models)."""
    return [] if cfg.attn_only else [Node(l) for l in range(cfg.n_layers)]
