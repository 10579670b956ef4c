"""The claims about training: the phase change, and the perturbations that move it.

Both read the tracked checkpoints of the runs (`Run.track`, the document of `circuitry track --json`):
the induction interval is the phase change of `circuitry.track` (the largest rise of the best induction
score between consecutive checkpoints, confirmed by the ICL score); the ICL jump is the interval with the
largest fall of the ICL score; the loss bump is `circuitry.bump`'s (the steepest descent of the smoothed
training loss against its plateau), a training step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from circuitry.article.records import ClaimResult, Number
from circuitry.article.runs import Run


def _icl_jump(doc: dict) -> tuple[int, int] | None:
    """(step_before, step) of the largest fall of the ICL score between consecutive checkpoints."""
    stats = doc["checkpoints"]
    falls = [(a["icl_score"] - b["icl_score"], a["step"], b["step"]) for a, b in zip(stats, stats[1:])
             if a["icl_score"] is not None and b["icl_score"] is not None]
    if not falls:
        return None
    _, a, b = max(falls)
    return a, b


def _bump_step(doc: dict) -> int | None:
    bump = (doc.get("loss_curve") or {}).get("bump")
    return None if bump is None else int(bump["step"])


def _bucket(doc: dict, step: int, index: int) -> float | None:
    for row in doc.get("loss_by_position", {}).get("checkpoints", []):
        if row["step"] == step:
            return row["buckets"][index]
    return None


def phase_change(runs: Sequence[Run], seeds: Sequence[int], every: int) -> ClaimResult:
    """Induction heads form in the same checkpoint interval as the loss bump and the ICL jump."""
    pc: list[float | None] = []
    icl: list[float | None] = []
    bump: list[float | None] = []
    late_before: list[float | None] = []
    late_after: list[float | None] = []
    same: list[bool] = []
    details: list[dict] = []
    for run in runs:
        doc = run.track
        change = doc.get("phase_change")
        jump = _icl_jump(doc)
        b = _bump_step(doc)
        step = None if change is None else int(change["step"])
        before = None if change is None else int(change["step_before"])
        pc.append(None if step is None else float(step))
        icl.append(None if jump is None else float(jump[1]))
        bump.append(None if b is None else float(b))
        # what context gives: loss of tokens 5..10 minus tokens 41..63 (buckets 2 and 5), just before the phase
        # change and at the last checkpoint
        if before is not None and step is not None:
            for target, at in ((late_before, before), (late_after, doc["checkpoints"][-1]["step"])):
                x, y = _bucket(doc, at, 2), _bucket(doc, at, 5)
                target.append(None if x is None or y is None else x - y)
        else:
            late_before.append(None)
            late_after.append(None)
        ok = (step is not None and before is not None and jump is not None and b is not None
              and abs(jump[1] - step) <= every and before - every < b <= step + every)
        same.append(ok)
        details.append({"induction_interval": None if step is None else [before, step],
                        "icl_jump_interval": None if jump is None else list(jump), "loss_bump_step": b,
                        "loss_bump": (doc.get("loss_curve") or {}).get("bump"), "picture": str(run.path / "track.png")})
    dist = [None if a is None or c is None else c - a for a, c in zip(pc, bump)]
    nums = (Number("phase change: induction heads form (end of interval)", tuple(pc), "steps"),
            Number("ICL jump (end of interval)", tuple(icl), "steps"),
            Number("loss bump", tuple(bump), "steps"),
            Number("loss bump minus phase change", tuple(dist), "steps"),
            Number("context gain just before (loss of tokens 5..10 minus 41..63)", tuple(late_before), "nats"),
            Number("context gain at the last checkpoint", tuple(late_after), "nats"))
    n_ok = sum(same)
    verdict = "reproduced" if same and n_ok == len(same) else "partly" if n_ok else "not reproduced"
    why = (f"in {n_ok} of {len(same)} seeds the largest jump of the ICL score falls in the interval of the largest "
           f"rise of the induction score or the next one ({every} steps apart), and the loss bump lies within one "
           f"interval of it")
    return ClaimResult(
        "phase-change", "The Phase Change",
        "Induction heads form at the moment of the phase change: a bump in the training loss and a sudden "
        "jump of in-context learning, after which later context keeps lowering the loss.",
        f"circuitry train --checkpoint-every {every} --seed S; circuitry track RUN --json (phase_change, "
        "loss_curve.bump, loss_by_position)", tuple(seeds), nums, verdict, why,
        tuple(str(d["picture"]) for d in details), details={"per_seed": details})


def _step(run: Run | None) -> float | None:
    step = None if run is None else run.phase_change_step()
    return None if step is None else float(step)


def perturbations(runs: Mapping[str, Sequence[Run | None]], seeds: Sequence[int], steps: int,
                  unavailable: Mapping[str, str]) -> ClaimResult:
    """The phase-change step per variant (normal, blocked K-composition, smeared keys) and seed; None: no
    phase change within the budget."""
    nums: list[Number] = []
    best: dict[str, list] = {}
    for variant in ("normal", "blocked", "smeared"):
        rows = runs.get(variant) or [None] * len(seeds)
        nums.append(Number(f"phase change, {variant}", tuple(
            _step(r) for r in rows),
            "steps"))
        best[variant] = [None if r is None else r.track["checkpoints"][-1]["induction"] for r in rows]
        nums.append(Number(f"best induction score at step {steps}, {variant}", tuple(best[variant])))
    normal, blocked, smeared = nums[0].per_seed, nums[2].per_seed, nums[4].per_seed
    parts, notes = [], []
    if unavailable.get("blocked"):
        notes.append(f"blocked: not trained ({unavailable['blocked']})")
    else:
        none = [b is None and (s or 0) < 0.4 for b, s in zip(blocked, best["blocked"])]
        parts.append(all(none))
        notes.append(f"blocked K-composition: no induction head (score >= 0.4) and no phase change within {steps} "
                     f"steps in {sum(none)} of {len(none)} seeds")
    if unavailable.get("smeared"):
        notes.append(f"smeared: not trained ({unavailable['smeared']})")
    else:
        earlier = [s is not None and n is not None and s < n for s, n in zip(smeared, normal)]
        parts.append(all(earlier))
        notes.append(f"smeared keys: the phase change comes earlier than the normal run's in {sum(earlier)} of "
                     f"{len(earlier)} seeds")
    verdict = ("not testable" if not parts else "reproduced" if all(parts) else
               "partly" if any(parts) else "not reproduced")
    return ClaimResult(
        "perturbations", "The Phase Change (perturbations)",
        "Architectural perturbations that make induction heads harder to form (restricting composition) delay "
        "the phase change; ones that make them easier (smeared keys, in Olsson et al.) bring it earlier.",
        f"circuitry train --block-k-composition | --smeared-keys --steps {steps} --seed S; circuitry track RUN",
        tuple(seeds), tuple(nums), verdict, "; ".join(notes))
