"""IOI prompts -> padded token tensors, the positions to read, and training loss weights."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from circuitry.ioi.language import IOIPrompt, ioi_tokenizer


@dataclass(frozen=True)
class PromptBatch:
    """Prompts right-padded to one length (causal attention: padding never changes earlier positions).

    tokens [batch, pos]; end, io_pos, s1_pos, s2_pos [batch] (positions); io, s [batch] (token ids);
    with the answer appended (`with_answer`), `tokens` has one more position per prompt, at end + 1."""

    tokens: torch.Tensor
    end: torch.Tensor
    io: torch.Tensor
    s: torch.Tensor
    io_pos: torch.Tensor
    s1_pos: torch.Tensor
    s2_pos: torch.Tensor

    @property
    def rows(self) -> torch.Tensor:
        return torch.arange(self.tokens.shape[0])

    def valid(self) -> torch.Tensor:
        """[batch, pos] True up to and including each prompt's END."""
        return torch.arange(self.tokens.shape[1])[None] <= self.end[:, None]


def prompt_batch(prompts: Sequence[IOIPrompt], with_answer: bool = False, length: int | None = None) -> PromptBatch:
    """The padded batch of `prompts` (to `length` positions, or the longest prompt's)."""
    pad = ioi_tokenizer().pad_token_id
    rows = [list(p.tokens) + ([p.io] if with_answer else []) for p in prompts]
    n = length or max(len(r) for r in rows)
    tokens = torch.full((len(rows), n), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.tensor(r)

    def col(name: str) -> torch.Tensor:
        return torch.tensor([getattr(p, name) for p in prompts], dtype=torch.long)

    return PromptBatch(tokens, col("end_pos"), col("io"), col("s"), col("io_pos"), col("s1_pos"), col("s2_pos"))


def loss_weights(batch: PromptBatch, answer_weight: float, context_weight: float) -> torch.Tensor:
    """[batch, pos - 1] weights of the next-token losses of a batch built `with_answer`: the answer
    (predicted at END) gets `answer_weight`, every other token of the prompt `context_weight`, padding 0."""
    n = batch.tokens.shape[1] - 1
    pos = torch.arange(n)[None]
    weights = torch.where(pos < batch.end[:, None], context_weight, 0.0)
    return torch.where(pos == batch.end[:, None], answer_weight, weights)
