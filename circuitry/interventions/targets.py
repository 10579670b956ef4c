"""What an intervention acts on: nodes (a head `L{l}H{h}`, an MLP `M{l}`) and edges.

An edge `sender -> receiver (kind)` is the path through which the sender's
output reaches a later head's query, key or value input (kind "Q", "K", "V"),
or the logits directly (kind "direct", receiver `logits`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from circuitry.errors import UsageError
from circuitry.model.config import ModelConfig

EDGE_KINDS = ("Q", "K", "V", "direct")
LOGITS = "logits"

_HEAD = re.compile(r"^L(\d+)H(\d+)$")
_MLP = re.compile(r"^M(\d+)$")


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
        if not isinstance(name, str):
            raise UsageError(f"a node is a name like 'L0H1' or 'M0', got {name!r}")
        m = _HEAD.match(name.strip())
        if m:
            return cls(int(m.group(1)), int(m.group(2)))
        m = _MLP.match(name.strip())
        if m:
            return cls(int(m.group(1)), None)
        raise UsageError(f"bad node name {name!r}: expected a head 'L{{layer}}H{{head}}' (e.g. 'L0H1') "
                         f"or an MLP 'M{{layer}}' (e.g. 'M0')")

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
        if not 0 <= self.layer < cfg.n_layers:
            raise UsageError(f"{self.name}: the model has layers 0..{cfg.n_layers - 1}")
        if self.is_head and not 0 <= self.head < cfg.n_heads:  # type: ignore[operator]
            raise UsageError(f"{self.name}: the model has heads 0..{cfg.n_heads - 1} per layer")
        if not self.is_head and cfg.attn_only:
            raise UsageError(f"{self.name}: the model {cfg.name!r} is attention-only (no MLPs)")
        return self


@dataclass(frozen=True)
class Edge:
    """The path sender -> receiver: into a later head's Q, K or V input, or "direct" into the logits.

    `receiver` is a head Node for Q/K/V edges and None (the logits) for
    direct edges. Names are accepted for convenience:
    `Edge("L0H0", "L1H0", "K")`, `Edge("L1H2", "logits", "direct")`.
    """

    sender: Node
    receiver: Node | None
    kind: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "sender", Node.parse(self.sender))
        if self.kind not in EDGE_KINDS:
            raise UsageError(f"edge kind must be one of {', '.join(EDGE_KINDS)}, got {self.kind!r}")
        recv = self.receiver
        if self.kind == "direct":
            if recv not in (None, LOGITS):
                raise UsageError(f"a direct edge goes into {LOGITS!r}, not {recv!s}")
            object.__setattr__(self, "receiver", None)
            return
        if recv in (None, LOGITS):
            raise UsageError(f"a {self.kind} edge needs a receiving head, not {LOGITS!r} (use kind 'direct')")
        recv = Node.parse(recv)  # type: ignore[arg-type]
        if not recv.is_head:
            raise UsageError(f"{recv}: only attention heads have {self.kind} inputs")
        if recv.layer <= self.sender.layer:
            raise UsageError(f"edge {self.sender} -> {recv}: the receiver must be in a later layer "
                             f"than the sender")
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
        return self


def all_heads(cfg: ModelConfig) -> list[Node]:
    """Every head of the model, layer by layer."""
    return [Node(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]


def all_mlps(cfg: ModelConfig) -> list[Node]:
    """Every MLP of the model (none for attention-only models)."""
    return [] if cfg.attn_only else [Node(l) for l in range(cfg.n_layers)]
