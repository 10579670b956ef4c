"""Text <-> tokens for a model that carries a tokenizer, as TransformerLens's `to_tokens` / `to_str_tokens` /
`to_string` do.

The tokenizer is the model's `tokenizer`: a Hugging Face tokenizer (hf: models) or circuitry's
`WordTokenizer` (the shipped models that have one). `prepend_bos` (default: whenever the model has a
BOS token) puts the BOS id in front of each text; the tokenizer is never asked to add special tokens
itself, so a tokenizer that adds BOS on its own does not add it twice. Several texts are padded on the
right with the pad token (else the end-of-text token, else 0), as TransformerLens pads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from circuitry.errors import UsageError


def tokenizer_of(model: Any) -> Any:
    """The model's tokenizer, or a UsageError saying why it has none."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        why = getattr(model, "tokenizer_note", "") or "its model source provides none"
        raise UsageError(f"model {model.cfg.name!r} has no tokenizer ({why}); pass token ids "
                         f"(a LongTensor [batch, pos]) instead of text")
    return tok


def bos_id(model: Any) -> int | None:
    """The model's BOS token id: its config's, else its tokenizer's (None when it has none)."""
    if model.cfg.bos_token_id is not None:
        return int(model.cfg.bos_token_id)
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    return bos if isinstance(bos, int) else None


def is_text(x: object) -> bool:
    """A string, or a non-empty list or tuple of strings."""
    return isinstance(x, str) or (isinstance(x, (list, tuple)) and bool(x) and all(isinstance(t, str) for t in x))


def _ids(model: Any, text: str, prepend_bos: bool | None) -> list[int]:
    if not isinstance(text, str):
        raise UsageError(f"text to tokenize must be a string, got {type(text).__name__}")
    ids = [int(i) for i in tokenizer_of(model).encode(text, add_special_tokens=False)]
    bos = bos_id(model)
    if prepend_bos is None:
        prepend_bos = bos is not None
    if prepend_bos:
        if bos is None:
            raise UsageError(f"prepend_bos=True, but model {model.cfg.name!r} has no BOS token")
        ids = [bos, *ids]
    return ids


def to_tokens(model: Any, text: str | Sequence[str], prepend_bos: bool | None = None,
              move_to_device: bool = True) -> torch.Tensor:
    """Token ids [batch, pos] of one text (batch 1) or several (padded on the right)."""
    texts = [text] if isinstance(text, str) else list(text)
    if not texts or not is_text(texts):
        raise UsageError("to_tokens takes a string or a non-empty list of strings")
    rows = [_ids(model, t, prepend_bos) for t in texts]
    if not all(rows):
        raise UsageError("text has no tokens (an empty string without a BOS token)")
    n = max(map(len, rows))
    tokens = torch.full((len(rows), n), _pad_id(model), dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
    if model.cfg.positional == "learned" and n > model.cfg.n_ctx:
        raise UsageError(f"text of {n} tokens is longer than the context ({model.cfg.n_ctx})")
    return tokens.to(model.device) if move_to_device else tokens


def _pad_id(model: Any) -> int:
    tok = tokenizer_of(model)
    for attr in ("pad_token_id", "eos_token_id"):
        v = getattr(tok, attr, None)
        if isinstance(v, int):
            return v
    return 0


def _decode(tok: Any, ids: list[int]) -> str:
    if hasattr(tok, "batch_decode"):  # Hugging Face: no clean-up of spaces, as TransformerLens decodes
        return str(tok.decode(ids, clean_up_tokenization_spaces=False))
    return str(tok.decode(ids))


def _id_rows(tokens: Any) -> list[list[int]] | list[int]:
    """Token ids as a list (1-d) or a list of lists (2-d) of ints."""
    t = tokens if isinstance(tokens, torch.Tensor) else torch.as_tensor(tokens)
    if t.is_floating_point() or t.is_complex() or t.ndim > 2:
        raise UsageError(f"tokens must be integer ids of shape [pos] or [batch, pos], got {tuple(t.shape)} "
                         f"{str(t.dtype).removeprefix('torch.')}")
    return t.reshape(1).tolist() if t.ndim == 0 else t.tolist()


def to_string(model: Any, tokens: Any) -> str | list[str]:
    """The text of token ids: a string for [pos] (or one id), a list of strings for [batch, pos]."""
    tok = tokenizer_of(model)
    rows = _id_rows(tokens)
    if rows and isinstance(rows[0], list):
        return [_decode(tok, row) for row in rows]  # type: ignore[arg-type]
    return _decode(tok, rows)  # type: ignore[arg-type]


def to_str_tokens(model: Any, tokens: Any, prepend_bos: bool | None = None) -> list[str] | list[list[str]]:
    """Each token as its own string: of a text (tokenized first), of ids [pos] (or [1, pos]), or of a list
    of either (a list of lists)."""
    tok = tokenizer_of(model)
    if isinstance(tokens, (list, tuple)) and tokens and not isinstance(tokens[0], int):
        return [to_str_tokens(model, t, prepend_bos) for t in tokens]  # type: ignore[misc,return-value]
    if isinstance(tokens, str):
        ids = _ids(model, tokens, prepend_bos)
    else:
        rows = _id_rows(tokens)
        if rows and isinstance(rows[0], list):
            if len(rows) != 1:
                raise UsageError(f"to_str_tokens takes one sequence of ids, got a batch of {len(rows)} "
                                 f"(pass the rows one at a time, or a list of them)")
            rows = rows[0]
        ids = rows  # type: ignore[assignment]
    return [_decode(tok, [i]) for i in ids]  # type: ignore[list-item]
