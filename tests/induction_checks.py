"""Induction-circuit measurements shared by the shipped-model and training tests.

Everything here is computed straight from the cached attention patterns and
the logits of one run on BOS + a random block of `seq_len` tokens repeated
twice, with masks built from positions (not from `TokenBatch.predictable`):

    positions: 0 = BOS, 1..L = first occurrence, L+1..2L = second occurrence
    previous-token score of a head: mean of pattern[q, q-1] over q = 1..2L
    induction score of a head: mean of pattern[q, q-L+1] over q = L+1..2L
        (from the second occurrence of a token to the token after its first)
    loss_repeat: mean cross-entropy of predicting token i+1 at i = L+1..2L-1
    loss_fresh: mean cross-entropy of predicting token i+1 at i = 1..L-1
        (first occurrences: random, so about ln(number of random tokens))

`failures()` lists the conditions of an induction circuit that a model does
not meet; `long_context()` shows where the previous-token heads give out on
longer repeats; `k_composition()` removes the previous-token heads' outputs
from the layer-1 heads' key (or query) input; `k_composition_weights()` is the
weight-based K-composition score of Elhage et al. from every layer-0 head to
every layer-1 head, from full d_model x d_model products, and its ratio to the
mean score of random matrices of the same shapes.

Run as a script (`python tests/induction_checks.py [MODEL]`) it prints all
measurements as JSON; circuitry/builtin/attn-only-2l/card.json holds them for
the shipped model (evaluation.scores, long_context, k_composition,
k_composition_weights).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from circuitry.data import repeated_tokens

# the evaluation data of the shipped model's card (short sequences: see the card's caveat)
DATA = {"generator": "repeated_tokens", "batch": 64, "seq_len": 10, "n_repeats": 2, "seed": 1}

PREV_MIN = 0.9  # some layer-0 head attends to i-1 at least this much
INDUCTION_MIN = 0.5  # some layer-1 head attends to the token after the first occurrence
LOSS_REPEAT_MAX = 0.5  # nats
FRESH_TOLERANCE = 0.3  # nats around ln(number of random tokens)


@dataclass(frozen=True)
class InductionScores:
    prev_token: torch.Tensor  # [layer, head]
    induction: torch.Tensor  # [layer, head]
    loss_repeat: float
    loss_fresh: float
    n_random: int  # number of distinct random token ids (loss_fresh should be near ln of it)

    def as_dict(self) -> dict:
        heads = lambda t: {f"L{l}H{h}": round(float(t[l, h]), 4)  # noqa: E731
                           for l in range(t.shape[0]) for h in range(t.shape[1])}
        return {"prev_token": heads(self.prev_token), "induction": heads(self.induction),
                "loss_repeat": round(self.loss_repeat, 4), "loss_fresh": round(self.loss_fresh, 4),
                "ln_n_random": round(math.log(self.n_random), 4)}


def measure(model, batch: int = 64, seq_len: int = 10, seed: int = 1) -> InductionScores:
    """Scores of `model` on repeated_tokens(d_vocab, bos, batch, seq_len, n_repeats=2, seed)."""
    cfg = model.cfg
    L = seq_len
    data = repeated_tokens(cfg.d_vocab, cfg.bos_token_id, batch=batch, seq_len=L, n_repeats=2, seed=seed)
    tokens = data.tokens  # [batch, 2L+1]
    assert tokens.shape == (batch, 2 * L + 1)
    assert bool((tokens[:, 0] == cfg.bos_token_id).all()) and torch.equal(tokens[:, 1:L + 1], tokens[:, L + 1:])
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(cfg.n_layers)]
    with torch.inference_mode():
        logits, cache = model.run_with_cache(tokens, names=names)
    pattern = torch.stack([cache[n] for n in names])  # [layer, batch, head, q, k]
    q_prev = torch.arange(1, 2 * L + 1)
    prev = pattern[:, :, :, q_prev, q_prev - 1].mean(dim=(1, 3))  # [layer, head]
    q_ind = torch.arange(L + 1, 2 * L + 1)
    ind = pattern[:, :, :, q_ind, q_ind - L + 1].mean(dim=(1, 3))  # [layer, head]

    def loss_at(pos: torch.Tensor) -> float:
        lg = logits[:, pos].float()  # [batch, n, d_vocab]
        target = tokens[:, pos + 1]  # [batch, n]
        return float(F.cross_entropy(lg.reshape(-1, lg.shape[-1]), target.reshape(-1)))

    n_random = cfg.d_vocab - 1 if cfg.bos_token_id == cfg.d_vocab - 1 else cfg.d_vocab
    return InductionScores(prev.float(), ind.float(), loss_at(torch.arange(L + 1, 2 * L)),
                           loss_at(torch.arange(1, L)), n_random)


def long_context(model, seq_len: int = 31, batch: int = 64, seed: int = 1, split: int = 23) -> dict:
    """Where the previous-token heads give out: on 2 x `seq_len` repeats (2*seq_len+1 tokens), the
    mean previous-token score of each layer-0 head over query positions 1..split-1 and split..end,
    and the loss on the repeated half where the induction key (the token after the first
    occurrence, at q - seq_len + 1) lies before `split` / from `split` on."""
    cfg = model.cfg
    L = seq_len
    data = repeated_tokens(cfg.d_vocab, cfg.bos_token_id, batch=batch, seq_len=L, n_repeats=2, seed=seed)
    tokens = data.tokens  # [batch, 2L+1]
    with torch.inference_mode():
        logits, cache = model.run_with_cache(tokens, names=["blocks.0.attn.hook_pattern"])
    pattern = cache["blocks.0.attn.hook_pattern"]  # [batch, head, q, k]
    q = torch.arange(1, 2 * L + 1)
    prev = pattern[:, :, q, q - 1].mean(0)  # [head, q]
    early, late = prev[:, : split - 1].mean(-1), prev[:, split - 1:].mean(-1)
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), tokens[:, 1:], reduction="none")  # [batch, 2L]
    rep = torch.arange(L + 1, 2 * L)  # predictions of the repeated half
    cut = split + L - 1  # predictions at q >= cut read an induction key at position >= split
    return {"data": {"generator": "repeated_tokens", "batch": batch, "seq_len": L, "n_repeats": 2, "seed": seed},
            "split": split,
            "prev_token_before_split": {f"L0H{h}": round(float(early[h]), 4) for h in range(cfg.n_heads)},
            "prev_token_from_split": {f"L0H{h}": round(float(late[h]), 4) for h in range(cfg.n_heads)},
            "loss_repeat_key_before_split": round(float(ce[:, rep[rep < cut]].mean()), 4),
            "loss_repeat_key_from_split": round(float(ce[:, rep[rep >= cut]].mean()), 4)}


def k_composition(model, prev_heads: list[int], batch: int = 64, seq_len: int = 10, seed: int = 1) -> dict:
    """Induction scores of the layer-1 heads when their key input (or query input) is the residual
    stream without the outputs of the layer-0 heads `prev_heads` (z @ W_O removed per head)."""
    cfg = model.cfg
    L = seq_len
    tokens = repeated_tokens(cfg.d_vocab, cfg.bos_token_id, batch=batch, seq_len=L, n_repeats=2, seed=seed).tokens
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens, names=["blocks.0.attn.hook_z", "blocks.1.hook_resid_pre"])
        z = cache["blocks.0.attn.hook_z"][:, :, prev_heads]  # [batch, pos, head, d_head]
        W_O = model.blocks[0].attn.W_O[prev_heads]  # [head, d_head, d_model]
        without = cache["blocks.1.hook_resid_pre"] - torch.einsum("bphe,hed->bpd", z, W_O)
        q = torch.arange(L + 1, 2 * L + 1)
        out = {"removed": [f"L0H{h}" for h in prev_heads]}
        for kind in ("k", "q"):
            def replace(x, hook):
                return without[:, :, None].expand_as(x)

            _, c = model.run_with_cache(tokens, names=["blocks.1.attn.hook_pattern"],
                                        hooks=[(f"blocks.1.attn.hook_{kind}_input", replace)])
            ind = c["blocks.1.attn.hook_pattern"][:, :, q, q - L + 1].mean(dim=(0, 2))  # [head]
            out[f"induction_without_in_{kind}"] = {f"L1H{h}": round(float(ind[h]), 4) for h in range(cfg.n_heads)}
    return out


def _comp(W_A: torch.Tensor, W_B: torch.Tensor) -> torch.Tensor:
    """||W_A W_B||_F / (||W_A||_F ||W_B||_F) over the last two dims: [..., d, d] x [..., d, d] -> [...]."""
    return (W_A @ W_B).flatten(-2).norm(dim=-1) / (W_A.flatten(-2).norm(dim=-1) * W_B.flatten(-2).norm(dim=-1))


def random_comp_scores(d_model: int, d_head: int, samples: int = 200, seed: int = 0) -> torch.Tensor:
    """comp scores [samples] of W_A = A_l A_r^T and W_B = B_l B_r^T with Gaussian factors [d_model, d_head]."""
    gen = torch.Generator().manual_seed(seed)
    f = [torch.randn(samples, d_model, d_head, generator=gen) for _ in range(4)]  # A_l, A_r, B_l, B_r
    return _comp(f[0] @ f[1].transpose(-1, -2), f[2] @ f[3].transpose(-1, -2))


def k_composition_weights(model, samples: int = 200, seed: int = 0) -> dict:
    """K-composition from each layer-0 head h1 to each layer-1 head h2 (row convention):
    comp(W_OV[0, h1], W_QK[1, h2]^T) with W_OV = W_V W_O and W_QK = W_Q W_K^T, each d_model x d_model;
    the baseline is the mean of `random_comp_scores` (about 1/sqrt(d_model)). Models without norms only."""
    cfg = model.cfg
    assert cfg.normalization is None and cfg.n_layers == 2, "raw weights are the effective ones only without norms"
    with torch.no_grad():
        W_Q, W_K, W_V, W_O = (model.W_Q.float(), model.W_K.float(), model.W_V.float(),
                              model.W_O.float())  # [layer, head, d_model, d_head] (W_O: [layer, head, d_head, d_model])
        W_OV = W_V[0] @ W_O[0]  # [head, d_model, d_model]
        W_QK_T = W_K[1] @ W_Q[1].transpose(-1, -2)  # [head, d_model, d_model] = (W_Q W_K^T)^T
        score = _comp(W_OV[:, None], W_QK_T[None, :])  # [h1, h2]
    rand = random_comp_scores(cfg.d_model, cfg.d_head, samples, seed)  # [samples]
    base = float(rand.mean())
    table = lambda t: {f"L0H{a}": {f"L1H{b}": round(float(t[a, b]), 4) for b in range(cfg.n_heads)}  # noqa: E731
                       for a in range(cfg.n_heads)}
    return {"baseline": round(base, 4), "baseline_std": round(float(rand.std()), 4),
            "baseline_samples": samples, "baseline_seed": seed,
            "score": table(score), "ratio_to_baseline": table(score / base)}


def failures(s: InductionScores) -> list[str]:
    """The induction conditions that `s` does not meet (empty: all three hold)."""
    out = []
    if not float(s.prev_token[0].max()) >= PREV_MIN:
        out.append(f"no layer-0 previous-token head >= {PREV_MIN}: {s.prev_token[0].tolist()}")
    if not float(s.induction[1].max()) >= INDUCTION_MIN:
        out.append(f"no layer-1 induction head >= {INDUCTION_MIN}: {s.induction[1].tolist()}")
    if not s.loss_repeat < LOSS_REPEAT_MAX:
        out.append(f"loss on the repeated half {s.loss_repeat:.3f} >= {LOSS_REPEAT_MAX}")
    if not abs(s.loss_fresh - math.log(s.n_random)) <= FRESH_TOLERANCE:
        out.append(f"loss on first occurrences {s.loss_fresh:.3f} is not within {FRESH_TOLERANCE} "
                   f"of ln({s.n_random}) = {math.log(s.n_random):.3f}")
    return out


if __name__ == "__main__":
    from circuitry.sources import load_model

    ref = sys.argv[1] if len(sys.argv) > 1 else "builtin:attn-only-2l"
    m = load_model(ref)
    scores = measure(m, DATA["batch"], DATA["seq_len"], DATA["seed"]).as_dict()
    prev = [h for h in range(m.cfg.n_heads) if scores["prev_token"][f"L0H{h}"] >= PREV_MIN]
    print(json.dumps({"model": ref, "data": DATA, "scores": scores, "long_context": long_context(m),
                      "k_composition": k_composition(m, prev),
                      "k_composition_each": {f"L0H{h}": k_composition(m, [h]) for h in prev},
                      "k_composition_weights": k_composition_weights(m)}, indent=2))
