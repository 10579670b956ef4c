"""`end_to_end(model, head)`: a head's end-to-end QK and OV circuits over the vocabulary, read through
their low-rank factors (Elhage et al., "A Mathematical Framework for Transformer Circuits").

    QK circuit  W_E W_QK W_E^T  [query token, key token]: how much a query token attends to a key token
    OV circuit  W_E W_OV W_U    [source token, output token]: the logit of the output token raised when
                                the head attends to the source token ("if you see j, promote i")

(row-vector convention, W_QK = W_Q W_K^T, W_OV = W_V W_O). Both are products of a
[d_vocab, d_head] and a [d_head, d_vocab] factor (`circuitry.e2e.weights`); their top
entries are found row chunk by row chunk (`circuitry.e2e.topk`), never holding the
vocab x vocab matrix. They are the direct path: the embedding read by the head
straight from the residual stream, as the framework paper reads layer-0 heads.

Skip-trigrams "q ... j -> i": a query token q attends to a key token j, whose OV
output raises token i. Candidates: each query's top k keys by QK, each key's top k
outputs by OV; ranked by QK[q, j] * OV[j, i] among candidates with both positive.

Copying: the copying detector's score (Σλ / Σ|λ| over the OV circuit's eigenvalues,
through the plugin manager), and the fractions of tokens whose own entry is the
largest of their OV row (source j promotes j most) and of their OV column (output i
is promoted most by i).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitry.budget import require
from circuitry.e2e.positional import Positional, positional
from circuitry.e2e.topk import RowTop, chunk_rows, describe, row_topk
from circuitry.e2e.weights import F32, check_model, embed_factors, head_weights, position_factors, unembed_factor
from circuitry.errors import UsageError, did_you_mean
from circuitry.names import check_component, head_name


@dataclass(frozen=True)
class OVPair:
    """OV circuit entry: attending to `source` raises the logit of `output` by `value`."""

    source: int
    output: int
    value: float


@dataclass(frozen=True)
class QKPair:
    """QK circuit entry: the query token `query` scores the key token `key` `value`."""

    query: int
    key: int
    value: float


@dataclass(frozen=True)
class SkipTrigram:
    """`query ... key -> output`: QK[query, key] = qk, OV[key, output] = ov, score = qk * ov."""

    query: int
    key: int
    output: int
    qk: float
    ov: float
    score: float


@dataclass(frozen=True)
class Diagonal:
    """Fractions of tokens whose own OV entry is the largest of its row (top_of_row) or column (top_of_column)."""

    top_of_row: float
    top_of_column: float


def parse_head(name: str, cfg) -> tuple[int, int]:
    """(layer, head) of a head of the model, or the vocabulary's UsageError with a 'did you mean'."""
    try:
        comp = check_component(name, cfg, allow=("head",))
    except UsageError as exc:
        text = str(exc)
        if "did you mean" not in text:
            text += did_you_mean(str(name).strip().upper(), cfg.head_names())
        raise UsageError(text) from None
    return comp.layer, comp.head  # type: ignore[return-value]


def end_to_end(model, head: str, model_name: str | None = None) -> EndToEnd:
    """The end-to-end circuits of `head` ('L0H1') of `model` (see the module docstring)."""
    check_model(model)
    layer, h = parse_head(head, model.cfg)
    return EndToEnd(model, layer, h, model_name or model.source or model.cfg.name)


class EndToEnd:
    """The QK and OV circuits of one head; each ranking is computed on first use and kept."""

    def __init__(self, model, layer: int, head: int, model_name: str) -> None:
        cfg = model.cfg
        self.model, self.layer, self.head, self.model_name = model, layer, head, model_name
        self.name = head_name(layer, head)
        V, dh = cfg.d_vocab, cfg.d_head
        n_pos = cfg.n_ctx if cfg.positional == "learned" else 0
        require(F32 * (4 * V * dh + 2 * n_pos * dh + cfg.d_model * 4 * dh),
                f"the end-to-end factors of {self.name} (4 x [{V}, {dh}] float32)")
        with torch.inference_mode():
            hw = head_weights(model, layer, head)
            self.Q, self.K, self.V = embed_factors(model, [hw.W_Q, hw.W_K, hw.W_V])  # [d_vocab, d_head] each
            self.O = unembed_factor(model, hw.W_O)  # [d_head, d_vocab]
            self._pos_factors = position_factors(model, hw)
        self.notes = hw.notes
        self._ov: RowTop | None = None
        self._qk: RowTop | None = None
        self._positional: Positional | None = None
        self._diagonal: Diagonal | None = None
        self._copying: tuple[float | None, str] | None = None

    # ------------------------------------------------------------- row rankings
    def ov_rows(self, k: int) -> RowTop:
        """Each source token's top k output tokens [d_vocab, k]."""
        if self._ov is None or self._ov.values.shape[1] < min(k, self.model.cfg.d_vocab):
            with torch.inference_mode():
                self._ov = row_topk(self.V, self.O, k, self._what("OV"))
        return self._ov

    def qk_rows(self, k: int) -> RowTop:
        """Each query token's top k key tokens [d_vocab, k]."""
        if self._qk is None or self._qk.values.shape[1] < min(k, self.model.cfg.d_vocab):
            with torch.inference_mode():
                self._qk = row_topk(self.Q, self.K.T, k, self._what("QK"))
        return self._qk

    def _what(self, kind: str) -> str:
        V = self.model.cfg.d_vocab
        return f"the {kind} circuit of {self.name} {describe(V, V)}"

    # ------------------------------------------------------------- rankings
    def top_ov(self, k: int = 10) -> list[OVPair]:
        """The k largest entries of the OV circuit, largest first."""
        vals, rows, cols = self.ov_rows(k).top(k)
        return [OVPair(int(r), int(c), float(v)) for v, r, c in zip(vals.tolist(), rows.tolist(), cols.tolist())]

    def top_qk(self, k: int = 10) -> list[QKPair]:
        """The k largest entries of the QK circuit, largest first."""
        vals, rows, cols = self.qk_rows(k).top(k)
        return [QKPair(int(r), int(c), float(v)) for v, r, c in zip(vals.tolist(), rows.tolist(), cols.tolist())]

    def ov_by_source(self, k: int = 10, sources: list[int] | None = None) -> list[tuple[int, list[OVPair]]]:
        """(source, its top k outputs) for `sources`, or for the k sources whose best output is largest."""
        rt = self.ov_rows(k)
        if sources is None:
            sources = torch.topk(rt.values[:, 0], min(k, rt.values.shape[0])).indices.tolist()
        out = []
        for s in sources:
            pairs = [OVPair(int(s), int(i), float(v)) for v, i in zip(rt.values[s, :k].tolist(),
                                                                       rt.indices[s, :k].tolist())]
            out.append((int(s), pairs))
        return out

    def top_skip_trigrams(self, k: int = 10) -> list[SkipTrigram]:
        """The k strongest skip-trigrams among the candidates (see the module docstring), strongest first."""
        qk, ov = self.qk_rows(k), self.ov_rows(k)
        kq, ko = min(k, qk.values.shape[1]), min(k, ov.values.shape[1])
        n = qk.values.shape[0]
        best = torch.empty(0, device=qk.values.device)
        where = torch.empty(0, dtype=torch.long, device=qk.values.device)  # flat index into [query, kq, ko]
        step = chunk_rows(kq * ko, f"the skip-trigram candidates of {self.name}")
        for q0 in range(0, n, step):  # query chunks: [chunk, kq, ko] candidates at a time
            q_val, keys = qk.values[q0:q0 + step, :kq].clamp_min(0), qk.indices[q0:q0 + step, :kq]
            score = (q_val[:, :, None] * ov.values[keys, :ko].clamp_min(0)).reshape(-1)
            top = torch.topk(score, min(k, score.numel()))
            best, order = torch.topk(torch.cat([best, top.values]), min(k, len(best) + len(top.values)))
            where = torch.cat([where, top.indices + q0 * kq * ko])[order]
        out = []
        for s, p in zip(best.tolist(), where.tolist()):
            if s <= 0:
                break
            q, rest = divmod(p, kq * ko)
            j, o = divmod(rest, ko)
            key = int(qk.indices[q, j])
            out.append(SkipTrigram(q, key, int(ov.indices[key, o]), float(qk.values[q, j]),
                                   float(ov.values[key, o]), s))
        return out

    # ------------------------------------------------------------- scores
    @property
    def copying_score(self) -> float | None:
        """The copying detector's score of this head (None when the detector is not available)."""
        return self._copying_result()[0]

    @property
    def copying_reason(self) -> str:
        """Why `copying_score` is None ('' when it is not)."""
        return self._copying_result()[1]

    def _copying_result(self) -> tuple[float | None, str]:
        if self._copying is None:
            from circuitry.scan import run_detectors, select_detectors

            try:
                heads, _ = run_detectors(self.model, None, select_detectors(["copying"]))
                self._copying = (float(heads["copying"][self.layer, self.head]), "")
            except UsageError as exc:
                self._copying = (None, f"no copying score: {exc}")
        return self._copying

    @property
    def diagonal(self) -> Diagonal:
        if self._diagonal is None:
            ids = torch.arange(self.model.cfg.d_vocab, device=self.V.device)
            with torch.inference_mode():
                cols = row_topk(self.O.T, self.V.T, 1, self._what("transposed OV"))  # each output's top source
            rows = self.ov_rows(1)
            self._diagonal = Diagonal(float((rows.indices[:, 0] == ids).float().mean()),
                                      float((cols.indices[:, 0] == ids).float().mean()))
        return self._diagonal

    @property
    def positional(self) -> Positional | None:
        """The positional preference (None when the model has no learned position embedding)."""
        if self._positional is None and not isinstance(self._pos_factors, str):
            cfg = self.model.cfg
            with torch.inference_mode():
                self._positional = positional(*self._pos_factors, cfg.scale, cfg.window(self.layer),
                                              cfg.attn_scores_soft_cap,
                                              what=f"the positional QK circuit of {self.name} "
                                                   f"[{cfg.n_ctx} x {cfg.n_ctx}]")
        return self._positional

    @property
    def positional_reason(self) -> str:
        """Why `positional` is None ('' when it is not)."""
        return self._pos_factors if isinstance(self._pos_factors, str) else ""
