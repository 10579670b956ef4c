"""The training runs the reproduction needs: variants x seeds, trained in parallel one-thread processes.

A run is `RunSpec(variant, seed, steps, checkpoint_every)`:

- "normal": the induction recipe (`circuitry.train.TrainRecipe`), 2 layers;
- "one-layer": the same recipe with 1 layer (the control that cannot compose);
- "blocked": 2 layers with K-composition blocked (`TrainRecipe.block_k_composition`);
- "smeared": 2 layers with smeared keys (`TrainRecipe.smeared_keys`).

A variant whose recipe field this version of `TrainRecipe` lacks is reported as unavailable, never faked.
Each run lives in OUT/runs/<variant>-s<seed> (`circuitry train`'s layout: model, loss.json, train.json,
checkpoints/) with `track.json` (`circuitry track --json` of its checkpoints) and track.png (its plot)
beside it. A directory whose train.json records the same recipe and that has its track.json is reused.

On a machine with 2 cores, two processes with one thread each train about twice as fast as one process with
two threads (the models are small: a step is mostly Python and small kernels), so `train_runs` trains in
`workers` processes, each limited to one thread.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

VARIANTS: dict[str, dict[str, object]] = {"normal": {}, "one-layer": {"n_layers": 1},
                                          "blocked": {"block_k_composition": True}, "smeared": {"smeared_keys": True}}


@dataclass(frozen=True)
class RunSpec:
    """One training run of the reproduction."""

    variant: str
    seed: int
    steps: int
    checkpoint_every: int

    @property
    def name(self) -> str:
        return f"{self.variant}-s{self.seed}"

    def recipe_fields(self) -> dict:
        return {"steps": self.steps, "seed": self.seed, "checkpoint_every": self.checkpoint_every,
                **VARIANTS[self.variant]}


def unavailable(variant: str) -> str:
    """Why this version cannot train `variant` ("" when it can)."""
    from circuitry.train import TrainRecipe

    fields = {f.name for f in dataclasses.fields(TrainRecipe)}
    missing = [k for k in VARIANTS[variant] if k not in fields]
    return f"this version's TrainRecipe has no {', '.join(missing)}" if missing else ""


@dataclass(frozen=True)
class Run:
    """A trained run: its directory, the tracked checkpoints (TrackResult JSON), the losses, the seconds."""

    spec: RunSpec
    path: Path
    track: dict
    losses: tuple[float, ...]
    train_seconds: float
    reused: bool

    @property
    def model_path(self) -> Path:
        return self.path

    def phase_change_step(self) -> int | None:
        change = self.track.get("phase_change")
        return None if change is None else int(change["step"])


def _recorded(path: Path) -> dict | None:
    try:
        return json.loads((path / "train.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _trained(spec: RunSpec, path: Path) -> bool:
    """The directory holds this run, trained to the end (its train.json records the same recipe)."""
    from circuitry.train import TrainRecipe

    rec = _recorded(path)
    if rec is None:
        return False
    want = dataclasses.asdict(TrainRecipe(**spec.recipe_fields()))
    return json.loads(json.dumps(want)) == rec.get("recipe")


def _complete(spec: RunSpec, path: Path) -> bool:
    """Trained and tracked (track.json, and track.png when matplotlib is installed)."""
    from circuitry.report import plots

    pictures = (path / "track.png").is_file() or not plots.available()
    return _trained(spec, path) and (path / "track.json").is_file() and pictures


def _train_one(spec: RunSpec, path: str) -> str:
    """In a worker process: train the run with one thread (unless it is trained), track its checkpoints, write
    track.json and track.png."""
    import torch

    torch.set_num_threads(1)
    from circuitry.fileio import atomic_write_text
    from circuitry.jsonable import strict_dumps
    from circuitry.track import plot_track, track
    from circuitry.train import TrainRecipe, train

    if not _trained(spec, Path(path)):
        train(TrainRecipe(**spec.recipe_fields()), out=path, command=f"circuitry article (run {spec.name})")
    result = track([path])
    from circuitry.report import plots

    if plots.available():
        plot_track(result, Path(path) / "track.png")
    atomic_write_text(Path(path) / "track.json", strict_dumps(result.to_json(), indent=None) + "\n")
    return path


def _load(spec: RunSpec, path: Path, reused: bool) -> Run:
    rec = _recorded(path) or {}
    losses = json.loads((path / "loss.json").read_text(encoding="utf-8"))["loss"]
    track_doc = json.loads((path / "track.json").read_text(encoding="utf-8"))
    return Run(spec, path, track_doc, tuple(float("nan") if x is None else float(x) for x in losses),
               float(rec.get("seconds") or 0.0), reused)


def train_runs(specs: Sequence[RunSpec], out_dir: str | Path, workers: int = 2,
               progress: Callable[[str], None] | None = None) -> dict[RunSpec, Run]:
    """Train (or reuse) every run under OUT/runs, `workers` one-thread processes at a time (each a fresh
    `python -m circuitry.article.runs`, so nothing of the caller's process is re-imported)."""
    import subprocess
    import sys

    from circuitry.errors import CircuitryError

    root = Path(out_dir) / "runs"
    root.mkdir(parents=True, exist_ok=True)
    todo = [s for s in specs if not _complete(s, root / s.name)]
    say = progress or (lambda _msg: None)
    for s in specs:
        if s not in todo:
            say(f"reusing {root / s.name}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    waiting = list(todo)
    running: list[tuple[RunSpec, subprocess.Popen]] = []
    try:
        while waiting or running:
            while waiting and len(running) < max(1, workers):
                s = waiting.pop(0)
                cmd = [sys.executable, "-m", "circuitry.article.runs", s.variant, str(s.seed), str(s.steps),
                       str(s.checkpoint_every), str(root / s.name)]
                running.append((s, subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.PIPE, text=True)))
            time.sleep(0.2)
            for item in list(running):
                s, proc = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                err = proc.stderr.read() if proc.stderr else ""
                if proc.returncode != 0:
                    raise CircuitryError(f"training run {s.name} failed (exit {proc.returncode}): "
                                         f"{err.strip()[-800:]}")
                say(f"trained {s.name} ({time.perf_counter() - start:.0f} s so far)")
    finally:
        for _, proc in running:  # only the processes started here
            proc.kill()
    return {s: _load(s, root / s.name, s not in todo) for s in specs}


if __name__ == "__main__":  # one run in a worker process: VARIANT SEED STEPS EVERY PATH
    import sys as _sys

    _v, _seed, _steps, _every, _path = _sys.argv[1:6]
    _train_one(RunSpec(_v, int(_seed), int(_steps), int(_every)), _path)
