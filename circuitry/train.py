"""Training of small attention-only models on periodic repeats (induction heads form).

The default `TrainRecipe` is the measured CPU recipe: 2 layers, 4 heads,
d_model 64, no normalisation, vocabulary 64 + BOS, context 64; each batch is
BOS + a random block of L ~ U[8, 24] tokens tiled to the context; AdamW 1e-3
with betas (0.9, 0.99) and weight decay 0.3, batch 64, 1500 steps. The
induction phase change arrives at step ~400-600.

Weight decay is the one departure from the measured recipe of the background
notes (which used none). Both ways the model gets two previous-token heads
(L0H0, L0H2) and three induction heads; with decay 0.3 the weight-based
K-composition from the main previous-token head into the induction heads rises
from about 1.45x to about 1.85x the random-matrix baseline, so the circuit is
visible in the weights as well as in the activations.

Two architectural perturbations of the induction circuit (Olsson et al. 2022, "the
phase change"): `block_k_composition` makes the keys of layers >= 1 read only the
embeddings (`ModelConfig.key_input` "embeddings"), so no previous-token head can
shift them; `smeared_keys` gives every head a learnable smear of its keys over the
previous position (`ModelConfig.smeared_keys`; the smear parameters get no weight
decay, which would pull every head toward an even mix).

With an output directory, `train` writes strict JSON (`circuitry.jsonable`):
`train.json` (recipe, command, seconds, torch version, final_loss) and
`loss.json` ({"step": [...], "loss": [...]}); a loss that is NaN or infinite
(a diverged run) is written as null.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from circuitry.data import periodic_tokens
from circuitry.errors import UsageError
from circuitry.fileio import atomic_write_text
from circuitry.jsonable import finite_or_none, strict_dumps
from circuitry.model import HookedTransformer, ModelConfig, save_model
from circuitry.model.io import require_memory
from circuitry.trainstate import save_state


def check_run_options(recipe) -> None:
    """The options every training recipe has (steps, sizes, batch, seed, weight decay, checkpoints): a
    UsageError in the command line's words for the first that is out of range."""
    for name in ("steps", "n_layers", "n_heads", "d_model", "batch"):
        if getattr(recipe, name) < 1:
            raise UsageError(f"{name} must be >= 1, got {getattr(recipe, name)}")
    if recipe.d_model % recipe.n_heads:
        raise UsageError(f"--d-model ({recipe.d_model}) must be a multiple of --heads ({recipe.n_heads})")
    if not 0 <= recipe.seed < 2**63 - 1:
        raise UsageError(f"--seed must lie in 0..{2**63 - 2}, got {recipe.seed}")
    if not 0 <= recipe.weight_decay < float("inf"):
        raise UsageError(f"--weight-decay must be a finite number >= 0, got {recipe.weight_decay}")
    if recipe.checkpoint_every is not None and recipe.checkpoint_every < 1:
        raise UsageError("--checkpoint-every must be >= 1")


@dataclass(frozen=True)
class TrainRecipe:
    """Everything that determines a training run (with the seed, the run is reproducible)."""

    steps: int = 1500
    seed: int = 0
    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 64
    d_vocab: int = 64  # random tokens; BOS is one more id
    n_ctx: int = 64
    batch: int = 64
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.3
    min_period: int = 8
    max_period: int = 24
    checkpoint_every: int | None = None
    block_k_composition: bool = False
    smeared_keys: bool = False

    def __post_init__(self) -> None:
        check_run_options(self)

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads,
            d_head=self.d_model // self.n_heads, d_vocab=self.d_vocab + 1, n_ctx=self.n_ctx,
            bos_token_id=self.d_vocab, name=f"attn-only-{self.n_layers}l",
            key_input="embeddings" if self.block_k_composition else "residual", smeared_keys=self.smeared_keys,
        )


@dataclass(frozen=True)
class TrainResult:
    model: HookedTransformer
    losses: list[float]
    seconds: float
    checkpoints: list[Path]


def parameter_groups(model: HookedTransformer, weight_decay: float) -> list[dict]:
    """AdamW's parameter groups: every parameter with `weight_decay`, but the smear parameters of smeared keys,
    without (one group when the model has none)."""
    params = dict(model.named_parameters())
    smear = [p for n, p in params.items() if n.endswith(".smear_alpha")]
    rest = [p for n, p in params.items() if not n.endswith(".smear_alpha")]
    return [{"params": rest}] + ([{"params": smear, "weight_decay": 0.0}] if smear else [])


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}.safetensors"


def _batch(recipe: TrainRecipe, cfg: ModelConfig, gen: torch.Generator):
    return periodic_tokens(cfg.d_vocab, cfg.bos_token_id, batch=recipe.batch, n_ctx=recipe.n_ctx,
                           min_period=recipe.min_period, max_period=recipe.max_period, generator=gen)


def train(recipe: TrainRecipe, out: str | Path | None = None,
          on_step: Callable[[int, float], None] | None = None,
          command: str | None = None, resume: Resume | None = None) -> TrainResult:
    """Train a model; with `out`, write the model, loss curve, recipe and checkpoints there (each checkpoint
    with its training state, `circuitry.trainstate`). `resume`: continue from a checkpoint of the same recipe
    (`resume_point`); the result equals the uninterrupted run's."""
    torch.manual_seed(recipe.seed)
    cfg = recipe.model_config()
    require_memory(cfg, "training", copies=4)  # weights, gradients and AdamW's two moments
    model = HookedTransformer(cfg, seed=recipe.seed)
    opt = torch.optim.AdamW(parameter_groups(model, recipe.weight_decay), lr=recipe.lr, betas=recipe.betas,
                            weight_decay=recipe.weight_decay)
    gen = torch.Generator().manual_seed(recipe.seed + 1)
    out_dir = Path(out) if out is not None else None
    meta = {"recipe": strict_dumps(dataclasses.asdict(recipe), indent=None), "command": command or ""}
    checkpoints: list[Path] = []
    losses: list[float] = []

    def checkpoint(step: int) -> None:
        if out_dir is not None and recipe.checkpoint_every:
            path = out_dir / "checkpoints" / checkpoint_name(step)
            save_state(path, step, opt, gen, losses)  # first: a checkpoint that exists has its state
            checkpoints.append(save_checkpoint(model, out_dir, step, meta))

    first = 1
    if resume is not None:
        losses = _restore(resume, recipe, model, opt, gen)
        first = resume.step + 1
    else:
        checkpoint(0)
    model.train()
    start = time.perf_counter()
    for step in range(first, recipe.steps + 1):
        batch = _batch(recipe, cfg, gen)
        loss = model.loss(batch.tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
        if recipe.checkpoint_every and step % recipe.checkpoint_every == 0:
            checkpoint(step)
    seconds = time.perf_counter() - start
    model.eval()
    if out_dir is not None:
        extra = {"resumed_from": str(resume.checkpoint), "resumed_at_step": resume.step} if resume else None
        write_run(out_dir, model, losses, seconds, dataclasses.asdict(recipe), command, meta, extra)
    return TrainResult(model, losses, seconds, checkpoints)


# ------------------------------------------------------------------ resuming
@dataclass(frozen=True)
class Resume:
    """Where a run continues: a numbered checkpoint, its step and the recipe it records."""

    checkpoint: Path
    step: int
    recipe: dict

    def continued(self, steps: int | None = None, checkpoint_every: int | None = None) -> TrainRecipe:
        """The recorded recipe, run to `steps` in all (default: its own), with `checkpoint_every` if given."""
        fields = {f.name for f in dataclasses.fields(TrainRecipe)}
        unknown = sorted(set(self.recipe) - fields)
        if unknown:
            raise UsageError(f"{self.checkpoint}: its recipe has fields this version does not know: "
                             f"{', '.join(unknown)}")
        values = {**self.recipe, "betas": tuple(self.recipe.get("betas", TrainRecipe.betas))}
        if steps is not None:
            values["steps"] = steps
        if checkpoint_every is not None:
            values["checkpoint_every"] = checkpoint_every
        recipe = TrainRecipe(**values)
        if recipe.steps <= self.step:
            raise UsageError(f"--steps {recipe.steps}: {self.checkpoint} is already step {self.step}; give more "
                             f"steps in all to continue")
        return recipe


def resume_point(target: str | Path) -> Resume:
    """The checkpoint to continue from: `target` itself (a `step-N.safetensors` file), or the last one of a run
    directory (or of its checkpoints/ subdirectory)."""
    from circuitry.track import list_checkpoints
    from circuitry.trainstate import recorded_recipe

    rows = list_checkpoints([target])
    if Path(target).is_file() and len(rows) == 1:
        step, path = rows[0]
    else:
        step, path = rows[-1]
    return Resume(path, step, recorded_recipe(path))


def _restore(resume: Resume, recipe: TrainRecipe, model: HookedTransformer, opt: torch.optim.Optimizer,
             gen: torch.Generator) -> list[float]:
    """Load the checkpoint's weights, optimizer moments and generator state into the fresh run; the losses
    so far. A checkpoint without a saved state (older versions) gets its data generator replayed to the step
    (the data is exact), fresh optimizer moments, with a warning, and NaN for the losses it does not know
    (null in loss.json)."""
    from circuitry.diagnostics import warn
    from circuitry.model.io import load_model_file
    from circuitry.trainstate import load_state

    saved = load_model_file(resume.checkpoint)
    if saved.cfg != model.cfg:
        raise UsageError(f"{resume.checkpoint}: its model config differs from the recipe's")
    with torch.no_grad():
        model.load_state_dict(saved.state_dict())
    state = load_state(resume.checkpoint, resume.step)
    if state is None:
        warn(f"{resume.checkpoint} has no saved optimizer state (written by an older version): training continues "
             f"with fresh AdamW moments, so it will not match an uninterrupted run exactly")
        for _ in range(resume.step):
            _batch(recipe, model.cfg, gen)
        return [math.nan] * resume.step
    n = len(list(model.parameters()))
    if set(state.optimizer) - set(range(n)):
        raise UsageError(f"{resume.checkpoint}: its optimizer state names parameters the model does not have")
    opt.load_state_dict({"state": state.optimizer, "param_groups": opt.state_dict()["param_groups"]})
    gen.set_state(state.generator)
    return state.losses


def save_checkpoint(model: HookedTransformer, out_dir: Path, step: int, meta: dict[str, str]) -> Path:
    """Write the numbered checkpoint of `step` under OUT/checkpoints."""
    path = out_dir / "checkpoints" / checkpoint_name(step)
    save_model(model, path, {**meta, "step": str(step)})
    return path


def write_run(out_dir: Path, model: HookedTransformer, losses: list[float], seconds: float, recipe: dict,
              command: str | None, meta: dict[str, str], extra: dict | None = None) -> None:
    """Write the trained model (with its tokenizer, if any), `train.json` (recipe, command, seconds, torch
    version, final loss, and `extra`) and `loss.json`."""
    model.source = str(out_dir)
    save_model(model, out_dir, {**meta, "step": str(len(losses))})
    record = {"recipe": recipe, "command": command, "seconds": round(seconds, 2), "torch": torch.__version__,
              "final_loss": finite_or_none(losses[-1]) if losses else None, **(extra or {})}
    atomic_write_text(out_dir / "train.json", strict_dumps(record, indent=2) + "\n")
    curve = {"step": list(range(1, len(losses) + 1)), "loss": [finite_or_none(x) for x in losses]}
    atomic_write_text(out_dir / "loss.json", strict_dumps(curve, indent=None) + "\n")


def plot_losses(losses: list[float], path: str | Path) -> bool:
    """Write the loss curve as PNG when matplotlib is installed; False otherwise."""
    from circuitry.report import plots

    if not plots.available():
        return False
    plots.loss_curve_png(losses, path)
    return True
