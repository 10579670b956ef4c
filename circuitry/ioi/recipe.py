"""The IOI training recipe (`circuitry train --task ioi`) and its training loop.

Each step draws `batch` fresh training prompts (name pairs outside the
held-out split) with a filler prefix of 0..`max_prefix` words, appends the
answer, and minimises the weighted next-token cross-entropy: the answer,
predicted at END, has weight `answer_weight`, every other token of the
prompt `context_weight`. The prompts come from a `random.Random` seeded
with seed + 1, the weights from `HookedTransformer(seed=seed)`, so a seed
fixes the run.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from circuitry.errors import UsageError
from circuitry.ioi.batches import loss_weights, prompt_batch
from circuitry.ioi.language import TEMPLATE_SETS, ioi_tokenizer, max_length, sample_prompts
from circuitry.model import HookedTransformer, ModelConfig
from circuitry.model.io import require_memory
from circuitry.train import check_run_options


@dataclass(frozen=True)
class IOIRecipe:
    """Everything that determines an IOI training run (with the seed, the run is reproducible)."""

    steps: int = 3000
    seed: int = 0
    n_layers: int = 4
    n_heads: int = 4
    d_model: int = 64
    d_mlp: int | None = None
    normalization: str | None = "LN"
    batch: int = 64
    lr: float = 3e-3
    lr_final: float = 0.1  # the learning rate decays along a cosine to lr * lr_final at the last step
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.1
    max_prefix: int = 8
    templates: str = "any-order"
    answer_weight: float = 20.0
    context_weight: float = 1.0
    checkpoint_every: int | None = None

    def __post_init__(self) -> None:
        check_run_options(self)
        if not 0 < self.answer_weight < float("inf") or not 0 <= self.context_weight < float("inf"):
            raise UsageError(f"--answer-weight must be a finite number > 0, got {self.answer_weight} (and the "
                             f"context weight finite and >= 0, got {self.context_weight})")
        if not 0 < self.lr < float("inf") or not 0 <= self.lr_final <= 1:
            raise UsageError(f"the learning rate must be a finite number > 0 and its final fraction in 0..1, got "
                             f"{self.lr} and {self.lr_final}")
        if self.d_mlp is not None and self.d_mlp < 1:
            raise UsageError(f"--d-mlp must be >= 1, got {self.d_mlp}")
        if not 0 <= self.max_prefix <= 64:
            raise UsageError(f"max_prefix must lie in 0..64, got {self.max_prefix}")
        if self.templates not in TEMPLATE_SETS:
            raise UsageError(f"--templates must be one of {', '.join(TEMPLATE_SETS)}, got {self.templates!r}")

    def model_config(self) -> ModelConfig:
        tok = ioi_tokenizer()
        return ModelConfig(
            n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads,
            d_head=self.d_model // self.n_heads, d_vocab=tok.vocab_size, n_ctx=max_length(self.max_prefix),
            d_mlp=self.d_mlp, normalization=self.normalization, bos_token_id=tok.bos_token_id, name="ioi-toy",
        )


def new_model(recipe: IOIRecipe) -> HookedTransformer:
    """The seeded initial model of a recipe, carrying the language's tokenizer."""
    cfg = recipe.model_config()
    require_memory(cfg, "training", copies=4)  # weights, gradients and AdamW's two moments
    model = HookedTransformer(cfg, seed=recipe.seed)
    model.tokenizer = ioi_tokenizer()  # type: ignore[assignment]
    return model


def train_ioi(recipe: IOIRecipe, on_step: Callable[[int, float], None] | None = None,
              on_checkpoint: Callable[[int, HookedTransformer], None] | None = None
              ) -> tuple[HookedTransformer, list[float], float]:
    """(model, loss per step, seconds) of a training run."""
    torch.manual_seed(recipe.seed)
    model = new_model(recipe)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=recipe.betas, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: cosine(i, recipe.steps, recipe.lr_final))
    rng = random.Random(recipe.seed + 1)
    n_ctx = model.cfg.n_ctx
    losses: list[float] = []
    start = time.perf_counter()
    if on_checkpoint is not None and recipe.checkpoint_every:
        on_checkpoint(0, model)
    for step in range(1, recipe.steps + 1):
        prompts = sample_prompts(recipe.batch, rng, "train", recipe.max_prefix, recipe.templates)
        batch = prompt_batch(prompts, with_answer=True, length=n_ctx)
        weights = loss_weights(batch, recipe.answer_weight, recipe.context_weight)
        nll = model.loss(batch.tokens, per_token=True)  # [batch, pos - 1]
        loss = (nll * weights).sum() / weights.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
        if on_checkpoint is not None and recipe.checkpoint_every and step % recipe.checkpoint_every == 0:
            on_checkpoint(step, model)
    model.eval()
    return model, losses, time.perf_counter() - start


def cosine(step: int, steps: int, final: float) -> float:
    """The learning-rate factor at `step` (0-based): from 1 down to `final` along half a cosine."""
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
