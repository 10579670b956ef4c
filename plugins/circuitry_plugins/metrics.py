"""Standard metrics: numbers computed from one run's logits on a token batch.

Every metric reads the positions of `batch.predictable` (the repeated part,
where the next token can be copied from context) unless its name says
otherwise:

- loss: mean next-token cross-entropy on predictable positions (nats).
- loss_all: mean next-token cross-entropy on every position.
- correct_logit: mean logit of the correct next token.
- logit_diff: mean of (logit of the correct next token - the largest other logit).
- kl: mean KL divergence KL(clean || run) of the next-token distributions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from circuitry import hookimpl
from circuitry.errors import UsageError
from circuitry.records import Metric


def _targets(logits: torch.Tensor, batch, positions: str = "predictable"):
    """(logits at the selected positions [n, vocab], their next tokens [n])."""
    tokens = batch.tokens.to(logits.device)
    if positions == "all":
        mask = torch.ones(tokens.shape, dtype=torch.bool, device=logits.device)
        mask[:, -1] = False
    else:
        mask = batch.predictable.to(logits.device)
        if not bool(mask.any()):
            raise UsageError(f"the data ({batch.description}) has no predictable positions for this metric")
    nxt = torch.roll(tokens, -1, dims=1)
    return logits[mask].float(), nxt[mask]


def loss(logits, batch, clean_logits=None) -> float:
    lg, tgt = _targets(logits, batch)
    return float(F.cross_entropy(lg, tgt))


def loss_all(logits, batch, clean_logits=None) -> float:
    lg, tgt = _targets(logits, batch, "all")
    return float(F.cross_entropy(lg, tgt))


def correct_logit(logits, batch, clean_logits=None) -> float:
    lg, tgt = _targets(logits, batch)
    return float(lg.gather(-1, tgt[:, None]).mean())


def logit_diff(logits, batch, clean_logits=None) -> float:
    lg, tgt = _targets(logits, batch)
    correct = lg.gather(-1, tgt[:, None])[:, 0]
    others = lg.scatter(-1, tgt[:, None], float("-inf")).max(-1).values
    return float((correct - others).mean())


def kl(logits, batch, clean_logits=None) -> float:
    if clean_logits is None:
        raise UsageError("the kl metric needs the clean run's logits")
    lg, _ = _targets(logits, batch)
    clean, _ = _targets(clean_logits, batch)
    return float(F.kl_div(F.log_softmax(lg, -1), F.log_softmax(clean, -1), log_target=True,
                          reduction="batchmean"))


@hookimpl
def circuitry_metrics():
    return [
        Metric("loss", "next-token loss on the predictable (repeated) positions, nats", loss),
        Metric("loss_all", "next-token loss on every position, nats", loss_all),
        Metric("correct_logit", "mean logit of the correct next token on predictable positions",
               correct_logit, lower_is_better=False),
        Metric("logit_diff", "correct-token logit minus the largest other logit, predictable positions",
               logit_diff, lower_is_better=False),
        Metric("kl", "KL(clean || run) of next-token distributions on predictable positions", kl),
    ]
