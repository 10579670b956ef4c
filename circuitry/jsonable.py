"""Strict JSON for every document circuitry writes: no NaN, no Infinity.

Python's `json` writes `NaN` and `Infinity` by default, which strict parsers
(JavaScript's JSON.parse, jq, most languages) reject. circuitry writes JSON
with `allow_nan=False` everywhere, through `strict_dumps`. A number that is
undefined (a ratio whose denominator is zero, a detector that gave NaN) is
written as `null`; each record's `to_json` turns such values into `None`
with `finite_or_none` (or a whole nested value with `finite_tree`) and its
docstring says what `null` means there.

- `finite_or_none(x)`: a float (ints stay ints), or None for None, NaN, +-inf;
- `finite_tree(value)`: the same for every number in nested dicts, lists and
  tuples (tuples become lists; 0-d tensors and numpy scalars become numbers);
- `nonfinite_paths(value)`: the key paths (`$.checks[2].value`) of the
  non-finite numbers in a document;
- `strict_dumps(doc, indent=2)`: `json.dumps(doc, allow_nan=False)`; a
  non-finite number or a value JSON cannot hold raises `JSONValueError`
  (exit code 3, an internal error) naming its key path.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

from circuitry.errors import CircuitryError

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class JSONValueError(CircuitryError):
    """A document holds a value strict JSON cannot hold (an internal error: exit code 3)."""


def _number(x: Any) -> Any:
    """A 0-d tensor or numpy scalar as a Python number; anything else unchanged."""
    if hasattr(x, "item") and getattr(x, "ndim", None) == 0:
        return x.item()
    return x


def finite_or_none(x: Any) -> float | int | None:
    """x as a finite number, or None when x is None, NaN or infinite (ints and bools stay as they are)."""
    x = _number(x)
    if x is None or isinstance(x, int):
        return x
    x = float(x)
    return x if math.isfinite(x) else None


def finite_tree(value: Any) -> Any:
    """value with every non-finite float in nested dicts, lists and tuples replaced by None; tensors
    become numbers or nested lists, mapping keys strings."""
    value = _number(value)
    if hasattr(value, "tolist") and getattr(value, "ndim", 0) > 0:
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): finite_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_tree(v) for v in value]
    return value


def _child(path: str, key: Any) -> str:
    """The key path of a dict entry or list item below `path`."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if isinstance(key, str) and _IDENT.match(key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(str(key))}]"


def _walk(value: Any, path: str, above: frozenset = frozenset()) -> Iterator[tuple[str, Any]]:
    """(key path, leaf) of every leaf of a nested document; dict keys that are floats count as leaves
    (a container inside itself is not followed)."""
    if isinstance(value, (Mapping, list, tuple)):
        if id(value) in above:
            return
        above = above | {id(value)}
    if isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(k, float):
                yield f"{path} (key {k!r})", k
            yield from _walk(v, _child(path, k), above)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _walk(v, _child(path, i), above)
    else:
        yield path, value


def _bad(leaf: Any) -> str | None:
    """Why strict JSON cannot hold a leaf, or None when it can."""
    if leaf is None or isinstance(leaf, (str, bool, int)):
        return None
    if isinstance(leaf, float):
        return None if math.isfinite(leaf) else (f"the number {leaf!r} (strict JSON has no NaN or Infinity; "
                                                 f"the record's to_json must write undefined numbers as null)")
    return f"a {type(leaf).__module__}.{type(leaf).__qualname__}, which JSON cannot hold"


def nonfinite_paths(value: Any, root: str = "$") -> list[str]:
    """Key paths of the NaN and infinite floats in a nested document."""
    return [p for p, leaf in _walk(value, root) if isinstance(leaf, float) and not math.isfinite(leaf)]


def strict_dumps(doc: Any, indent: int | None = 2, **kwargs: Any) -> str:
    """JSON text of doc with allow_nan=False; JSONValueError names the key path of a value it cannot hold."""
    try:
        return json.dumps(doc, indent=indent, allow_nan=False, **kwargs)
    except (ValueError, TypeError) as exc:
        for path, leaf in _walk(doc, "$"):
            why = _bad(leaf)
            if why is not None:
                raise JSONValueError(f"internal error: not strict JSON: at {path}, {why}") from None
        raise JSONValueError(f"internal error: not strict JSON: {exc}") from None
