"""The `text` dataset: prompts tokenized with the model's own tokenizer.

`data: {name: text, text: "..."}` (one prompt), `text: [..., ...]` in a spec
(several prompts), `text:path=prompts.txt` (one prompt per line) or a string
split at `separator`. Each prompt is tokenized without special tokens, then
the tokenizer's BOS token is prepended when it has one (prepend_bos). `repeat`
tiles each prompt's tokens, which makes repeated text for induction heads.
All prompts must have the same number of tokens (truncate=true cuts them to
the shortest): no padding, because padding tokens would repeat and count as
copies in the detectors. seed 0 keeps the prompts in the order given; another
seed shuffles them, so the default reference data of a spec (seed + 1) holds
the same prompts in another order. The predictable mask marks positions whose bigram
occurred before in the row; fresh marks positions whose next token is new.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from circuitry.data import TokenBatch, predictable_from_repeats
from circuitry.errors import UsageError


def _prompts(text: Any, path: str, separator: str) -> list[str]:
    prompts: list[str] = []
    if text is not None and text != "":
        if isinstance(text, str):
            prompts += text.split(separator) if separator else [text]
        elif isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
            prompts += list(text)
        else:
            raise UsageError(f"dataset 'text': text must be a string or a list of strings, got {text!r}")
    if path:
        file = Path(path).expanduser()
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"dataset 'text': cannot read {file} ({exc})") from None
        prompts += [line for line in lines if line.strip()]
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise UsageError("dataset 'text' needs prompts: text=... (a string, or a list in a spec) or "
                         "path=FILE (one prompt per line)")
    return prompts


def fresh_from_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """[batch, pos] True at i when token i+1 does not occur in tokens 0..i of its row."""
    b, n = tokens.shape
    fresh = torch.zeros(b, n, dtype=torch.bool)
    for r, row in enumerate(tokens.tolist()):
        seen: set[int] = set()
        for i in range(n - 1):
            seen.add(row[i])
            fresh[r, i] = row[i + 1] not in seen
    return fresh


def text_batch(model, *, text: Any = None, path: str = "", separator: str = "", prepend_bos: bool = True,
               repeat: int = 1, truncate: bool = False, seed: int = 0) -> TokenBatch:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        why = getattr(model, "tokenizer_note", "") or "models from this source carry none"
        raise UsageError(f"dataset 'text' needs a model with a tokenizer (hf: models bring theirs); "
                         f"{model.source or model.cfg.name} has none: {why}")
    if repeat < 1:
        raise UsageError(f"dataset 'text': repeat must be >= 1, got {repeat}")
    prompts = _prompts(text, path, separator)
    bos = tok.bos_token_id if prepend_bos else None
    rows = []
    for p in prompts:
        ids = list(tok.encode(p, add_special_tokens=False))
        length = len(ids) * repeat + (bos is not None)
        if length > model.cfg.n_ctx:  # before the prompt is tiled: repeat may be huge
            raise UsageError(f"dataset 'text': a prompt of {len(ids)} tokens repeated {repeat}x makes {length} "
                             f"positions, more than the model's context of {model.cfg.n_ctx}")
        rows.append(([bos] if bos is not None else []) + ids * repeat)
    lengths = sorted({len(r) for r in rows})
    if len(lengths) > 1:
        if not truncate:
            raise UsageError(f"dataset 'text': the prompts tokenize to different lengths {lengths} (with "
                             f"repeat {repeat}); use prompts of equal token length or truncate=true")
        rows = [r[: lengths[0]] for r in rows]
    if lengths[0] < 2:
        raise UsageError("dataset 'text': prompts need at least 2 tokens")
    if seed:  # the same prompts in another order: reference data for resample ablations
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(int(seed))).tolist()
        rows = [rows[i] for i in order]
    tokens = torch.tensor(rows, dtype=torch.long)  # [batch, pos]
    pred = predictable_from_repeats(tokens)
    period = (len(rows[0]) - (bos is not None)) // repeat if repeat > 1 and len(lengths) == 1 else None
    return TokenBatch(tokens, pred, fresh_from_tokens(tokens), period,
                      f"text ({len(rows)} prompt{'s' if len(rows) > 1 else ''} x {tokens.shape[1]} tokens"
                      f"{f', repeated {repeat}x' if repeat > 1 else ''})", _special_warnings(tok, tokens, bos))


MOSTLY = 0.5  # above this share of unknown or BOS tokens in the text, the data is probably not what was meant


def _special_warnings(tok, tokens: torch.Tensor, bos: int | None) -> tuple[str, ...]:
    """A warning when most tokens of the text are the tokenizer's unknown or BOS token."""
    body = tokens[:, 1:] if bos is not None else tokens  # [batch, pos]: without the prepended BOS
    special = {t for t in (getattr(tok, "unk_token_id", None), getattr(tok, "bos_token_id", None))
               if isinstance(t, int)}
    if body.numel() == 0 or not special:
        return ()
    n = int(sum((body == t).sum() for t in special))
    if n <= MOSTLY * body.numel():
        return ()
    return (f"dataset 'text': {n} of {body.numel()} tokens of the text are the tokenizer's unknown or BOS token "
            f"(is the text in the tokenizer's language and alphabet?)",)
