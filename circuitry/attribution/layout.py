"""Which components send and receive in a model's residual graph, in the order attribution stores them.

Senders are every component that writes into the residual stream, in stream
order: `embed`, `pos_embed` (learned positions), then per layer its heads and
its MLP. Every receiver input reads a prefix of that order: the heads of
layer l read everything before their own layer (Q, K, V), the MLP of layer l
everything up to its layer's heads (in a parallel-attention model, up to the
previous layer), the logits everything (direct); the keys of a head that read
only the embeddings (`ModelConfig.key_input` "embeddings", layers >= 1) read
just `embed` and `pos_embed`, the first senders. So one tensor of sender
outputs [batch, pos, sender, d_model] serves every receiver as a view, and
the edges are exactly those of `circuitry.graph.ResidualGraph`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from circuitry.errors import UsageError
from circuitry.names import EMBED, LOGITS, POS_EMBED, Edge, component_names, head_name, mlp_name


@dataclass(frozen=True)
class Receiver:
    """One receiver input: a head's Q/K/V (`head` set), an MLP's input or the logits, and how many senders
    (a prefix of `Layout.senders`) it reads."""

    name: str  # L1H2, M0 or logits
    kind: str  # Q, K, V, mlp_in or direct
    n_up: int
    layer: int | None = None
    head: int | None = None


@dataclass(frozen=True)
class Layout:
    """The senders and receivers of a model (by its config)."""

    n_layers: int
    n_heads: int
    attn_only: bool
    parallel: bool
    learned_positions: bool
    keys_read_embeddings: bool = False  # the keys of layers >= 1 read only the embeddings

    @classmethod
    def of(cls, cfg) -> Layout:
        return cls(cfg.n_layers, cfg.n_heads, cfg.attn_only, cfg.parallel_attn_mlp, cfg.positional == "learned",
                   cfg.key_input == "embeddings")

    @cached_property
    def senders(self) -> tuple[str, ...]:
        """Every component that writes, in stream order."""
        names = [EMBED, *([POS_EMBED] if self.learned_positions else [])]
        for layer in range(self.n_layers):
            names += [head_name(layer, h) for h in range(self.n_heads)]
            if not self.attn_only:
                names.append(mlp_name(layer))
        return tuple(names)

    @property
    def streams(self) -> int:
        """The number of embedding senders (embed, and pos_embed for learned positions)."""
        return 2 if self.learned_positions else 1

    @cached_property
    def index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.senders)}

    def first_head(self, layer: int) -> int:
        """Index of L{layer}H0 among the senders (the number of senders before that layer's heads)."""
        return self.index[head_name(layer, 0)]

    @cached_property
    def receivers(self) -> tuple[Receiver, ...]:
        out: list[Receiver] = []
        for layer in range(self.n_layers):
            before = self.first_head(layer)
            for h in range(self.n_heads):
                out += [Receiver(head_name(layer, h), kind, self.streams if kind == "K" and self.keys_read_embeddings
                                 and layer >= 1 else before, layer, h) for kind in ("Q", "K", "V")]
            if not self.attn_only:
                n_up = before if self.parallel else before + self.n_heads
                out.append(Receiver(mlp_name(layer), "mlp_in", n_up, layer))
        out.append(Receiver(LOGITS, "direct", len(self.senders)))
        return tuple(out)

    @cached_property
    def edges(self) -> tuple[Edge, ...]:
        """Every edge, receiver by receiver (in `receivers` order), senders in stream order."""
        return tuple(Edge(self.senders[s], r.name, r.kind) for r in self.receivers for s in range(r.n_up))

    @cached_property
    def edge_index(self) -> dict[Edge, int]:
        return {e: i for i, e in enumerate(self.edges)}

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        """Where each receiver's edges start in `edges`."""
        out, at = [], 0
        for r in self.receivers:
            out.append(at)
            at += r.n_up
        return tuple(out)

    @cached_property
    def edge_senders(self):
        """[n_edges] (torch.long): the sender index of every edge."""
        import torch

        return torch.tensor([self.index[e.sender] for e in self.edges], dtype=torch.long)

    def node_sums(self, edge_scores):
        """[n_senders]: each sender's outgoing edge scores summed (a node's score)."""
        import torch

        out = torch.zeros(len(self.senders), dtype=edge_scores.dtype)
        return out.index_add_(0, self.edge_senders, edge_scores)

    def check(self, cfg) -> None:
        """The layout's components are the model's (a guard against drifting from `names`)."""
        assert list(self.senders) + [LOGITS] == component_names(cfg), "attribution layout out of step with names"
        if self.keys_read_embeddings and cfg.pre_norm_kind is not None and cfg.n_layers > 1:
            raise UsageError("attribution of a model whose keys read the embeddings through a norm is not "
                             "supported: the gradients of their K edges would pass the residual stream's "
                             "normalisation, not the one the keys use (a model without norms, as circuitry train "
                             "makes, works)")
