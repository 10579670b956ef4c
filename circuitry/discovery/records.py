"""The records of a discovery: the circuit found (nodes, edges, measured checks), or why there is none.

`Circuit` is what `discover` returns; `TaskNotDone` is what it raises when the
model does not do the task (a finding, exit code 1), with both metric values.
Every `to_json` writes strict JSON: an undefined number (NaN, infinite) is null.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from circuitry.discovery.prune import PruneRound
from circuitry.errors import CircuitryError
from circuitry.jsonable import finite_or_none, finite_tree


def _num(x: float | None) -> float | None:
    """x for JSON: None when it is None, NaN or infinite (`circuitry.jsonable.finite_or_none`)."""
    return finite_or_none(x)


@dataclass(frozen=True)
class FoundNode:
    """A kept component: its role (a role detector's name, or "" for none), its detector scores, and the
    fraction of the task effect lost when it alone is removed from the final circuit."""

    name: str
    role: str
    scores: Mapping[str, float]
    effect: float

    def to_json(self) -> dict:
        """role "" means no detector role; effect (and a score) is null when undefined (NaN)."""
        return {"node": self.name, "role": self.role,
                "scores": {k: finite_or_none(v) for k, v in self.scores.items()}, "effect": _num(self.effect)}


@dataclass(frozen=True)
class FoundEdge:
    """A kept edge sender -> receiver (kind); composition: score / random baseline (None for MLP senders)."""

    sender: str
    receiver: str
    kind: str
    composition: float | None
    effect: float

    @property
    def name(self) -> str:
        return f"{self.sender} -> {self.receiver} ({self.kind})"

    def to_json(self) -> dict:
        """composition_ratio is null for an MLP sender; effect is null when undefined (NaN)."""
        return {"edge": self.name, "from": self.sender, "to": self.receiver, "kind": self.kind,
                "composition_ratio": _num(self.composition), "effect": _num(self.effect)}


@dataclass(frozen=True)
class MeasuredCheck:
    """A check of the written spec: the value `verify` measured and the expectation set from it."""

    id: str
    kind: str
    value: float
    expect: str

    def to_json(self) -> dict:
        """value is null when verify measured no finite number."""
        return {"id": self.id, "kind": self.kind, "value": _num(self.value), "expect": self.expect}


@dataclass(frozen=True)
class Circuit:
    """What `discover` found, how well it recovers the task metric, and what it cost."""

    model: str  # the model reference (a local path made absolute)
    task: str
    metric: str
    data: Mapping[str, Any]
    reference_data: Mapping[str, Any]
    nodes: tuple[FoundNode, ...]
    edges: tuple[FoundEdge, ...]
    metric_clean: float
    metric_ablated: float  # every component removed (mean-ablated, or its corrupted activation for a task file)
    metric_nodes: float  # components outside the circuit removed
    metric_circuit: float  # ... and the pruned edges patched as well
    target: float
    margin: float
    role_threshold: float
    method: str  # "batched" or "naive" sweeps
    rounds: tuple[PruneRound, ...]
    interventions: int  # evaluated by the pruning sweeps
    prune_passes: int  # forward passes of the pruning sweeps
    total_passes: int  # every forward pass of the run (detectors, clean runs, sweeps, measuring the checks)
    prune_seconds: float
    seconds: float
    checks: tuple[MeasuredCheck, ...]
    spec_text: str  # the spec as printed (a local model path absolute; `write_spec` relocates it)
    name: str  # the spec's metadata.name
    components: int  # heads and MLPs of the model
    task_file: str = ""  # a task file's absolute path ("" for a task plugin)
    ablation: str = "mean"  # how removed components and edges are replaced: mean, or corrupted (a task file)
    lower_is_better: bool = True  # the metric's direction
    metric_corrupted: float = math.nan  # a task file: the metric on the corrupted prompts (same answers)

    @property
    def whole_model(self) -> bool:
        """Whether the circuit keeps every component (then it recovers the metric by definition)."""
        return len(self.nodes) == self.components

    def _frac(self, value: float) -> float:
        d = self.metric_ablated - self.metric_clean
        return (self.metric_ablated - value) / d if d else math.nan

    @property
    def recovered_nodes(self) -> float:
        """Fraction recovered by the circuit's nodes (the spec's faithfulness check)."""
        return 1.0 if self.whole_model else self._frac(self.metric_nodes)

    @property
    def recovered(self) -> float:
        """Fraction recovered by the circuit's nodes with only its edges between them."""
        return self._frac(self.metric_circuit)

    def to_json(self) -> dict:
        """The strict-JSON document of `discover --json`. A number that is undefined is null:
        recovered fractions when ablating everything leaves the metric at its clean value (0/0),
        metrics that came out NaN or infinite, `metric_corrupted` and `task_file` without a task file. The
        `seconds` fields (here and in each round) are
        the only timings."""
        return {
            "name": self.name, "model": self.model, "task": self.task, "task_file": self.task_file or None,
            "metric": self.metric, "lower_is_better": self.lower_is_better, "ablation": self.ablation,
            "does_task": True,
            "data": finite_tree(dict(self.data)), "reference_data": finite_tree(dict(self.reference_data)),
            "nodes": [n.to_json() for n in self.nodes], "edges": [e.to_json() for e in self.edges],
            "whole_model": self.whole_model,
            "metric_clean": _num(self.metric_clean), "metric_corrupted": _num(self.metric_corrupted),
            "metric_all_ablated": _num(self.metric_ablated), "metric_nodes_only": _num(self.metric_nodes),
            "metric_circuit": _num(self.metric_circuit),
            "recovered_nodes": _num(self.recovered_nodes), "recovered": _num(self.recovered),
            "target": self.target, "margin": self.margin, "role_threshold": self.role_threshold,
            "sweeps": self.method, "rounds": [r.to_json() for r in self.rounds],
            "interventions": self.interventions,
            "forward_passes": {"pruning": self.prune_passes, "total": self.total_passes},
            "seconds": {"pruning": round(self.prune_seconds, 4), "total": round(self.seconds, 4)},
            "checks": [c.to_json() for c in self.checks],
        }


# how every component is removed in the all-ablated run, in words
REMOVED = {"mean": "mean-ablated", "corrupted": "replaced by its activation on the corrupted prompts"}


class TaskNotDone(CircuitryError):
    """The model does not do the task: the metric on the clean run is not clearly better than with every
    component ablated, so there is no circuit to find. A finding, not an error of the user: exit code 1."""

    exit_code = 1

    def __init__(self, model: str, task: str, metric: str, data: Mapping[str, Any], clean: float,
                 ablated: float, lower_is_better: bool, required: float, rule: str, ablation: str = "mean") -> None:
        self.model, self.task, self.metric, self.data = model, task, metric, dict(data)
        self.clean, self.ablated, self.lower_is_better = clean, ablated, lower_is_better
        self.required, self.rule, self.ablation = required, rule, ablation
        removed = REMOVED.get(ablation, f"replaced ({ablation})")
        better = "lower" if lower_is_better else "higher"
        how = f"better by {self.effect:.4g}" if self.effect >= 0 else f"worse by {-self.effect:.4g}"
        if math.isnan(self.effect):
            how = "not comparable"
        super().__init__(
            f"{model} does not do task {task!r}: {metric} {clean:.4f} on the clean run, {ablated:.4f} with every "
            f"component {removed}; a model that does the task is better ({better}) on the clean run by at "
            f"least {required:.4g} ({rule}), this one is {how}. There is no circuit to find; no spec written.")

    @property
    def effect(self) -> float:
        """How much better the clean run is than the all-ablated one (negative: worse)."""
        return self.ablated - self.clean if self.lower_is_better else self.clean - self.ablated

    def to_json(self) -> dict:
        """The `discover --json` document of the refusal (undefined numbers are null)."""
        return {"model": self.model, "task": self.task, "metric": self.metric, "data": finite_tree(self.data),
                "does_task": False, "circuit": None, "spec": None, "reason": str(self), "ablation": self.ablation,
                "metric_clean": _num(self.clean), "metric_all_ablated": _num(self.ablated),
                "lower_is_better": self.lower_is_better, "effect": _num(self.effect),
                "required_effect": _num(self.required), "rule": self.rule}
