"""Data references -> token batches, through the dataset plugins.

A data reference is `NAME` or `NAME:key=value,key=value` (`repeated:seq_len=20,seed=3`),
a mapping `{"name": ..., **params}` (from specs), or a path to a token file.
Every command that takes `--data` reads it with `parse_data_ref`. A value that
holds commas or '=' is quoted: `text:text="Hello, world",repeat=2` (single or
double quotes; a backslash escapes the next character).

Before a dataset plugin generates anything, its parameters are checked
(names, types, limits) and, when the plugin can tell the shape of the batch,
the positions are checked against the model's context and the memory of the
clean run against the memory budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from circuitry.data import TokenBatch
from circuitry.errors import UsageError
from circuitry.model import HookedTransformer

DEFAULT_DATA = "repeated"
TOKEN_FILE_SUFFIXES = (".txt", ".npy", ".pt")


Chars = list[tuple[str, bool]]  # characters of a parameter, each marked True when it was quoted


def _split_params(ref: str, rest: str) -> list[Chars]:
    """The parameters of 'a=1, text="x, y"', split at commas outside quotes, quotes removed."""
    items: list[Chars] = [[]]
    quote, i = None, 0
    while i < len(rest):
        ch = rest[i]
        if ch == "\\" and i + 1 < len(rest):
            items[-1].append((rest[i + 1], True))
            i += 1
        elif quote:
            if ch == quote:
                quote = None
            else:
                items[-1].append((ch, True))
        elif ch in "\"'":
            quote = ch
        elif ch == ",":
            items.append([])
        else:
            items[-1].append((ch, False))
        i += 1
    if quote:
        raise UsageError(f"data {ref!r}: a {quote} quote is not closed")
    return items


def _text(chars: Chars) -> str:
    """The characters as text, without the whitespace around them that was not quoted."""
    start, end = 0, len(chars)
    while start < end and not chars[start][1] and chars[start][0].isspace():
        start += 1
    while end > start and not chars[end - 1][1] and chars[end - 1][0].isspace():
        end -= 1
    return "".join(c for c, _ in chars[start:end])


def parse_data_ref(ref: str) -> tuple[str, dict[str, str]]:
    """'repeated:seq_len=20,seed=3' -> ('repeated', {'seq_len': '20', 'seed': '3'}); a token file's path ->
    ('file', {'path': PATH})."""
    if Path(ref).suffix in TOKEN_FILE_SUFFIXES and ":" not in ref.split("/")[0]:
        return "file", {"path": ref}
    name, _, rest = ref.partition(":")
    params: dict[str, str] = {}
    for chars in _split_params(ref, rest):
        if not _text(chars):
            continue
        eq = next((i for i, (c, quoted) in enumerate(chars) if c == "=" and not quoted), None)
        if eq is None:
            raise UsageError(f"data {ref!r}: expected key=value, got {_text(chars)!r} (quote values that hold "
                             f"commas: text=\"a, b\")")
        params[_text(chars[:eq])] = _text(chars[eq + 1:])
    if not name.strip():
        raise UsageError(f"data {ref!r}: expected NAME or NAME:key=value,... (a dataset such as {DEFAULT_DATA})")
    return name.strip(), params


def _convert(dataset: str, key: str, value: Any, default: Any) -> Any:
    """A command-line string converted to the type of the parameter's default (values from specs are typed)."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes"):
            return True
        if str(value).lower() in ("0", "false", "no"):
            return False
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit() and len(value) < 40:
            return int(value)
    elif isinstance(default, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    elif isinstance(default, str):
        return str(value)
    else:
        return value
    raise UsageError(f"data {dataset!r}: parameter {key!r} must be of type {type(default).__name__}, "
                     f"got {value!r}")


def resolve(ref: str | Mapping[str, Any] | None, manager: Any = None) -> tuple[Any, dict[str, Any]]:
    """(the dataset record, every parameter with defaults filled in, typed and within limits)."""
    from circuitry.plugins import get_manager
    from circuitry.spec.format import data_param_problem

    if ref is None:
        ref = DEFAULT_DATA
    if isinstance(ref, str):
        name, params = parse_data_ref(ref)
    else:
        params = dict(ref)
        name = str(params.pop("name", DEFAULT_DATA))
    ds = (manager or get_manager()).get("circuitry_datasets", name, "dataset")
    values = dict(ds.params)
    for key, value in params.items():
        if key in ds.params:
            value = _convert(name, key, value, ds.params[key])
        problem = data_param_problem(ds, key, value)
        if problem:
            raise UsageError(problem)
        values[key] = value
    return ds, values


def check_shape(model: HookedTransformer, ds: Any, values: dict[str, Any]) -> None:
    """Refuse, before generating, data longer than the model's context or a clean run over the memory budget."""
    if ds.shape is None:
        return
    from circuitry.budget import require, run_bytes

    batch, pos = ds.shape(model, **values)
    if pos > model.cfg.n_ctx:
        raise UsageError(f"dataset {ds.name!r}: sequences of {pos} positions are longer than the model's context "
                         f"of {model.cfg.n_ctx}")
    require(run_bytes(model.cfg, batch, pos), f"dataset {ds.name!r}: a run on {batch} x {pos} tokens")


def make_batch(model: HookedTransformer, ref: str | Mapping[str, Any] | None = None,
               manager: Any = None) -> TokenBatch:
    """Generate the token batch a data reference names, for this model."""
    ds, values = resolve(ref, manager)
    check_shape(model, ds, values)
    batch = ds.generate(model, **values)
    model.check_tokens(batch.tokens)
    from circuitry.diagnostics import warn

    trained = getattr(model, "trained_positions", None)
    if trained is not None and batch.tokens.shape[1] > trained:
        warn(f"the data has {batch.tokens.shape[1]} positions, but {model.source or model.cfg.name} was trained "
             f"on shorter sequences: its circuits are reliable only in the first {trained} positions "
             f"(see its model card)")
    for message in batch.warnings:
        warn(message)
    return batch
