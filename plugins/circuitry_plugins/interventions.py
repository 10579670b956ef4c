"""Standard interventions: zero, mean and resample ablation, and pattern-preserving ablation.

Each applies to a node (a head `L{l}H{h}` or an MLP `M{l}`: its output is
replaced in every path) or to an edge (`A -> B (Q|K|V|direct)`: the sender's
output is replaced only in that one input of the receiver; path patching).

- zero: the output becomes zero (a head keeps the shared attention bias b_O).
- mean: the output averaged over the reference batch, at each position.
- resample: the output on another sequence of the reference batch, same positions.
- pattern_preserving: zero ablation with every attention pattern frozen to the
  clean run's (Olsson et al. 2022); nodes only.
"""

from __future__ import annotations

from circuitry import hookimpl
from circuitry.errors import UsageError
from circuitry.interventions import Ablation, Edge, EdgePatch, Node
from circuitry.records import Intervention


def _builder(method: str, preserve: bool = False):
    def build(target):
        if isinstance(target, Edge):
            if preserve:
                raise UsageError("pattern_preserving applies to nodes, not edges; use zero, mean or resample")
            return EdgePatch(target, method)
        return Ablation(Node.parse(target), method, preserve_patterns=preserve)
    return build


@hookimpl
def circuitry_interventions():
    return [
        Intervention("zero", "replace the output with zero", _builder("zero"), ("head", "mlp", "edge")),
        Intervention("mean", "replace the output with its mean over the reference batch, per position",
                     _builder("mean"), ("head", "mlp", "edge")),
        Intervention("resample", "replace the output with its value on another sequence (same positions)",
                     _builder("resample"), ("head", "mlp", "edge")),
        Intervention("pattern_preserving", "zero ablation with all attention patterns frozen to the clean run",
                     _builder("zero", preserve=True), ("head", "mlp")),
    ]
