"""`Spec`: a circuit spec made in Python, from YAML (a file or text) or from a mapping built in code.

    spec = Spec.from_yaml("specs/induction.yaml")          # a path, or YAML text
    spec = Spec.from_dict({"apiVersion": "circuitry/v1", "kind": "CircuitSpec", ...})
    report = spec.verify()                                  # circuitry.verify.verify(spec)

A `Spec` is a `CircuitSpec` (everything that takes a spec takes it), validated
by the same schema and checks as `circuitry verify`. Problems of YAML are
located at file:line:col; a mapping has no lines, so its problems name the
key path instead (`checks[2].expect: ...`). Every problem is raised at once.
A mapping holds plain values only: strings, numbers, booleans, None, lists
(or tuples) and mappings with string keys; paths (`pathlib.Path`) are written
as strings. Relative paths in a mapping are read from the working directory.
"""

from __future__ import annotations

import copy
import numbers
import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from circuitry.spec.format import CircuitSpec, _Problems, _semantics, load_spec, spec_schema
from circuitry.spec.loader import MAX_DEPTH, MAX_NODES, Document, SpecError, raise_all
from circuitry.spec.schema import problems

DICT_NAME = "<dict>"  # the document name of a spec built from a mapping (it has no file and no lines)
YAML_SUFFIXES = (".yaml", ".yml")


class Spec(CircuitSpec):
    """A validated circuit spec (a `CircuitSpec`) with constructors for notebooks; see the module docstring."""

    @classmethod
    def from_yaml(cls, path_or_text: str | os.PathLike, manager: Any = None) -> Spec:
        """The spec in a YAML file or in YAML text. A `Path`, or a one-line string without ': ' or '{' (or one
        that ends in .yaml / .yml), is a path; anything else is YAML text."""
        if _is_text(path_or_text):
            return cls._of(load_spec(text=str(path_or_text), manager=manager))
        return cls._of(load_spec(path=Path(path_or_text), manager=manager))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], manager: Any = None) -> Spec:
        """The spec a mapping describes (the keys of the YAML format); errors name the key path."""
        if not isinstance(d, Mapping):
            raise SpecError(None, (), f"a spec is a mapping (apiVersion, kind, metadata, model, circuit, checks), "
                                      f"got {type(d).__name__}")
        doc = Document(plain(d), DICT_NAME, {}, {})
        found = _Problems(problems(doc, spec_schema(manager)))
        spec = _semantics(doc, found, manager)
        raise_all(found.errors)
        assert spec is not None
        # a mapping has no marks: its warnings start at the key path
        warnings = tuple(w.removeprefix("None: ") for w in spec.warnings)
        return cls._of(spec, warnings=warnings)

    @classmethod
    def _of(cls, spec: CircuitSpec, **changes: Any) -> Spec:
        return cls(**{**{f.name: getattr(spec, f.name) for f in fields(CircuitSpec)}, **changes})

    def to_dict(self) -> dict:
        """The spec's document as plain data (a deep copy): what `from_dict` reads back."""
        return copy.deepcopy(self.document.data)

    def to_yaml(self) -> str:
        """The spec's document as YAML text (comments of a YAML source are not kept)."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def verify(self, model: Any = None, **options: Any) -> Any:
        """Check every claim (`circuitry.api.verify`): model None (the spec's), a model reference or a
        `HookedTransformer`; the options of `circuitry.verify.verify` (data, device, dtype, keep_patterns ...)."""
        from circuitry.api import verify

        return verify(self, model, **options)


def _is_text(value: str | os.PathLike) -> bool:
    if not isinstance(value, str):
        if isinstance(value, os.PathLike):
            return False
        raise SpecError(None, (), f"Spec.from_yaml takes a path or YAML text, got {type(value).__name__}")
    one_line = "\n" not in value and "\r" not in value
    if one_line and value.strip().lower().endswith(YAML_SUFFIXES):
        return False
    return not one_line or ": " in value or value.lstrip().startswith("{")


def plain(value: Any) -> Any:
    """A copy of a mapping built in Python with only the values YAML builds (see the module docstring); a
    SpecError at the key path of anything else."""
    count = [0]

    def walk(v: Any, path: tuple, open_ids: tuple) -> Any:
        count[0] += 1
        if count[0] > MAX_NODES:
            raise SpecError(None, path, f"document too large (over {MAX_NODES} values)")
        if len(open_ids) >= MAX_DEPTH:
            raise SpecError(None, path, f"nesting too deep (over {MAX_DEPTH} levels of lists and mappings)")
        if v is None or isinstance(v, (str, bool)):
            return v
        if isinstance(v, numbers.Integral):
            return int(v)
        if isinstance(v, numbers.Real):
            return float(v)
        if isinstance(v, os.PathLike):
            return os.fspath(v)
        if isinstance(v, (Mapping, list, tuple)):
            if id(v) in open_ids:
                raise SpecError(None, path, "this value contains itself")
            inner = (*open_ids, id(v))
            if isinstance(v, Mapping):
                out = {}
                for k, item in v.items():
                    if not isinstance(k, str):
                        raise SpecError(None, path, f"mapping keys must be strings, got {type(k).__name__} {k!r}")
                    out[k] = walk(item, (*path, k), inner)
                return out
            return [walk(item, (*path, i), inner) for i, item in enumerate(v)]
        raise SpecError(None, path, f"a value of type {type(v).__name__}: a spec holds plain values only (strings, "
                                    f"numbers, booleans, None, lists and mappings)")

    return walk(value, (), ())
