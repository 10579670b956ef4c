"""Standard interventions: zero, mean, resample and corrupted replacement, and pattern-preserving ablation.

Each applies to a node (a head `L{l}H{h}` or an MLP `M{l}`: its output is
replaced in every path), to an edge (`A -> B (Q|K|V|direct)`: the sender's
output is replaced only in that one input of the receiver; path patching), or
to an activation site (`L1.resid_pre`, `L0.attn_out`, `L1H3.q`, `L1H3.pattern`
...: activation patching). Every one takes `at`: the positions it acts on (a
bool mask [batch, pos]; None: every position).

- zero: the activation becomes zero (a head keeps the shared attention bias b_O).
- mean: the activation averaged over the reference batch, at each position.
- resample: the activation on another sequence of the reference batch, same positions.
- corrupted: the activation of the paired run, row by row: a task's corrupted
  prompts (noising) or clean prompts (denoising): interchange / activation patching.
- pattern_preserving: zero ablation with every attention pattern frozen to the
  clean run's (Olsson et al. 2022); nodes only.
"""

from __future__ import annotations

from circuitry import hookimpl
from circuitry.errors import UsageError
from circuitry.interventions import Ablation, Edge, EdgePatch, Node, Patch
from circuitry.names import Site
from circuitry.records import Intervention

TARGETS = ("head", "mlp", "edge", "site")


def _builder(method: str, preserve: bool = False):
    def build(target, at=None):
        if isinstance(target, Edge):
            if preserve:
                raise UsageError("pattern_preserving applies to nodes, not edges; use zero, mean or resample")
            return EdgePatch(target, method, at=at)
        if isinstance(target, Site):
            if preserve:
                raise UsageError("pattern_preserving applies to nodes, not activation sites")
            return Patch(target, method, at=at)
        return Ablation(Node.parse(target), method, preserve_patterns=preserve, at=at)
    return build


@hookimpl
def circuitry_interventions():
    return [
        Intervention("zero", "replace the activation with zero", _builder("zero"), TARGETS),
        Intervention("mean", "replace the activation with its mean over the reference batch, per position",
                     _builder("mean"), TARGETS),
        Intervention("resample", "replace the activation with its value on another sequence (same positions)",
                     _builder("resample"), TARGETS),
        Intervention("corrupted", "replace the activation with the paired run's (a task's corrupted prompts when "
                                  "noising, its clean prompts when denoising): activation patching",
                     _builder("corrupted"), TARGETS),
        Intervention("pattern_preserving", "zero ablation with all attention patterns frozen to the clean run",
                     _builder("zero", preserve=True), ("head", "mlp")),
    ]
