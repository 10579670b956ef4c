"""Circuit discovery: from a model and a task to a circuit and a spec that `circuitry verify` passes.

    from circuitry.discovery import discover, write_spec
    circuit = discover(load_model("builtin:attn-only-2l"), "induction")
    write_spec(circuit, "induction-found.yaml")
    circuit = discover(load_model("builtin:attn-only-2l"), "specs/tasks/induction.yaml")  # a task file

`core` runs the detectors, prunes nodes and edges by batched sweeps
(`prune`) and assigns roles; `specfile` measures the spec's checks and sets
their thresholds with a margin; `records` holds what a discovery returns
(`Circuit` and its nodes, edges and checks) or raises (`TaskNotDone`).
"""

from __future__ import annotations

from pathlib import Path

from circuitry.discovery.core import (
    DEFAULT_MARGIN,
    DEFAULT_ROLE_THRESHOLD,
    DEFAULT_TARGET,
    DEFAULT_TASK,
    MIN_LOGIT_EFFECT,
    MIN_TASK_EFFECT,
    MIN_TASK_EFFECT_FRACTION,
    check_task_data,
    discover,
    names_a_file,
    resolve_task,
    task_data,
    task_effect_required,
    task_rule,
)
from circuitry.discovery.prune import PruneOutcome, PruneRound, prune_greedy
from circuitry.discovery.records import (
    Circuit,
    FoundEdge,
    FoundNode,
    MeasuredCheck,
    TaskNotDone,
)
from circuitry.discovery.specfile import (
    better_bound,
    bound,
    model_for_spec,
    ratio_bound,
    spec_name,
    spec_text_at,
    task_for_spec,
)
from circuitry.fileio import atomic_write_text


def write_spec(circuit: Circuit, path: str | Path) -> Path:
    """Write the circuit's spec atomically (temporary file, then rename); a model or task file inside the
    spec's directory is named by its path relative to it."""
    path = Path(path)
    atomic_write_text(path, spec_text_at(circuit, path))
    return path


__all__ = [
    "DEFAULT_MARGIN",
    "DEFAULT_ROLE_THRESHOLD",
    "DEFAULT_TARGET",
    "DEFAULT_TASK",
    "MIN_LOGIT_EFFECT",
    "MIN_TASK_EFFECT",
    "MIN_TASK_EFFECT_FRACTION",
    "Circuit",
    "FoundEdge",
    "FoundNode",
    "MeasuredCheck",
    "PruneOutcome",
    "PruneRound",
    "TaskNotDone",
    "better_bound",
    "bound",
    "check_task_data",
    "discover",
    "model_for_spec",
    "names_a_file",
    "prune_greedy",
    "ratio_bound",
    "resolve_task",
    "spec_name",
    "spec_text_at",
    "task_data",
    "task_effect_required",
    "task_for_spec",
    "task_rule",
    "write_spec",
]
