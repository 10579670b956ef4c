"""`ContrastiveBatch`: the paired clean and corrupted prompts of a task, with answers and named positions.

A task (IOI, greater-than, induction on fresh blocks ...) is data: clean
prompts, corrupted prompts of the same token length that differ in what the
circuit must use, the answer and the wrong answer(s) at the positions where
the metric is read, and named positions (`IO`, `S1`, `S2`, `END`, ...)
aligned across the two. A `ContrastiveBatch` is a `TokenBatch` of the clean
prompts, so everything that takes token batches (detectors, decomposition,
scans) takes it too; `corrupted_batch()` is the paired batch of the
corrupted prompts.

Shapes: clean `tokens` and `corrupted` [batch, pos]; `read` [batch, n_read]
(positions where the metric is read, usually one: END); `answer` [batch,
n_read] (the right next token at each read position); `wrong` [batch,
n_read, n_wrong]; each named position [batch, k] (k positions per prompt,
the same k for every prompt; most names have k = 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

import torch

from circuitry.data import TokenBatch
from circuitry.errors import UsageError, did_you_mean

END = "END"  # the last position of every prompt


@dataclass(frozen=True, kw_only=True)
class ContrastiveBatch(TokenBatch):
    """Clean prompts (the `TokenBatch` fields) paired with corrupted ones (see the module docstring)."""

    corrupted: torch.Tensor  # [batch, pos]
    answer: torch.Tensor  # [batch, n_read]
    wrong: torch.Tensor  # [batch, n_read, n_wrong]
    read: torch.Tensor  # [batch, n_read]
    positions: Mapping[str, torch.Tensor] = field(default_factory=dict)  # name -> [batch, k]
    clean_text: tuple[str, ...] = ()
    corrupted_text: tuple[str, ...] = ()
    task: str = ""

    def __post_init__(self) -> None:
        b, p = self.tokens.shape
        if tuple(self.corrupted.shape) != (b, p):
            raise UsageError(f"clean and corrupted prompts must have the same shape, got {(b, p)} and "
                             f"{tuple(self.corrupted.shape)}")
        if self.read.ndim != 2 or self.read.shape[0] != b or tuple(self.answer.shape) != tuple(self.read.shape):
            raise UsageError(f"read positions and answers must be [batch, n_read], got {tuple(self.read.shape)} "
                             f"and {tuple(self.answer.shape)}")
        if self.wrong.ndim != 3 or tuple(self.wrong.shape[:2]) != tuple(self.read.shape):
            raise UsageError(f"wrong answers must be [batch, n_read, n_wrong], got {tuple(self.wrong.shape)}")

    @property
    def n_read(self) -> int:
        return int(self.read.shape[1])

    def to(self, device: str | torch.device) -> ContrastiveBatch:
        return replace(self, tokens=self.tokens.to(device), predictable=self.predictable.to(device),
                       fresh=self.fresh.to(device), corrupted=self.corrupted.to(device),
                       answer=self.answer.to(device), wrong=self.wrong.to(device), read=self.read.to(device),
                       positions={k: v.to(device) for k, v in self.positions.items()})

    def corrupted_batch(self) -> ContrastiveBatch:
        """The same task with the roles swapped: the corrupted prompts as the base run (denoising)."""
        return replace(self, tokens=self.corrupted, corrupted=self.tokens, clean_text=self.corrupted_text,
                       corrupted_text=self.clean_text, description=f"{self.description} (corrupted)")

    def position_names(self) -> list[str]:
        return [END, *[n for n in self.positions if n != END]]

    def mask(self, at: Iterable[str | int] | None) -> torch.Tensor:
        """[batch, pos] True at the positions `at` names: position names (`S2`, `END`), with an offset
        (`S1+1`, `END-2`), or indices (`3`, `-1`); None: every position."""
        b, p = self.tokens.shape
        out = torch.zeros(b, p, dtype=torch.bool, device=self.tokens.device)
        if at is None:
            return out | True
        rows = torch.arange(b, device=self.tokens.device)
        for item in at:
            idx = self.resolve(item)  # [batch, k]
            for j in range(idx.shape[1]):
                out[rows, idx[:, j]] = True
        return out

    def resolve(self, item: str | int) -> torch.Tensor:
        """[batch, k] indices of one position name (with an optional +/- offset) or index."""
        b, p = self.tokens.shape
        if isinstance(item, int) and not isinstance(item, bool):
            if not -p <= item < p:
                raise UsageError(f"position {item} is outside the prompts of {p} tokens")
            return torch.full((b, 1), item % p, dtype=torch.long, device=self.tokens.device)
        name, offset = split_offset(str(item))
        if name == END:
            base = torch.full((b, 1), p - 1, dtype=torch.long, device=self.tokens.device)
        elif name in self.positions:
            base = self.positions[name].to(self.tokens.device)
        else:
            known = self.position_names()
            raise UsageError(f"no position {name!r} in this task{did_you_mean(name, known)}; positions: "
                             f"{', '.join(known)} (or an index)")
        idx = base + offset
        if bool((idx < 0).any()) or bool((idx >= p).any()):
            raise UsageError(f"position {item!r} falls outside the prompt of {p} tokens in some prompts")
        return idx


def split_offset(text: str) -> tuple[str, int]:
    """'S1+1' -> ('S1', 1); 'END-2' -> ('END', -2); 'IO' -> ('IO', 0)."""
    text = text.strip()
    for sign in ("+", "-"):
        name, op, rest = text.rpartition(sign)
        if op and name and rest.strip().isdigit() and len(rest.strip()) <= 6:
            return name.strip(), int(rest) * (1 if sign == "+" else -1)
    return text, 0


def paired(clean: TokenBatch, reference: TokenBatch, name: str = "") -> ContrastiveBatch:
    """A token batch and a reference batch of the same shape as a contrastive task: the metric is read at the
    clean batch's predictable positions (the same number in every row), the answer is the next clean token
    and the wrong answer the next reference token there (for the tasks of task plugins, such as induction)."""
    if tuple(clean.tokens.shape) != tuple(reference.tokens.shape):
        raise UsageError(f"the data and its reference must have the same shape to pair them row by row, got "
                         f"{tuple(clean.tokens.shape)} and {tuple(reference.tokens.shape)}")
    mask = clean.predictable.clone()
    mask[:, -1] = False  # the last position has no next token
    counts = mask.sum(1)
    if not bool((counts == counts[0]).all()) or int(counts[0]) == 0:
        raise UsageError(f"the data ({clean.description}) must have the same number of predictable positions "
                         f"(at least one) in every row to be read as a task")
    b = clean.tokens.shape[0]
    read = mask.nonzero()[:, 1].reshape(b, -1)  # [batch, n_read]
    rows = torch.arange(b)[:, None]
    answer, wrong = clean.tokens[rows, read + 1], reference.tokens[rows, read + 1][..., None]
    return ContrastiveBatch(clean.tokens, clean.predictable, clean.fresh, clean.repeat_len,
                            f"{clean.description} against {reference.description}", clean.warnings,
                            corrupted=reference.tokens, answer=answer, wrong=wrong, read=read,
                            positions={END: torch.full((b, 1), clean.tokens.shape[1] - 1)}, task=name)
