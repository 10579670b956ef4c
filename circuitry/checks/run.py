"""`VerifiedRun`: the shared run of one spec on one model, reused by every check and every picture.

It holds the model, the clean batch, the reference batch (only when a check
needs one), the one clean cached run, and every record computed on them
(detector scores, the decomposition, the clean value of each metric, the
values of the batched sweeps). Check kinds read it; `verify --html`,
`discover` and notebooks reuse it through `VerificationReport.run` instead
of running the model again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from circuitry.data import TokenBatch
from circuitry.errors import UsageError
from circuitry.model import HookedTransformer
from circuitry.names import Component, Edge, check_component, check_edge, component_names, parse_component
from circuitry.plugins import PluginManager
from circuitry.spec.format import CircuitSpec
from circuitry.spec.loader import SpecError


class VerifiedRun:
    """Everything computed while verifying `spec` on `model` (see the module docstring).

    Attributes set by `circuitry.verify.verify`: `clean` (the clean `CleanRun`,
    with attention patterns when a check needs them), `reference_batch`,
    `swept` ({sweep key: metric value}).
    """

    def __init__(self, spec: CircuitSpec, model: HookedTransformer, batch: TokenBatch,
                 manager: PluginManager) -> None:
        self.spec, self.model, self.batch, self.manager = spec, model, batch, manager
        self.reference_batch: TokenBatch | None = None
        self.clean: Any = None
        self.swept: dict[str, float] = {}
        self.warnings: list[str] = []
        self._detectors: dict[str, Any] = {}
        self._metric_clean: dict[str, float] = {}
        self._reference: Any = None
        self._decomposition: Any = None
        self._corrupted: Any = None
        self._metric_corrupted: dict[str, float] = {}
        self._denoising_source: Any = None

    def for_spec(self, spec: CircuitSpec) -> VerifiedRun:
        """This run for another spec on the same model and data (a spec rewritten with other
        expectations, say): the clean run, reference, swept values and computed records are shared."""
        other = VerifiedRun(spec, self.model, self.batch, self.manager)
        other.reference_batch, other.clean, other.swept = self.reference_batch, self.clean, dict(self.swept)
        other._detectors, other._metric_clean = self._detectors, self._metric_clean
        other._reference, other._decomposition = self._reference, self._decomposition
        other._corrupted, other._metric_corrupted = self._corrupted, self._metric_corrupted
        return other

    # locating problems --------------------------------------------------
    def error(self, path: tuple, message: str, at_key: bool = False) -> SpecError:
        """A SpecError at the spec's file:line:col of `path`."""
        return self.spec.document.error(path, message, at_key=at_key)

    def warn(self, message: str, path: tuple | None = None) -> None:
        """A warning for the report (stderr, and the `warnings` list of --json), located when `path` is given."""
        mark = self.spec.document.mark(path) if path is not None else None
        text = f"{mark}: {message}" if mark else message
        if text not in self.warnings:
            self.warnings.append(text)

    def component(self, name: Any, path: tuple, allow: tuple[str, ...] = ("head", "mlp"),
                  at_key: bool = False) -> Component:
        """The model's component `name`, or a SpecError at `path` in the vocabulary's words."""
        try:
            return check_component(name, self.model.cfg, allow=allow)
        except UsageError as exc:
            raise self.error(path, str(exc), at_key=at_key) from None

    def edge(self, value: Any, path: tuple) -> Edge:
        """The model's edge `value` ('A -> B (K)' or a mapping), or a SpecError at `path`."""
        try:
            return check_edge(value, self.model.cfg)
        except UsageError as exc:
            raise self.error(path, str(exc)) from None

    def lookup(self, hook: str, name: str, path: tuple) -> Any:
        """The record `name` a plugin registers through `hook`, or the 'not available' error at `path`."""
        try:
            return self.manager.get(hook, name)
        except UsageError as exc:
            raise self.error(path, str(exc)) from None

    # shared computations ---------------------------------------------------
    def detector(self, name: str, path: tuple = ()) -> Any:
        """The scores of detector `name` on the clean run ([layer, head] or PairScores), computed once."""
        if name not in self._detectors:
            from circuitry.scan import run_detectors

            det = self.lookup("circuitry_detectors", name, path)
            heads, pairs = run_detectors(self.model, self.batch, {name: det},
                                         cache=self.clean.cache if self.clean is not None else None)
            self._detectors[name] = heads.get(name, pairs.get(name))
        return self._detectors[name]

    @property
    def detector_results(self) -> dict[str, Any]:
        """Every detector result computed so far, by name."""
        return dict(self._detectors)

    def metric(self, name: str, path: tuple = ()) -> Any:
        """The metric record `name` (`Metric`: compute(logits, batch, clean_logits=None), read with the clean
        batch, `run.batch`, and the clean run's logits, `run.clean.logits`); a SpecError at `path` if unknown."""
        return self.lookup("circuitry_metrics", name, path)

    def metric_clean(self, name: str) -> float:
        """The metric's value on the clean run."""
        if name not in self._metric_clean:
            record = self.metric(name)
            self._metric_clean[name] = float(record.compute(self.clean.logits, self.batch, self.clean.logits))
        return self._metric_clean[name]

    @property
    def task(self) -> Any:
        """The task batch (`ContrastiveBatch`) when the spec checks a task, else None."""
        return self.batch if hasattr(self.batch, "corrupted") else None

    def require_task(self, path: tuple, what: str) -> Any:
        """The task batch, or a SpecError at `path` saying that `what` needs a task."""
        if self.task is None:
            raise self.error(path, f"{what} needs a task (the spec's `task:`, with clean and corrupted prompts)")
        return self.task

    def corrupted_run(self) -> Any:
        """The run on the task's corrupted prompts (the base run of denoising), cached like the clean run."""
        if self._corrupted is None:
            from circuitry.interventions import clean_run

            self._corrupted = clean_run(self.model, self.task.corrupted, patterns=False)
        return self._corrupted

    def metric_corrupted(self, name: str) -> float:
        """The metric's value on the corrupted run of the task (the same answers, read at the same positions)."""
        if name not in self._metric_corrupted:
            record = self.metric(name)
            run = self.corrupted_run()
            self._metric_corrupted[name] = float(record.compute(run.logits, self.batch, self.clean.logits))
        return self._metric_corrupted[name]

    def denoising_source(self, make: Any) -> Any:
        """The run on the clean prompts that denoising patches read (made once by `make()`)."""
        if self._denoising_source is None:
            self._denoising_source = make()
        return self._denoising_source

    def reference(self, interventions: Any = None) -> Any:
        """The reference run (caching only what the interventions read: by default what node ablations and
        edge patches read), or None without a reference batch; made once."""
        if self._reference is None and self.reference_batch is not None:
            from circuitry.interventions import reference_run

            self._reference = reference_run(self.model, self.reference_batch.tokens, interventions)
        return self._reference

    def decomposition(self) -> Any:
        """The exact path decomposition of the clean run's logits, computed once from the clean cache."""
        if self._decomposition is None:
            from circuitry.graph import decompose

            self._decomposition = decompose(self.model, self.batch.tokens, self.clean.cache, self.clean.logits)
        return self._decomposition

    def every_component(self) -> list[str]:
        """Every head and MLP of the model, in stream order."""
        return [n for n in component_names(self.model.cfg) if parse_component(n).kind in ("head", "mlp")]

    def check_nodes(self, check: Any, allow: tuple[str, ...] = ("head", "mlp")) -> list[str]:
        """The nodes a check names (`nodes:`), or the circuit's nodes with its `role:` (for a detector
        check without either, the nodes whose role is the detector's name), validated against the model."""
        from circuitry.checks.base import items
        from circuitry.errors import did_you_mean

        path, options = check.path, check.options
        if "nodes" in options:
            return [self.component(n, p, allow).name for n, p in items(options["nodes"], (*path, "nodes"))]
        key = "role" if "role" in options else "detector"
        role = options[key]
        nodes = [n for n, r in self.spec.nodes.items() if r == role]
        if not nodes:
            roles = sorted(set(self.spec.nodes.values()) - {""})
            known = f"roles in the circuit: {', '.join(roles)}" if roles else "no circuit node has a role"
            how = "" if key == "role" else (" (a detector check without nodes: or role: checks the nodes with the "
                                            "detector's name as role)")
            raise self.error((*path, key), f"no circuit node has role {role!r}{did_you_mean(str(role), roles)}"
                                           f"{how}; give nodes: [...] or role: ({known})")
        for n in nodes:  # a node the model lacks is reported with the circuit; here its kind must fit
            try:
                check_component(n, self.model.cfg)
            except UsageError:
                continue
            try:
                check_component(n, self.model.cfg, allow=allow)
            except UsageError as exc:
                raise self.error((*path, key), f"circuit node {n} (role {role!r}): {exc}") from None
        return nodes


def union(needs: Iterable[frozenset[str]]) -> frozenset[str]:
    out: frozenset[str] = frozenset()
    for n in needs:
        out |= n
    return out
