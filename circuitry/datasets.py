"""Data references -> token batches, through the dataset plugins.

A data reference is `NAME` or `NAME:key=value,key=value` (`repeated:seq_len=20,seed=3`),
a mapping `{"name": ..., **params}` (from specs), or a path to a token file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from circuitry.data import TokenBatch
from circuitry.errors import UsageError, did_you_mean, unknown_name
from circuitry.model import HookedTransformer

DEFAULT_DATA = "repeated"


def parse_data_ref(ref: str) -> tuple[str, dict[str, str]]:
    """'repeated:seq_len=20,seed=3' -> ('repeated', {'seq_len': '20', 'seed': '3'})."""
    if Path(ref).suffix in (".txt", ".npy", ".pt") and ":" not in ref.split("/")[0]:
        return "file", {"path": ref}
    name, _, rest = ref.partition(":")
    params: dict[str, str] = {}
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"data {ref!r}: expected key=value, got {item!r}")
        params[key.strip()] = value.strip()
    return name.strip(), params


def _convert(dataset: str, key: str, value: Any, default: Any) -> Any:
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
        if isinstance(value, str) and value.lstrip("-").isdigit():
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


def make_batch(model: HookedTransformer, ref: str | Mapping[str, Any] | None = None) -> TokenBatch:
    """Generate the token batch a data reference names, for this model."""
    from circuitry.plugins import get_manager

    if ref is None:
        ref = DEFAULT_DATA
    if isinstance(ref, str):
        name, params = parse_data_ref(ref)
    else:
        params = dict(ref)
        name = str(params.pop("name", DEFAULT_DATA))
    datasets = get_manager().datasets()
    if name not in datasets:
        raise UsageError(unknown_name("dataset", name, datasets))
    ds = datasets[name]
    values = dict(ds.params)
    for key, value in params.items():
        if key not in ds.params:
            raise UsageError(f"dataset {name!r} has no parameter {key!r}{did_you_mean(key, ds.params)}; "
                             f"valid: {', '.join(ds.params) or '(none)'}")
        values[key] = _convert(name, key, value, ds.params[key])
    batch = ds.generate(model, **values)
    if not isinstance(batch, TokenBatch):
        raise UsageError(f"dataset {name!r} returned {type(batch).__name__}, expected TokenBatch")
    model.check_tokens(batch.tokens)
    return batch
