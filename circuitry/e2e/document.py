"""The document of a head's end-to-end circuits: plain numbers and token labels, as `circuitry e2e --json`
writes it and the console and HTML renderers draw it.

Token labels come from the model's tokenizer when it has one (`circuitry.figures.token_labels`,
as `circuitry show` labels tokens), else they are the ids (BOS named). Numbers that are
undefined are null: the copying score when the copying detector is not available, the
positional summary of a model without learned positions (with the reason beside it).
"""

from __future__ import annotations

from circuitry.e2e.circuits import EndToEnd
from circuitry.figures import token_labels
from circuitry.jsonable import finite_tree


def document(e2e: EndToEnd, k: int = 10) -> dict:
    """{"model", "head", "notes", "ov", "qk", "skip_trigrams", "copying", "positional", ...} for the top k."""
    top_ov, top_qk, trigrams = e2e.top_ov(k), e2e.top_qk(k), e2e.top_skip_trigrams(k)
    by_source = e2e.ov_by_source(k)
    ids = {t for p in top_ov for t in (p.source, p.output)} | {t for p in top_qk for t in (p.query, p.key)}
    ids |= {t for s in trigrams for t in (s.query, s.key, s.output)}
    ids |= {t for s, pairs in by_source for t in (s, *(p.output for p in pairs))}
    order = sorted(ids)
    label = dict(zip(order, token_labels(e2e.model, order)))

    def tok(role: str, t: int) -> dict:
        return {role: t, f"{role}_label": label[t]}

    cfg = e2e.model.cfg
    copying, why_not = e2e.copying_score, e2e.copying_reason
    diagonal = e2e.diagonal
    pos = e2e.positional
    doc = {
        "model": e2e.model_name,
        "head": e2e.name,
        "d_vocab": cfg.d_vocab,
        "top": k,
        "notes": list(e2e.notes),
        "ov": {
            "top_pairs": [{**tok("source", p.source), **tok("output", p.output), "value": p.value} for p in top_ov],
            "by_source": [{**tok("source", s), "outputs": [{**tok("output", p.output), "value": p.value}
                                                           for p in pairs]} for s, pairs in by_source],
        },
        "qk": {"top_pairs": [{**tok("query", p.query), **tok("key", p.key), "value": p.value} for p in top_qk]},
        "skip_trigrams": [{**tok("query", s.query), **tok("key", s.key), **tok("output", s.output),
                           "qk": s.qk, "ov": s.ov, "score": s.score} for s in trigrams],
        "copying": {"score": copying, "diagonal_top_of_row": diagonal.top_of_row,
                    "diagonal_top_of_column": diagonal.top_of_column, **({"reason": why_not} if why_not else {})},
        "positional": None if pos is None else pos.to_json(),
    }
    if pos is None:
        doc["positional_reason"] = e2e.positional_reason
    return finite_tree(doc)
