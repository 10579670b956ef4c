"""Measurements of an IOI model on held-out prompts: accuracy, logit difference, per-head localisation.

All read the logits at END (the last token of each prompt, before the answer):

- accuracy: the answer IO is the argmax over the whole vocabulary;
- io_over_s: the IO logit is above the S logit;
- logit_diff: mean of logit[IO] - logit[S];
- per head (`head_table`): direct logit attribution (the head's output at END,
  through the final normalisation with its scale frozen, projected onto
  W_U[:, IO] - W_U[:, S]), the change of the mean logit difference when the
  head's output is zero-ablated or mean-ablated (its mean over every prompt
  position of the batch), and where it attends: from END to IO, S1, S2, and
  from S2 to S1 (duplicate-token attention).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from circuitry.ioi.batches import PromptBatch, prompt_batch
from circuitry.ioi.language import NAMES, IOIPrompt, ioi_tokenizer, sample_prompts, token_id
from circuitry.model import HookedTransformer

EVAL_SEED = 2024
EVAL_PROMPTS = 1000


def held_out(n: int = EVAL_PROMPTS, seed: int = EVAL_SEED, max_prefix: int = 8,
             templates: str = "classic") -> list[IOIPrompt]:
    """The fixed held-out prompts: name pairs never seen together in training."""
    return sample_prompts(n, random.Random(seed), "test", max_prefix, templates)


@dataclass(frozen=True)
class IOIScores:
    """Accuracy, IO-above-S rate and mean logit difference IO - S at END."""

    n: int
    accuracy: float
    io_over_s: float
    logit_diff: float

    def as_dict(self) -> dict[str, float | int]:
        return {"n": self.n, "accuracy": round(self.accuracy, 4), "io_over_s": round(self.io_over_s, 4),
                "logit_diff": round(self.logit_diff, 4)}


def end_logits(model: HookedTransformer, batch: PromptBatch, hooks=()) -> torch.Tensor:
    """Logits at each prompt's END [batch, d_vocab]."""
    with torch.inference_mode():
        logits = model.run_with_hooks(batch.tokens, hooks)
    return logits[batch.rows, batch.end]


def scores_of(logits: torch.Tensor, batch: PromptBatch) -> IOIScores:
    io, s = logits[batch.rows, batch.io], logits[batch.rows, batch.s]
    return IOIScores(n=len(batch.io), accuracy=float((logits.argmax(-1) == batch.io).float().mean()),
                     io_over_s=float((io > s).float().mean()), logit_diff=float((io - s).mean()))


def evaluate(model: HookedTransformer, prompts: Sequence[IOIPrompt]) -> IOIScores:
    batch = prompt_batch(prompts)
    return scores_of(end_logits(model, batch), batch)


@dataclass(frozen=True)
class HeadRow:
    """One head's localisation numbers (see the module docstring)."""

    head: str
    dla: float
    zero_ablation: float  # change of the mean logit difference
    mean_ablation: float
    end_to_io: float
    end_to_s1: float
    end_to_s2: float
    s2_to_s1: float

    def as_dict(self) -> dict[str, float | str]:
        return {k: (v if isinstance(v, str) else round(v, 3)) for k, v in self.__dict__.items()}


def head_table(model: HookedTransformer, prompts: Sequence[IOIPrompt]) -> list[HeadRow]:
    """Per-head localisation on `prompts` (one cached run, then one ablated run per head and kind)."""
    with torch.inference_mode():
        return _head_rows(model, prompt_batch(prompts))


def _head_rows(model: HookedTransformer, batch: PromptBatch) -> list[HeadRow]:
    r, end = batch.rows, batch.end
    logits, cache = model.run_with_cache(batch.tokens)
    base = scores_of(logits[r, end], batch).logit_diff
    direction = model.W_U[:, batch.io] - model.W_U[:, batch.s]  # [d_model, batch]
    scale = cache["ln_final.hook_scale"][r, end] if "ln_final.hook_scale" in cache else None
    w = getattr(model.ln_final, "w", None)
    valid = batch.valid()
    rows = []
    for l in range(model.cfg.n_layers):
        z = cache[f"blocks.{l}.attn.hook_z"]  # [batch, pos, head, d_head]
        pattern = cache[f"blocks.{l}.attn.hook_pattern"]  # [batch, head, q, k]
        for h in range(model.cfg.n_heads):
            out = z[r, end, h] @ model.W_O[l, h]  # [batch, d_model]
            if scale is not None:
                out = (out - out.mean(-1, keepdim=True)) / scale
            if w is not None:
                out = out * w
            dla = float((out * direction.T).sum(-1).mean())
            mean_z = z[:, :, h][valid].mean(0)
            effects = []
            for value in (torch.zeros_like(mean_z), mean_z):
                def hook(x, hook, h=h, value=value):
                    x[:, :, h] = value
                    return x
                ablated = end_logits(model, batch, [(f"blocks.{l}.attn.hook_z", hook)])
                effects.append(scores_of(ablated, batch).logit_diff - base)
            p = pattern[:, h]
            rows.append(HeadRow(f"L{l}H{h}", dla, effects[0], effects[1],
                                float(p[r, end, batch.io_pos].mean()), float(p[r, end, batch.s1_pos].mean()),
                                float(p[r, end, batch.s2_pos].mean()), float(p[r, batch.s2_pos, batch.s1_pos].mean())))
    return rows


def s1_replaced(prompts: Sequence[IOIPrompt], seed: int = EVAL_SEED) -> list[IOIPrompt]:
    """The prompts with S1 replaced by a third name (neither IO nor S): S2 is no longer a repeat."""
    tok = ioi_tokenizer()
    rng = random.Random(seed)
    out = []
    for p in prompts:
        third = rng.choice([n for n in NAMES if token_id(n) not in (p.io, p.s)])
        tokens = list(p.tokens)
        tokens[p.s1_pos] = token_id(third)
        out.append(dataclasses.replace(p, tokens=tuple(tokens), text=tok.decode(tokens[1:])))
    return out
