"""Specs verified across several models or across the checkpoints of a training run: checks x subjects.

`circuitry verify SPEC --checkpoints DIR` verifies every checkpoint of a run
(listed and ordered by `circuitry.track.list_checkpoints`, as `circuitry track`
lists them) and names the first checkpoint at which every check holds;
`circuitry verify SPEC --model A --model B` verifies each model. Each subject
(model or checkpoint) is loaded once for all the specs; for checkpoints, which
share one shape and vocabulary, each spec's batches (clean and reference) are
built once and reused.

Pass rule (the exit code of the command): across checkpoints, the last
checkpoint must pass every check (earlier ones are expected to fail while the
circuit forms); across models, every model must pass every check.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from circuitry.jsonable import finite_or_none
from circuitry.spec.format import CircuitSpec
from circuitry.verify import VerificationReport

OVER = ("checkpoints", "models")


@dataclass(frozen=True)
class Subject:
    """One model or checkpoint a spec is verified on."""

    label: str  # "step 600", or the model reference
    ref: str  # what is loaded
    step: int | None = None  # the training step of a checkpoint

    def to_json(self) -> dict:
        return {"label": self.label, "ref": self.ref, "step": self.step}


def checkpoint_subjects(paths: Iterable[str | Path]) -> list[Subject]:
    """The checkpoints of one training run in step order (files, or directories as `circuitry track` takes)."""
    from circuitry.track import list_checkpoints

    return [Subject(f"step {step}", str(path), step) for step, path in list_checkpoints(paths)]


def model_subjects(refs: Sequence[str]) -> list[Subject]:
    return [Subject(ref, ref) for ref in refs]


def thresholds(spec: CircuitSpec) -> dict[str, tuple[float, ...]]:
    """The bounds of each check's expectation (one for `>= a`, two for a range or `== a ± b`)."""
    from circuitry.spec.format import expectation_of

    out: dict[str, tuple[float, ...]] = {}
    for check in spec.checks:
        _, exp = expectation_of(check)
        if exp.op == "range" and exp.b is not None:
            out[check.id] = (exp.a, exp.b)
        elif exp.op == "==" and exp.b:
            out[check.id] = (exp.a - exp.b, exp.a + exp.b)
        else:
            out[check.id] = (exp.a,)
    return out


@dataclass(frozen=True)
class Across:
    """One spec's reports over the subjects, in order (`reports[j]` is `subjects[j]`'s, without its run)."""

    spec: str
    name: str
    over: str  # "checkpoints" or "models"
    subjects: tuple[Subject, ...]
    reports: tuple[VerificationReport, ...]
    thresholds: dict[str, tuple[float, ...]]

    @property
    def check_ids(self) -> list[str]:
        return [c.id for c in self.reports[0].checks] if self.reports else []

    def values(self, check_id: str) -> list[float | None]:
        """The check's measured value on each subject."""
        return [next(c.value for c in r.checks if c.id == check_id) for r in self.reports]

    def holds(self, check_id: str) -> list[bool]:
        return [next(c.passed for c in r.checks if c.id == check_id) for r in self.reports]

    @property
    def first_passing(self) -> Subject | None:
        """The first subject on which every check holds; None: never."""
        return next((s for s, r in zip(self.subjects, self.reports) if r.passed), None)

    @property
    def holds_from(self) -> Subject | None:
        """The first subject from which every check holds on it and on every later one; None: the last fails."""
        found = None
        for s, r in reversed(list(zip(self.subjects, self.reports))):
            if not r.passed:
                break
            found = s
        return found

    @property
    def passed(self) -> bool:
        """Checkpoints: the last one passes every check; models: every model does."""
        if not self.reports:
            return False
        return self.reports[-1].passed if self.over == "checkpoints" else all(r.passed for r in self.reports)

    def to_json(self) -> dict:
        first, since = self.first_passing, self.holds_from
        checks = []
        for check in self.reports[0].checks if self.reports else ():
            checks.append({"id": check.id, "claim": check.claim, "expect": check.expect,
                           "thresholds": list(self.thresholds.get(check.id, ())),
                           "values": [finite_or_none(v) for v in self.values(check.id)],
                           "passed": self.holds(check.id)})
        return {"spec": self.spec, "name": self.name, "over": self.over, "passed": self.passed,
                "subjects": [s.to_json() for s in self.subjects],
                "subjects_passed": [r.passed for r in self.reports],
                "first_passing": first.to_json() if first else None,
                "holds_from": since.to_json() if since else None,
                "checks": checks, "reports": [r.to_json() for r in self.reports]}


def verify_across(specs: Sequence[CircuitSpec], subjects: Sequence[Subject], over: str,
                  data: Sequence[Any] | None = None, device: str | None = None, dtype: str | None = None,
                  device_map: str | None = None, manager: Any = None,
                  progress: Callable[[int, int, str], None] | None = None) -> list[Across]:
    """Verify every spec on every subject, loading each subject once (once per dtype the specs ask for);
    `data[i]` overrides spec i's data; progress(done, total, label) after each subject."""
    from circuitry.verify import load_spec_model, verify

    if over not in OVER:
        raise ValueError(f"over must be one of {OVER}, got {over!r}")
    batches: list[dict | None] = [{} if over == "checkpoints" else None for _ in specs]
    reports: list[list[VerificationReport]] = [[] for _ in specs]
    for n, subject in enumerate(subjects):
        models: dict[Any, Any] = {}  # dtype -> model
        for i, spec in enumerate(specs):
            key = dtype or spec.dtype
            if key not in models:
                models[key] = load_spec_model(spec, subject.ref, device, dtype, device_map)[0]
            report = verify(spec, model=models[key], model_ref=subject.ref, manager=manager,
                            data=data[i] if data is not None else None, batches=batches[i])
            reports[i].append(replace(report, run=None))  # the clean run and the model go with the subject
        del models
        if progress is not None:
            progress(n + 1, len(subjects), subject.label)
    return [Across(spec.file, spec.name, over, tuple(subjects), tuple(found), thresholds(spec))
            for spec, found in zip(specs, reports)]


def plot_across(results: Sequence[Across], path: str | Path) -> Path:
    """PNG: one panel per check, its value on each subject (green: holds, red: fails) with the expectation's
    bounds as dashed lines; the first subject where every check holds marked. Needs matplotlib."""
    from circuitry.report.plots import pyplot, save_png

    plt = pyplot()
    panels = [(a, cid) for a in results for cid in a.check_ids]
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (a, cid) in zip(axes.flat, panels):
        xs = [s.step if a.over == "checkpoints" else j for j, s in enumerate(a.subjects)]
        ys = [math.nan if v is None else v for v in a.values(cid)]
        ax.plot(xs, ys, lw=1.2, color="#2171b5")
        colours = ["#1b9e77" if ok else "#c5221f" for ok in a.holds(cid)]
        ax.scatter(xs, ys, s=14, c=colours, zorder=3)
        for bound in a.thresholds.get(cid, ()):
            ax.axhline(bound, ls="--", lw=0.9, color="#777777")
        first = a.first_passing
        if first is not None and a.over == "checkpoints":
            ax.axvline(first.step, color="#1b9e77", lw=0.8, alpha=0.6)
        if a.over == "models":
            ax.set_xticks(xs, [s.label for s in a.subjects], fontsize=7, rotation=20, ha="right")
        else:
            ax.set_xlabel("step", fontsize=8)
        expect = next(c.expect for c in a.reports[0].checks if c.id == cid)
        title = f"{cid} ({expect})" if len(results) == 1 else f"{a.name}: {cid} ({expect})"
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("; ".join(f"{a.name}: {_first_words(a)}" for a in results), fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)


def _first_words(a: Across) -> str:
    """`every check holds first at step 1400` (the green line), `... on 2 of 3 models`, or `never`."""
    if a.over == "models":
        return f"every check holds on {sum(r.passed for r in a.reports)} of {len(a.reports)} models"
    first = a.first_passing
    return f"every check holds first at step {first.step} (green line)" if first else "every check holds: never"
