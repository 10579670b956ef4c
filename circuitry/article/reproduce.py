"""`reproduce(out_dir)`: train the runs, test every claim in the article's order, write the page and JSON.

Budget: the default (3 seeds x {2 layers, 1 layer, blocked K-composition, smeared keys} x STEPS steps,
checkpoints every EVERY steps) is sized for 15 minutes on 2 CPU cores: the induction recipe's phase change
comes at step ~400-700, so STEPS = 1000 leaves room after it, and the 12 runs train two at a time in
one-thread processes. `quick`: one seed and no perturbation runs.

Files under OUT: runs/<variant>-s<seed>/ (the runs, reused when present), img/ (pictures),
article.json (strict JSON of the `Reproduction`) and article.html (the page).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from circuitry.article import claims, dynamics
from circuitry.article.records import Reproduction
from circuitry.article.runs import RunSpec, train_runs, unavailable

STEPS = 1000
EVERY = 50
QUICK_STEPS = 800


def reproduce(out_dir: str | Path, seeds: Sequence[int] = (0, 1, 2), steps: int | None = None,
              quick: bool = False, checkpoint_every: int = EVERY, workers: int = 2,
              progress: Callable[[str], None] | None = None) -> Reproduction:
    """Every claim measured on runs of `seeds` (trained under OUT/runs or reused); writes article.json and
    article.html under `out_dir`."""
    from circuitry.errors import UsageError
    from circuitry.fileio import atomic_write_text
    from circuitry.jsonable import strict_dumps
    from circuitry.sources import load_model

    start = time.perf_counter()
    say = progress or (lambda _msg: None)
    seeds = tuple(seeds)[:1] if quick else tuple(seeds)
    if not seeds:
        raise UsageError("give at least one seed")
    steps = steps if steps is not None else (QUICK_STEPS if quick else STEPS)
    if steps < 2 * checkpoint_every:
        raise UsageError(f"--steps {steps}: the phase change needs several checkpoints (every {checkpoint_every})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    variants = ["normal", "one-layer"] + ([] if quick else ["smeared", "blocked"])
    missing = {v: unavailable(v) for v in variants}
    specs = [RunSpec(v, s, steps, checkpoint_every) for v in variants if not missing[v] for s in seeds]
    t0 = time.perf_counter()
    runs = train_runs(specs, out, workers=workers, progress=say)
    train_seconds = time.perf_counter() - t0
    say(f"runs ready in {train_seconds:.0f} s")

    def of(variant: str) -> list:
        return [runs[RunSpec(variant, s, steps, checkpoint_every)] for s in seeds] if not missing[variant] else []

    two = [load_model(str(r.path)).eval() for r in of("normal")]
    one = [load_model(str(r.path)).eval() for r in of("one-layer")]
    results = [claims.one_layer_circuits(one, seeds),
               claims.one_vs_two_layers(two, one, seeds),
               claims.two_step_mechanism(two, seeds),
               claims.attention_patterns(two, seeds, out),
               dynamics.phase_change(of("normal"), seeds, checkpoint_every),
               claims.ablation(two, seeds),
               claims.natural_text(load_model(claims.TEXT_MODEL).eval())]
    if not quick:
        results.append(dynamics.perturbations({v: of(v) for v in ("normal", "blocked", "smeared")}, seeds, steps,
                                              {v: missing.get(v, "") for v in ("blocked", "smeared")}))
    results = [_local_pictures(c, out) for c in results]
    notes = tuple(f"variant {v} not trained: {why}" for v, why in missing.items() if why)
    page = out / "article.html"
    rep = Reproduction(tuple(results), seeds, steps, checkpoint_every, time.perf_counter() - start, train_seconds,
                       str(page), notes)
    from circuitry.article.page import write_page

    write_page(rep, out, page)
    atomic_write_text(out / "article.json", strict_dumps(rep.to_json(), indent=2) + "\n")
    return rep


def _local_pictures(claim, out: Path):
    """The claim with its pictures named relative to `out` (those under it), so the page finds them."""
    from dataclasses import replace

    rel = []
    for p in claim.pictures:
        path = Path(p)
        try:
            rel.append(str(path.resolve().relative_to(out.resolve())) if path.is_absolute() else p)
        except ValueError:
            rel.append(p)
    return replace(claim, pictures=tuple(rel))
