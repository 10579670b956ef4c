"""Detectors and in-context learning across training checkpoints, and the phase-change step.

`find_checkpoints(paths)`: files, or directories holding `step-*.safetensors`
(directly or in their `checkpoints/` subdirectory), as written by
`circuitry train --checkpoint-every N`; every checkpoint must have the same
shape. `track(paths)` measures each one:

- loss_repeats: next-token loss on the repeated half of BOS + 10 random tokens
  repeated twice (64 sequences, seed 1; the `induction` task's data);
- icl_score: the in-context learning score after Olsson et al. (2022), the loss
  late in the context minus the loss early in it, on the training distribution
  (periodic repeats). Token t's loss is -log p(x_t | x_<t). Data: BOS + a random
  block of period P tiled to 64 tokens, 32 sequences for each P in 12, 16, 20, 24
  (seed 7 + P). Score = mean loss of tokens 40..50 minus mean loss of tokens
  5..10. With P >= 12 the early tokens are first occurrences (nothing to copy)
  and the late ones repeats, so the score is about 0 for a model that ignores
  the context and falls towards -ln(64) = -4.16 as copying from context works;
  negative is better, as in Olsson et al.;
- previous_token, induction: the best head's score (detectors of the same
  names) on the repeated data;
- k_composition: the strongest K-composition score over all pairs of heads,
  as a ratio to the random-matrix baseline.

"Best" and "strongest" ignore NaN scores. In the JSON document (`to_json`) a
number that is undefined is null: k_composition (and k_edge "") when the
composition detector is disabled or the model has one layer; any measured
value that came out NaN or infinite (a diverged checkpoint's loss).

Phase-change rule (`phase_change`): over consecutive checkpoints (a, b), take
the interval with the largest increase of the best induction score. It is the
phase change when that increase is >= 0.1 and it is confirmed by a jump of the
in-context learning score at the same time: the ICL score falls, over the same
interval or a neighbouring one, by at least half of its largest fall between
any two consecutive checkpoints of the run. The phase-change step is b, the
first checkpoint after the jump.

The training loss (`loss.json` of the run, written by `circuitry train`: the
run directory is the checkpoints' common directory, or its parent when that is
`checkpoints/`) and its bump, found by `circuitry.bump.loss_bump` (rule in
that module), are reported beside the phase change, with the distance between
the two steps (bump minus phase change, in training steps).

Loss by token index (`loss_by_position`): the mean loss of each token 1..63
of the ICL data, for every checkpoint; the table and plot show the first and
last checkpoints and those just before and after the phase change, the table
with tokens bucketed as POSITION_BUCKETS. The models of `circuitry train` see
only periodic repeats, so the ICL data is their training distribution.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from circuitry.bump import Bump, find_loss_bump
from circuitry.bump import loss_bump as loss_bump  # track reports the loss bump: track.loss_bump is the same
from circuitry.errors import UsageError
from circuitry.jsonable import finite_or_none, finite_tree
from circuitry.model import HookedTransformer, ModelConfig
from circuitry.names import Edge, head_name

CHECKPOINT_GLOB = "step-*.safetensors"
ICL_EARLY = (5, 10)  # tokens, inclusive
ICL_LATE = (40, 50)
ICL_PERIODS = (12, 16, 20, 24)
ICL_BATCH = 32
REPEAT_DATA = {"batch": 64, "seq_len": 10, "n_repeats": 2, "seed": 1}
MIN_JUMP = 0.1  # smallest induction-score increase called a phase change
ICL_CONFIRM = 0.5  # the ICL fall must be >= this fraction of the run's largest fall
SHAPE_FIELDS = ("n_layers", "n_heads", "d_model", "d_head", "d_vocab", "n_ctx", "d_mlp", "positional",
                "normalization")
POSITION_BUCKETS = ((1, 1), (2, 4), (5, 10), (11, 20), (21, 40), (41, 63))  # tokens, inclusive
LOSS_FILE = "loss.json"
_STEP = re.compile(r"step-(\d+)")


@dataclass(frozen=True)
class CheckpointStats:
    """What `track` measures on one checkpoint."""

    step: int
    path: str
    loss_repeats: float
    icl_score: float
    previous_token: float
    previous_token_head: str
    induction: float
    induction_head: str
    k_composition: float  # ratio to the random baseline; NaN without the composition detector
    k_edge: str
    loss_by_token: tuple[float, ...] = ()  # [pos-1]: mean loss of tokens 1..63 of the ICL data

    def to_json(self) -> dict:
        """Every field but loss_by_token (TrackResult.to_json gives it); numbers that are NaN or infinite are
        null (see the module docstring)."""
        return {k: finite_or_none(v) if isinstance(v, float) else v for k, v in self.__dict__.items()
                if k != "loss_by_token"}


@dataclass(frozen=True)
class PhaseChange:
    """The interval (step_before, step] with the largest induction-score jump, and what confirms it.

    induction_before: the highest best-induction score of the checkpoints before `step`;
    induction_after: the lowest of the checkpoints after it.
    """

    step: int
    step_before: int
    induction_jump: float
    icl_jump: float  # the ICL score's fall (positive) that confirms it
    largest_icl_jump: float
    induction_before: float | None
    induction_after: float | None  # None: no checkpoint after the phase change

    def to_json(self) -> dict:
        """Every field; induction_after is null when no checkpoint follows the phase change."""
        return {k: finite_or_none(v) if isinstance(v, float) else v for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class LossCurve:
    """The run's training loss (`loss.json`) and its bump (`circuitry.bump`)."""

    path: str | None  # None: no loss curve was found
    steps: tuple[int, ...]
    losses: tuple[float | None, ...]  # None: not finite (a diverged run)
    bump: Bump | None
    reason: str  # why there is no bump (empty when there is one)


@dataclass(frozen=True)
class TrackResult:
    checkpoints: tuple[CheckpointStats, ...]
    phase_change: PhaseChange | None
    reason: str  # why there is no phase change (empty when there is one)
    loss_curve: LossCurve | None = None

    @property
    def bump(self) -> Bump | None:
        return self.loss_curve.bump if self.loss_curve else None

    @property
    def bump_distance(self) -> int | None:
        """The loss bump's step minus the phase-change step (negative: the bump comes first); None without
        both."""
        if self.bump is None or self.phase_change is None:
            return None
        return self.bump.step - self.phase_change.step

    def to_json(self) -> dict:
        curve = self.loss_curve
        return {"checkpoints": [c.to_json() for c in self.checkpoints],
                "phase_change": self.phase_change.to_json() if self.phase_change else None,
                "no_phase_change_reason": self.reason or None,
                "loss_curve": {"path": curve.path if curve else None,
                               "steps": len(curve.steps) if curve else 0,
                               "bump": curve.bump.to_json() if curve and curve.bump else None,
                               "no_bump_reason": (curve.reason or None) if curve else "no loss curve given",
                               "phase_change_step": self.phase_change.step if self.phase_change else None,
                               "bump_minus_phase_change": self.bump_distance},
                "loss_by_position": {
                    "data": "ICL data (periodic repeats); per_token[t - 1] is the mean loss of token t",
                    "buckets": [list(b) for b in POSITION_BUCKETS],
                    "shown": [{"step": s.step, "role": role} for role, s in position_checkpoints(self)],
                    "checkpoints": [{"step": s.step, "buckets": finite_tree(list(bucket_means(s.loss_by_token))),
                                     "per_token": finite_tree(list(s.loss_by_token))} for s in self.checkpoints]},
                "definitions": {"loss_repeats": f"loss on the repeats of repeated random tokens {REPEAT_DATA}",
                                "icl_score": f"mean loss of tokens {ICL_LATE[0]}..{ICL_LATE[1]} minus tokens "
                                             f"{ICL_EARLY[0]}..{ICL_EARLY[1]}, periodic repeats, periods "
                                             f"{list(ICL_PERIODS)}",
                                "k_composition": "largest K-composition score / random baseline",
                                "bump": "steepest descent of the smoothed training loss against its plateau "
                                        "(circuitry.bump)"}}


# ------------------------------------------------------------------ finding checkpoints
def _metadata(path: Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable safetensors checkpoint ({exc})") from None


def find_checkpoints(paths: Iterable[str | Path]) -> list[Path]:
    """Checkpoint files named by `paths` (files or directories), without duplicates."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files = sorted(p.glob(CHECKPOINT_GLOB)) or sorted((p / "checkpoints").glob(CHECKPOINT_GLOB))
            if not files:
                raise UsageError(f"{p}: no checkpoints: expected {CHECKPOINT_GLOB} files in it or in its "
                                 f"checkpoints/ subdirectory (write them with circuitry train --checkpoint-every N)")
            found += files
        elif p.is_file():
            if p.suffix != ".safetensors":
                raise UsageError(f"{p}: a checkpoint is a .safetensors file written by circuitry train")
            found.append(p)
        else:
            raise UsageError(f"no such checkpoint file or directory: {p}")
    unique: dict[Path, Path] = {}
    for f in found:
        unique.setdefault(f.resolve(), f)
    return list(unique.values())


def checkpoint_step(path: Path, meta: dict[str, str]) -> int:
    """The training step of a checkpoint: its metadata's `step`, else the number in its name."""
    if str(meta.get("step", "")).isdigit():
        return int(meta["step"])
    m = _STEP.search(path.name)
    if m:
        return int(m.group(1))
    raise UsageError(f"{path}: cannot tell its training step (no 'step' in its metadata, no step-N in its name)")


def _config(path: Path, meta: dict[str, str]) -> ModelConfig:
    from circuitry.model.io import CONFIG, META_KEY

    if META_KEY in meta:
        return ModelConfig.from_json(meta[META_KEY], where=f"{path} (metadata)")
    if (path.parent / CONFIG).exists():
        return ModelConfig.from_json((path.parent / CONFIG).read_text(), where=str(path.parent / CONFIG))
    raise UsageError(f"{path}: no model config in its metadata and no config.json beside it")


def _shape(cfg: ModelConfig) -> dict:
    return {k: getattr(cfg, k) for k in SHAPE_FIELDS}


def list_checkpoints(paths: Iterable[str | Path]) -> list[tuple[int, Path]]:
    """(step, file) of every checkpoint of one training run, sorted by step; checks that they have one shape
    and distinct steps before any weights load (`track` and `verify --checkpoints` both list them so)."""
    files = find_checkpoints(paths)
    rows = []
    first: tuple[Path, dict] | None = None
    for f in files:
        meta = _metadata(f)
        shape = _shape(_config(f, meta))
        if first is None:
            first = (f, shape)
        elif shape != first[1]:
            diff = ", ".join(f"{k} {first[1][k]} vs {shape[k]}" for k in SHAPE_FIELDS if first[1][k] != shape[k])
            raise UsageError(f"checkpoints of different shapes: {first[0]} and {f} differ in {diff}; "
                             f"track one training run at a time")
        rows.append((checkpoint_step(f, meta), f))
    rows.sort(key=lambda r: (r[0], str(r[1])))
    for (s1, f1), (s2, f2) in zip(rows, rows[1:]):
        if s1 == s2:
            raise UsageError(f"{f1} and {f2} are both step {s1}; give checkpoints of one run")
    return rows


def plan(paths: Iterable[str | Path]) -> list[tuple[int, Path]]:
    """`list_checkpoints`, and a context long enough for the in-context learning score."""
    rows = list_checkpoints(paths)
    n_ctx = _config(rows[0][1], _metadata(rows[0][1])).n_ctx if rows else None
    if n_ctx is not None and n_ctx <= ICL_LATE[1]:
        raise UsageError(f"the in-context learning score reads tokens up to {ICL_LATE[1]}; the checkpoints' "
                         f"context is {n_ctx} tokens")
    return rows


# ------------------------------------------------------------------ measuring
def icl_tokens(cfg: ModelConfig) -> torch.Tensor:
    """The ICL data: [len(ICL_PERIODS) * ICL_BATCH, 64] periodic repeats (BOS first when the model has one)."""
    from circuitry.data import periodic_tokens

    if cfg.n_ctx <= ICL_LATE[1]:
        raise UsageError(f"the in-context learning score reads tokens up to {ICL_LATE[1]}; the model's context "
                         f"is {cfg.n_ctx} tokens")
    return torch.cat([periodic_tokens(cfg.d_vocab, cfg.bos_token_id, batch=ICL_BATCH, n_ctx=64, period=p,
                                      seed=7 + p).tokens for p in ICL_PERIODS])


def loss_by_position(model: HookedTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """[pos-1]: the mean over the batch of each token's loss -log p(x_t | x_<t); entry t-1 is token t."""
    with torch.inference_mode():
        return model.loss(tokens, per_token=True).mean(0)  # [batch, pos-1] -> [pos-1]


def _icl_from_positions(per_token: torch.Tensor) -> float:
    late = per_token[ICL_LATE[0] - 1: ICL_LATE[1]].mean()
    early = per_token[ICL_EARLY[0] - 1: ICL_EARLY[1]].mean()
    return float(late - early)


def icl_score(model: HookedTransformer, tokens: torch.Tensor) -> float:
    """Mean loss of tokens ICL_LATE minus mean loss of tokens ICL_EARLY (token t: -log p(x_t | x_<t))."""
    return _icl_from_positions(loss_by_position(model, tokens))


def bucket_means(per_token: Sequence[float]) -> tuple[float, ...]:
    """The mean of `per_token` (entry t-1: token t) over each of POSITION_BUCKETS; NaN for a bucket past its
    end."""
    out = []
    for lo, hi in POSITION_BUCKETS:
        part = per_token[lo - 1: hi]
        out.append(sum(part) / len(part) if len(part) else math.nan)
    return tuple(out)


def measure(model: HookedTransformer, step: int, path: str, detectors: dict) -> CheckpointStats:
    from circuitry.data import repeated_tokens
    from circuitry.scan import run_detectors

    cfg = model.cfg
    batch = repeated_tokens(cfg.d_vocab, cfg.bos_token_id, batch=REPEAT_DATA["batch"], seq_len=REPEAT_DATA["seq_len"],
                            n_repeats=REPEAT_DATA["n_repeats"], seed=REPEAT_DATA["seed"]).to(model.device)
    with torch.inference_mode():
        heads, pairs = run_detectors(model, batch, detectors)
        logits = model(batch.tokens)
        nll = model.loss(batch.tokens, logits, per_token=True)  # [batch, pos-1]
        loss_rep = float(nll[batch.predictable[:, :-1]].mean())
        per_token = loss_by_position(model, icl_tokens(cfg).to(model.device))  # [pos-1]

    def best(scores: torch.Tensor) -> tuple[float, str]:
        flat = scores.flatten()
        i = int(flat.nan_to_num(float("-inf"), posinf=float("inf"), neginf=float("-inf")).argmax())
        return float(flat[i]), head_name(i // cfg.n_heads, i % cfg.n_heads)

    prev, prev_head = best(heads["previous_token"])
    ind, ind_head = best(heads["induction"])
    k_ratio, k_edge = math.nan, ""
    if "composition" in pairs and cfg.n_layers > 1:
        comp = pairs["composition"]
        k = comp.scores["K"].nan_to_num(float("-inf"))  # [layer, head, layer, head]
        i = int(k.flatten().argmax())
        l1, h1, l2, h2 = (int(x) for x in torch.unravel_index(torch.tensor(i), k.shape))
        k_ratio = float(k[l1, h1, l2, h2] / comp.baseline["K"])
        k_edge = str(Edge(head_name(l1, h1), head_name(l2, h2), "K"))
    return CheckpointStats(step, path, loss_rep, _icl_from_positions(per_token), prev, prev_head, ind, ind_head,
                           k_ratio, k_edge, tuple(per_token.tolist()))


def _low_nan(x: float) -> float:
    """x, or -inf for NaN, so that NaN never wins a max()."""
    return -math.inf if math.isnan(x) else x


def phase_change(stats: Sequence[CheckpointStats]) -> tuple[PhaseChange | None, str]:
    """The phase change by the rule of the module docstring, or (None, why not)."""
    if len(stats) < 2:
        return None, "a phase change needs at least two checkpoints"
    ind_jumps = [_low_nan(b.induction - a.induction) for a, b in zip(stats, stats[1:])]
    icl_falls = [_low_nan(a.icl_score - b.icl_score) for a, b in zip(stats, stats[1:])]
    i = max(range(len(ind_jumps)), key=lambda j: ind_jumps[j])
    if ind_jumps[i] < MIN_JUMP:
        return None, (f"the best induction score never rises by {MIN_JUMP} between consecutive checkpoints "
                      f"(largest rise {ind_jumps[i]:+.3f})")
    largest = max(icl_falls)
    near = max(icl_falls[max(0, i - 1): i + 2])
    if not (largest > 0 and near >= ICL_CONFIRM * largest):
        return None, (f"the largest induction-score rise ({ind_jumps[i]:+.3f}, steps {stats[i].step}.."
                      f"{stats[i + 1].step}) comes without a fall of the ICL score (fall {near:.3f}, largest "
                      f"in the run {largest:.3f})")
    before = [s.induction for s in stats[: i + 1]]
    after = [s.induction for s in stats[i + 2:]]
    return PhaseChange(stats[i + 1].step, stats[i].step, ind_jumps[i], near, largest, max(before, key=_low_nan),
                       min(after, key=lambda x: -_low_nan(-x)) if after else None), ""


def position_checkpoints(result: TrackResult) -> list[tuple[str, CheckpointStats]]:
    """(role, checkpoint) of the checkpoints whose loss by position is shown: the first, the ones just before
    and after the phase change (when there is one), the last; a checkpoint with two roles is named once
    ("first, before")."""
    stats = result.checkpoints
    if not stats:
        return []
    pc = result.phase_change
    wanted = [("first", stats[0].step)]
    if pc is not None:
        wanted += [("before", pc.step_before), ("after", pc.step)]
    wanted.append(("last", stats[-1].step))
    roles: dict[int, list[str]] = {}
    for role, step in wanted:
        roles.setdefault(step, []).append(role)
    by_step = {s.step: s for s in stats}
    return [(", ".join(r), by_step[step]) for step, r in roles.items()]


# ------------------------------------------------------------------ the training loss
def run_directory(paths: Sequence[str | Path]) -> Path | None:
    """The one run the checkpoints come from: the directory holding them, or its parent when that is
    `checkpoints/`; None when they lie in several."""
    runs = set()
    for p in paths:
        parent = Path(p).resolve().parent
        runs.add(parent.parent if parent.name == "checkpoints" else parent)
    return runs.pop() if len(runs) == 1 else None


def read_loss_curve(path: str | Path) -> tuple[list[int], list[float | None]]:
    """(steps, losses) of a `loss.json` written by `circuitry train` ({"step": [...], "loss": [...]})."""
    import json

    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except OSError as exc:
        raise UsageError(f"{p}: cannot read the loss curve ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{p}:{exc.lineno}:{exc.colno}: not JSON ({exc.msg})") from None
    if not (isinstance(doc, dict) and isinstance(doc.get("step"), list) and isinstance(doc.get("loss"), list)):
        raise UsageError(f'{p}: a loss curve is {{"step": [...], "loss": [...]}} as circuitry train writes it')
    steps, losses = doc["step"], doc["loss"]
    if len(steps) != len(losses):
        raise UsageError(f"{p}: {len(steps)} steps for {len(losses)} losses")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in steps) or \
            any(a >= b for a, b in zip(steps, steps[1:])):
        raise UsageError(f"{p}: the steps must be increasing whole numbers")
    if not all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in losses):
        raise UsageError(f"{p}: every loss must be a number or null")
    return steps, [None if v is None else float(v) for v in losses]


def loss_curve(paths: Sequence[str | Path], loss_file: str | Path | None = None) -> LossCurve:
    """The training loss of the run of `paths` (its loss.json, or `loss_file`) and its bump. A missing
    loss.json beside the checkpoints is no error (the curve says so); a missing `loss_file` is."""
    if loss_file is None:
        run = run_directory(paths)
        if run is None:
            return LossCurve(None, (), (), None, f"the checkpoints lie in several directories: no one run's "
                                                 f"{LOSS_FILE} (give one with --loss)")
        if not (run / LOSS_FILE).is_file():
            return LossCurve(None, (), (), None, f"no {LOSS_FILE} in {run} (give one with --loss)")
        loss_file = run / LOSS_FILE
    steps, losses = read_loss_curve(loss_file)
    bump, reason = find_loss_bump(losses, steps)
    return LossCurve(str(loss_file), tuple(steps), tuple(losses), bump, reason)


def track(paths: Iterable[str | Path], device: str | None = None,
          progress: Callable[[int, int, int], None] | None = None, dtype: str | None = None,
          loss_file: str | Path | None = None) -> TrackResult:
    """Measure every checkpoint (progress(done, total, step) after each), name the phase change, and find the
    bump of the run's training loss (its loss.json, or `loss_file`)."""
    from circuitry.model.io import load_model_file
    from circuitry.plugins import get_manager
    from circuitry.sources import check_device, check_dtype

    check_device(device)
    torch_dtype = check_dtype(dtype)
    rows = plan(paths)
    curve = loss_curve([p for _, p in rows], loss_file)
    manager = get_manager()
    chosen = {k: manager.get("circuitry_detectors", k, "detector") for k in ("previous_token", "induction")}
    if "composition" in manager.detectors():  # optional: the K-composition column
        chosen["composition"] = manager.detectors()["composition"]
    stats = []
    for n, (step, path) in enumerate(rows):
        model = load_model_file(path, device=device, dtype=torch_dtype).eval()
        stats.append(measure(model, step, str(path), chosen))
        if progress:
            progress(n + 1, len(rows), step)
    change, reason = phase_change(stats)
    return TrackResult(tuple(stats), change, reason, curve)


def run_label(result: TrackResult) -> str:
    """What the checkpoints are of, for a title: their common directory (the run, not its `checkpoints/`)."""
    import os

    dirs = [str(Path(c.path).resolve().parent) for c in result.checkpoints]
    if not dirs:
        return "no checkpoints"
    common = Path(os.path.commonpath(dirs))
    if common.name == "checkpoints":
        common = common.parent
    try:
        return str(common.relative_to(Path.cwd()))
    except ValueError:
        return str(common)


def track_title(result: TrackResult) -> str:
    """The plot's title: what is plotted, on which run, and the phase-change rule's threshold and outcome."""
    n = len(result.checkpoints)
    change = result.phase_change
    reason = result.reason if len(result.reason) <= 60 else result.reason[:59] + "…"
    outcome = (f"step {change.step} (best induction +{change.induction_jump:.2f})" if change is not None
               else f"none ({reason})" if reason else "none")
    return (f"best-head previous-token and induction scores (0..1), loss and ICL score (nats)\n"
            f"{n} checkpoint{'s' if n != 1 else ''} of {run_label(result)}\n"
            f"phase change (induction jump >= {MIN_JUMP:g}, confirmed by the ICL score): {outcome}")


def plot_track(result: TrackResult, path: str | Path) -> Path:
    """`track_figure` as a PNG. Needs matplotlib (UsageError otherwise)."""
    from circuitry.report.plots import save_png

    return save_png(track_figure(result), path)


def track_figure(result: TrackResult):
    """The matplotlib figure of `result`: best previous-token and induction scores over steps on a fixed 0..1
    axis; loss on the repeats and the ICL score (nats) on the second axis; the phase-change step marked; the
    legend below the axes; the title from `track_title`."""
    from circuitry.report.plots import phase_change_figure, place_legend

    stats = result.checkpoints
    steps = [s.step for s in stats]
    fig = phase_change_figure(steps, {"best induction": [s.induction for s in stats],
                                      "best previous-token": [s.previous_token for s in stats]},
                              loss=[s.loss_repeats for s in stats], title=track_title(result))
    ax, ax2 = fig.axes[0], fig.axes[-1]
    ax2.get_lines()[0].set_label("loss on repeats")
    ax2.plot(steps, [s.icl_score for s in stats], lw=1.2, ls="--", color="#6a3d9a", label="ICL score")
    ax2.set_ylabel("nats (loss on repeats, ICL score)")
    if result.phase_change is not None:
        ax.axvline(result.phase_change.step, color="#c5221f", lw=1, alpha=0.7, label="phase change")
    handles: list = []
    labels: list[str] = []
    for a in (ax, ax2):
        h, lab = a.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    place_legend(ax, handles, labels)
    return fig


# ------------------------------------------------------------------ the loss plot
def loss_plot_path(path: str | Path) -> Path:
    """Where `--plot OUT.png` puts the loss figure: OUT-loss.png beside it."""
    p = Path(path)
    return p.with_name(f"{p.stem}-loss{p.suffix}")


def plot_losses(result: TrackResult, path: str | Path) -> Path:
    """`loss_figure` as a PNG. Needs matplotlib (UsageError otherwise)."""
    from circuitry.report.plots import save_png

    return save_png(loss_figure(result), path)


def _phase_change_words(result: TrackResult) -> str:
    pc = result.phase_change
    return f"induction heads form at step {pc.step}" if pc else "no induction phase change"


def loss_titles(result: TrackResult) -> tuple[str, str]:
    """The two panels' titles: what is drawn, on which run, and what the rules found."""
    curve, bump, dist = result.loss_curve, result.bump, result.bump_distance
    if curve is None or curve.path is None:
        found = "no loss curve"
    elif bump is None:
        found = f"no bump ({curve.reason if len(curve.reason) <= 50 else curve.reason[:49] + '…'})"
    else:
        found = f"bump at step {bump.step} (steepest descent, from {bump.start} to {bump.end})"
    both = ("" if dist is None else "; the bump is at that step" if dist == 0
            else f"; the bump comes {abs(dist)} steps {'before' if dist < 0 else 'after'} it")
    window = f", {bump.window}-step moving average" if bump else ""
    left = (f"training loss (nats, per step{window}) of {run_label(result)}\n{found}\n"
            f"{_phase_change_words(result)}{both}")
    shown = position_checkpoints(result)
    right = (f"loss by token index (nats), ICL data (periodic repeats)\n"
             f"{len(shown)} checkpoint{'s' if len(shown) != 1 else ''}: first, last"
             f"{' and around the phase change' if result.phase_change else ''}")
    return left, right


def loss_figure(result: TrackResult):
    """Two panels. Left: the training loss per step (light) and smoothed (the bump's window), the bump's step
    and extent and the phase-change step marked, y from 0. Right: the mean loss of each token 1..63 of the ICL
    data for the checkpoints of `position_checkpoints`, on a fixed x axis 1..63, y from 0. Legends below the
    axes."""
    from circuitry.bump import smooth
    from circuitry.report.plots import place_legend, pyplot

    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12.0, 4.8), layout="constrained")
    left, right = loss_titles(result)
    curve, bump, pc = result.loss_curve, result.bump, result.phase_change
    top = 0.0
    if curve is not None and curve.steps:
        pairs = [(s, v) for s, v in zip(curve.steps, curve.losses) if v is not None]
        ax.plot([s for s, _ in pairs], [v for _, v in pairs], lw=0.6, color="#9ecae1", label="loss per step")
        top = max((v for _, v in pairs), default=0.0)
        if bump is not None:
            sm = smooth([v for _, v in pairs], [s for s, _ in pairs])
            ax.plot(sm.steps, sm.loss, lw=1.6, color="#2171b5", label=f"{sm.window}-step moving average")
            ax.axvspan(bump.start, bump.end, color="#e66101", alpha=0.12, lw=0, label="bump (half-peak extent)")
            ax.axvline(bump.step, color="#e66101", lw=1.2, label=f"loss bump (step {bump.step})")
    if pc is not None:
        ax.axvline(pc.step, color="#c5221f", lw=1.2, ls="--", label=f"induction phase change (step {pc.step})")
    ax.set_ylim(0, max(1.0, math.ceil(top)))
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (nats)")
    ax.set_title(left, fontsize=9)
    ax.grid(alpha=0.3)
    palette = ["#1b9e77", "#e66101", "#c5221f", "#6a3d9a", "#2171b5", "#666666"]
    top = 0.0
    for k, (role, s) in enumerate(position_checkpoints(result)):
        ys = [v if math.isfinite(v) else math.nan for v in s.loss_by_token]
        ax2.plot(range(1, len(ys) + 1), ys, lw=1.4, marker="o", ms=2, color=palette[k % len(palette)],
                 label=f"step {s.step} ({role})")
        top = max([top, *(v for v in ys if math.isfinite(v))])
    for lo, _ in POSITION_BUCKETS[1:]:
        ax2.axvline(lo - 0.5, color="#dddddd", lw=0.6, zorder=0)
    ax2.set_xlim(0.5, 63.5)
    ax2.set_ylim(0, max(1.0, math.ceil(top)))
    ax2.set_xlabel("token index in the context (grey lines: the table's buckets)")
    ax2.set_ylabel("mean loss (nats)")
    ax2.set_title(right, fontsize=9)
    ax2.grid(alpha=0.3)
    for a in (ax, ax2):
        handles, labels = a.get_legend_handles_labels()
        if handles:
            place_legend(a, handles, labels)
    return fig
