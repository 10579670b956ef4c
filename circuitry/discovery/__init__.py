"""Circuit discovery: from a model and a task to a circuit and a spec that `circuitry verify` passes.

    from circuitry.discovery import discover, write_spec
    circuit = discover(load_model("builtin:attn-only-2l"), "induction")
    write_spec(circuit, "induction-found.yaml")

`core` runs the detectors, prunes nodes and edges by batched sweeps
(`prune`) and assigns roles; `specfile` measures the spec's checks and sets
their thresholds with a margin.
"""

from __future__ import annotations

from pathlib import Path

from circuitry.discovery.core import (
    DEFAULT_MARGIN, DEFAULT_ROLE_THRESHOLD, DEFAULT_TARGET, DEFAULT_TASK, Circuit, FoundEdge, FoundNode,
    MeasuredCheck, discover, resolve_task, task_data,
)
from circuitry.discovery.prune import PruneOutcome, PruneRound, prune_greedy
from circuitry.discovery.specfile import bound, ratio_bound


def write_spec(circuit: Circuit, path: str | Path) -> Path:
    """Write the circuit's spec atomically (temporary file, then rename)."""
    from circuitry.fileio import atomic_write_text

    path = Path(path)
    atomic_write_text(path, circuit.spec_text)
    return path


__all__ = [
    "Circuit", "FoundNode", "FoundEdge", "MeasuredCheck", "PruneRound", "PruneOutcome",
    "discover", "prune_greedy", "resolve_task", "task_data", "write_spec", "bound", "ratio_bound",
    "DEFAULT_TASK", "DEFAULT_TARGET", "DEFAULT_MARGIN", "DEFAULT_ROLE_THRESHOLD",
]
