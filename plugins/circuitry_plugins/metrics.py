"""Standard metrics: numbers computed from one run's logits on a batch.

On a task batch (`circuitry.tasks.ContrastiveBatch`) a metric is read at the
task's read positions, with the task's answer and wrong answer(s); on a token
batch, at the positions of `batch.predictable` (the repeated part, where the
next token can be copied from context), with the next token as the answer:

- loss: cross-entropy of the answer (nats).
- loss_all: next-token cross-entropy on every position (token batches).
- correct_logit: logit of the answer.
- logit_diff: logit of the answer minus the mean logit of the wrong answers
  (task batches); minus the largest other logit (token batches).
- prob: probability of the answer.
- rank: rank of the answer among all tokens (1: the model's top prediction).
- accuracy: fraction of read positions where the answer is the top prediction.
- kl: KL(clean || run) of the next-token distributions.

Each is a mean over the read positions of every prompt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from circuitry import hookimpl
from circuitry.errors import UsageError
from circuitry.records import Metric


def _read(batch, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(mask [batch, pos] or rows/positions, answer per read position [n], wrong [n, n_wrong] or None)."""
    if hasattr(batch, "answer"):  # a task batch
        return batch.read.to(device), batch.answer.to(device).reshape(-1), batch.wrong.to(device).reshape(
            -1, batch.wrong.shape[-1])
    mask = batch.predictable.to(device)
    if not bool(mask.any()):
        raise UsageError(f"the data ({batch.description}) has no predictable positions for this metric")
    return mask, torch.roll(batch.tokens.to(device), -1, dims=1)[mask], None


def _at(logits: torch.Tensor, batch, where: torch.Tensor) -> torch.Tensor:
    """Logits at the read positions [n, vocab] (float32)."""
    if hasattr(batch, "answer"):
        rows = torch.arange(logits.shape[0], device=logits.device)[:, None]
        return logits[rows, where].reshape(-1, logits.shape[-1]).float()
    return logits[where].float()


def _targets(logits: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    where, answer, wrong = _read(batch, logits.device)
    return _at(logits, batch, where), answer, wrong


# Each differentiable metric is one function returning a 0-dim tensor (which attribution differentiates);
# `compute`, what runs and checks read, is its value as a float (`_value`).
def loss_t(logits, batch, clean_logits=None) -> torch.Tensor:
    lg, answer, _ = _targets(logits, batch)
    return F.cross_entropy(lg, answer)


def loss_all_t(logits, batch, clean_logits=None) -> torch.Tensor:
    tokens = batch.tokens.to(logits.device)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1))


def correct_logit_t(logits, batch, clean_logits=None) -> torch.Tensor:
    lg, answer, _ = _targets(logits, batch)
    return lg.gather(-1, answer[:, None]).mean()


def logit_diff_t(logits, batch, clean_logits=None) -> torch.Tensor:
    lg, answer, wrong = _targets(logits, batch)
    correct = lg.gather(-1, answer[:, None])[:, 0]
    if wrong is not None:
        return (correct - lg.gather(-1, wrong).mean(-1)).mean()
    others = lg.scatter(-1, answer[:, None], float("-inf")).max(-1).values
    return (correct - others).mean()


def prob_t(logits, batch, clean_logits=None) -> torch.Tensor:
    lg, answer, _ = _targets(logits, batch)
    return torch.softmax(lg, -1).gather(-1, answer[:, None]).mean()


def kl_t(logits, batch, clean_logits=None) -> torch.Tensor:
    if clean_logits is None:
        raise UsageError("the kl metric needs the clean run's logits")
    lg, _, _ = _targets(logits, batch)
    clean, _, _ = _targets(clean_logits.detach(), batch)
    return F.kl_div(F.log_softmax(lg, -1), F.log_softmax(clean, -1), log_target=True, reduction="batchmean")


def _value(fn):
    """The float value of a tensor metric (detached: a measured number)."""
    def compute(logits, batch, clean_logits=None) -> float:
        return float(fn(logits.detach(), batch, None if clean_logits is None else clean_logits.detach()))
    compute.__name__ = fn.__name__.removesuffix("_t")
    return compute


loss, loss_all, correct_logit, logit_diff, prob, kl = map(_value, (loss_t, loss_all_t, correct_logit_t,
                                                                   logit_diff_t, prob_t, kl_t))


def rank(logits, batch, clean_logits=None) -> float:
    lg, answer, _ = _targets(logits.detach(), batch)
    mine = lg.gather(-1, answer[:, None])
    return float(((lg > mine).sum(-1) + 1).float().mean())


def accuracy(logits, batch, clean_logits=None) -> float:
    lg, answer, _ = _targets(logits.detach(), batch)
    return float((lg.argmax(-1) == answer).float().mean())


@hookimpl
def circuitry_metrics():
    return [
        Metric("loss", "cross-entropy of the answer (task) or of the next token on predictable positions, nats",
               loss, tensor=loss_t),
        Metric("loss_all", "next-token loss on every position, nats", loss_all, tensor=loss_all_t),
        Metric("correct_logit", "logit of the answer (task) or of the correct next token", correct_logit,
               lower_is_better=False, tensor=correct_logit_t),
        Metric("logit_diff", "answer minus the mean wrong answer (task); correct token minus the best other "
                             "(token data)", logit_diff, lower_is_better=False, tensor=logit_diff_t),
        Metric("prob", "probability of the answer (task) or of the correct next token", prob, lower_is_better=False,
               tensor=prob_t),
        Metric("rank", "rank of the answer among all tokens (1: top prediction)", rank),
        Metric("accuracy", "fraction of read positions where the answer is the top prediction", accuracy,
               lower_is_better=False),
        Metric("kl", "KL(clean || run) of the next-token distributions at the read positions", kl, tensor=kl_t),
    ]
