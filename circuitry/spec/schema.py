"""A small schema language: one source of truth for spec validation and the JSON Schema.

Types: `Str`, `Int`, `Num`, `Bool`, `ExpectT` (an expectation), `Obj` (named
fields, unknown keys rejected with a suggestion), `ListOf`, `MapOf`, `AnyOf`
and `Tagged` (a mapping whose `kind` picks the variant). `problems(doc,
schema)` lists every problem with its file:line:col (`validate` raises them
all together); `to_json_schema` writes the same rules as JSON Schema (draft
2020-12) for editors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from circuitry.errors import UsageError, did_you_mean
from circuitry.spec.expect import PATTERN as EXPECT_PATTERN
from circuitry.spec.expect import SYNTAX, ExpectationError, parse_expectation
from circuitry.spec.loader import Document, Path_, SpecError, raise_all

Choices = Callable[[], list[str]]  # names known only at run time (plugins)


@dataclass(frozen=True)
class Str:
    doc: str = ""
    choices: tuple[str, ...] | None = None
    dynamic: Choices | None = None  # e.g. registered detector names
    pattern: str | None = None
    pattern_doc: str = ""
    what: str = "value"  # in messages: "unknown detector 'x'"
    check: Callable[[str], Any] | None = None  # raises UsageError with the message for a bad value


@dataclass(frozen=True)
class Int:
    doc: str = ""
    minimum: int | None = None
    maximum: int | None = None


@dataclass(frozen=True)
class Num:
    doc: str = ""


@dataclass(frozen=True)
class Bool:
    doc: str = ""


@dataclass(frozen=True)
class ExpectT:
    doc: str = f"an expectation: {SYNTAX}"


@dataclass(frozen=True)
class Field:
    type: Any
    required: bool = False
    doc: str = ""


@dataclass(frozen=True)
class Obj:
    fields: Mapping[str, Field]
    doc: str = ""
    extra: Any = None  # schema of values under keys not in `fields` (None: unknown keys are errors)


@dataclass(frozen=True)
class ListOf:
    item: Any
    doc: str = ""
    min_items: int = 0


@dataclass(frozen=True)
class MapOf:
    value: Any
    doc: str = ""
    key: Str | None = None


@dataclass(frozen=True)
class AnyOf:
    options: tuple[Any, ...]
    doc: str = ""


@dataclass(frozen=True)
class Tagged:
    """A mapping with a discriminating key; each variant is an `Obj`."""

    key: str
    variants: Mapping[str, Obj]
    doc: str = ""
    common: Mapping[str, Field] = field(default_factory=dict)
    lookup: Callable[[str], Any] | None = None  # raises UsageError explaining a tag that is not a variant


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "mapping"}.get(type(value), type(value).__name__)


def _accepts_type(schema: Any, value: Any) -> bool:
    """Whether `schema` is made for values of this type (so its error is the one to report)."""
    if isinstance(schema, AnyOf):
        return any(_accepts_type(o, value) for o in schema.options)
    if isinstance(schema, ExpectT):
        return not isinstance(value, dict)
    types: dict[type, type | tuple[type, ...]] = {Str: str, Int: int, Num: (int, float), Bool: bool, Obj: dict,
                                                  Tagged: dict, MapOf: dict, ListOf: list}
    if isinstance(value, bool) and not isinstance(schema, Bool):
        return False
    return isinstance(value, types.get(type(schema), ()))


def _describe(schema: Any, value: Any = None) -> str:
    """What `schema` expects, in words; for an AnyOf, only the options made for `value`'s type, if any."""
    if isinstance(schema, AnyOf):
        fits = [o for o in schema.options if _accepts_type(o, value)] or list(schema.options)
        return " or ".join(_describe(o, value) for o in fits)
    if isinstance(schema, Str):
        if schema.pattern_doc:
            return schema.pattern_doc
        return f"a {schema.what} name" if schema.what != "value" else "a string"
    return {Int: "an integer", Num: "a number", Bool: "true or false", ExpectT: f"an expectation ({SYNTAX})",
            Obj: "a mapping", ListOf: "a list", MapOf: "a mapping", Tagged: "a mapping"}.get(type(schema), "a value")


def _check_str(doc: Document, path: Path_, value: Any, schema: Str, at_key: bool = False) -> list[SpecError]:
    import re

    if not isinstance(value, str):
        return [doc.error(path, f"expected {_describe(schema)}, got {_type_name(value)} {_show(value)}",
                          at_key=at_key)]
    if schema.check is not None:
        try:
            schema.check(value)
        except UsageError as exc:
            return [doc.error(path, str(exc), at_key=at_key)]
    elif schema.choices or schema.dynamic:
        choices = list(schema.choices or ()) or (schema.dynamic() if schema.dynamic else [])
        if value not in choices:
            return [doc.error(path, f"unknown {schema.what} {_show(value)}{did_you_mean(value, choices)}; "
                                    f"valid: {', '.join(choices) or '(none registered)'}", at_key=at_key)]
    if schema.pattern and not re.fullmatch(schema.pattern, value):
        return [doc.error(path, f"expected {schema.pattern_doc or 'a string matching ' + schema.pattern}, "
                                f"got {_show(value)}", at_key=at_key)]
    return []


def _show(value: Any) -> str:
    """repr(value), shortened to one readable fragment."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def problems(doc: Document, schema: Any, value: Any = None, path: Path_ = ()) -> list[SpecError]:
    """Every place where the value at `path` (the whole document by default) does not fit `schema`."""
    if not path and value is None:
        value = doc.data
    if isinstance(schema, Str):
        return _check_str(doc, path, value, schema)
    if isinstance(schema, Int):
        if not isinstance(value, int) or isinstance(value, bool):
            return [doc.error(path, f"expected an integer, got {_type_name(value)} {_show(value)}")]
        if schema.minimum is not None and value < schema.minimum:
            return [doc.error(path, f"expected an integer >= {schema.minimum}, got {value}")]
        if schema.maximum is not None and value > schema.maximum:
            return [doc.error(path, f"expected an integer <= {schema.maximum}, got {_show(value)}")]
        return []
    if isinstance(schema, Num):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return [doc.error(path, f"expected a number, got {_type_name(value)} {_show(value)}")]
        return []
    if isinstance(schema, Bool):
        if not isinstance(value, bool):
            return [doc.error(path, f"expected true or false, got {_type_name(value)} {_show(value)}")]
        return []
    if isinstance(schema, ExpectT):
        try:
            parse_expectation(value)
        except ExpectationError as exc:
            return [doc.error(path, str(exc))]
        return []
    if isinstance(schema, Obj):
        return _obj_problems(doc, path, value, schema.fields, schema.extra)
    if isinstance(schema, Tagged):
        return _tagged_problems(doc, path, value, schema)
    if isinstance(schema, ListOf):
        if not isinstance(value, list):
            return [doc.error(path, f"expected a list, got {_type_name(value)} {_show(value)}")]
        if len(value) < schema.min_items:
            return [doc.error(path, f"expected at least {schema.min_items} item(s)")]
        return [e for i, item in enumerate(value) for e in problems(doc, schema.item, item, (*path, i))]
    if isinstance(schema, MapOf):
        if not isinstance(value, dict):
            return [doc.error(path, f"expected a mapping, got {_type_name(value)} {_show(value)}")]
        out = []
        for k, v in value.items():
            if schema.key is not None:
                out += _check_str(doc, (*path, k), k, schema.key, at_key=True)
            out += problems(doc, schema.value, v, (*path, k))
        return out
    if isinstance(schema, AnyOf):
        found = [problems(doc, option, value, path) for option in schema.options]
        if any(not errors for errors in found):
            return []
        # report the errors of the one option made for this type of value (the most specific)
        fitting = [errors for option, errors in zip(schema.options, found) if _accepts_type(option, value)]
        if len(fitting) == 1:
            return fitting[0]
        return [doc.error(path, f"expected {_describe(schema, value)}, got {_type_name(value)} {_show(value)}")]
    raise TypeError(f"unknown schema type {schema!r}")  # pragma: no cover


def validate(doc: Document, schema: Any, value: Any = None, path: Path_ = ()) -> None:
    """Raise every problem at once (a SpecError, or SpecErrors for several)."""
    raise_all(problems(doc, schema, value, path))


def _tagged_problems(doc: Document, path: Path_, value: Any, schema: Tagged) -> list[SpecError]:
    if not isinstance(value, dict):
        return [doc.error(path, f"expected a mapping, got {_type_name(value)} {_show(value)}")]
    if schema.key not in value:
        return [doc.error(path, f"missing required key {schema.key!r} (one of: {', '.join(schema.variants)})")]
    tag = value[schema.key]
    if isinstance(tag, str) and tag not in schema.variants and schema.lookup is not None:
        try:
            schema.lookup(tag)
        except UsageError as exc:
            return [doc.error((*path, schema.key), str(exc))]
    if not isinstance(tag, str) or tag not in schema.variants:
        return [doc.error((*path, schema.key), f"unknown {schema.key} {_show(tag)}"
                          f"{did_you_mean(str(tag), schema.variants)}; valid: {', '.join(schema.variants)}")]
    variant = schema.variants[tag]
    fields = {**schema.common, schema.key: Field(Str(), required=True), **variant.fields}
    return _obj_problems(doc, path, value, fields, variant.extra)


def _obj_problems(doc: Document, path: Path_, value: Any, fields: Mapping[str, Field], extra: Any) -> list[SpecError]:
    if not isinstance(value, dict):
        return [doc.error(path, f"expected a mapping, got {_type_name(value)} {_show(value)}")]
    out: list[SpecError] = []
    meant: set[str] = set()
    for key in value:
        if key not in fields and extra is None:
            suggestion = did_you_mean(str(key), fields)
            meant.update(k for k in fields if suggestion == did_you_mean(k, [k]))
            out.append(doc.error((*path, key), f"unknown key {_show(key)}{suggestion}; "
                                 f"valid keys: {', '.join(fields)}", at_key=True))
    for key, f in fields.items():
        if f.required and key not in value and key not in meant:  # a misspelt key is reported once
            out.append(doc.error(path, f"missing required key {key!r} ({f.doc or _describe(f.type)})"))
    for key, v in value.items():
        if key in fields or extra is not None:
            out += problems(doc, fields[key].type if key in fields else extra, v, (*path, key))
    return out


# ------------------------------------------------------------------ JSON Schema
def to_json_schema(schema: Any, doc: str = "", plugins: bool = False) -> dict:
    """The JSON Schema (draft 2020-12) equivalent of `schema`.

    Names that plugins register (`Str(dynamic=...)`) stay open strings unless
    `plugins` is true: then they are enumerated from the plugins installed now.
    """
    out: dict[str, Any]
    if isinstance(schema, Str):
        out = {"type": "string"}
        choices = list(schema.choices or ()) or (schema.dynamic() if schema.dynamic and plugins else [])
        if choices:
            out["enum"] = choices
        if schema.pattern:
            out["pattern"] = f"^(?:{schema.pattern})$"
    elif isinstance(schema, Int):
        out = {"type": "integer"}
        if schema.minimum is not None:
            out["minimum"] = schema.minimum
        if schema.maximum is not None:
            out["maximum"] = schema.maximum
    elif isinstance(schema, Num):
        out = {"type": "number"}
    elif isinstance(schema, Bool):
        out = {"type": "boolean"}
    elif isinstance(schema, ExpectT):
        out = {"anyOf": [
            {"type": "number"},
            {"type": "string", "pattern": EXPECT_PATTERN},
            {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
        ]}
    elif isinstance(schema, Obj):
        out = _obj_schema(schema.fields, schema.extra, plugins)
    elif isinstance(schema, Tagged):
        variants = []
        for tag, variant in schema.variants.items():
            fields = {**schema.common, schema.key: Field(Str(choices=(tag,)), required=True), **variant.fields}
            v = _obj_schema(fields, variant.extra, plugins)
            v["properties"][schema.key] = {"const": tag}
            if variant.doc:
                v["description"] = variant.doc
            variants.append(v)
        out = {"oneOf": variants}
    elif isinstance(schema, ListOf):
        out = {"type": "array", "items": to_json_schema(schema.item, plugins=plugins)}
        if schema.min_items:
            out["minItems"] = schema.min_items
    elif isinstance(schema, MapOf):
        out = {"type": "object", "additionalProperties": to_json_schema(schema.value, plugins=plugins)}
        if schema.key is not None:
            out["propertyNames"] = to_json_schema(schema.key, plugins=plugins)
    elif isinstance(schema, AnyOf):
        out = {"anyOf": [to_json_schema(o, plugins=plugins) for o in schema.options]}
    else:  # pragma: no cover
        raise TypeError(f"unknown schema type {schema!r}")
    description = doc or getattr(schema, "doc", "")
    if description:
        out["description"] = description
    return out


def _obj_schema(fields: Mapping[str, Field], extra: Any, plugins: bool) -> dict:
    return {
        "type": "object",
        "properties": {k: to_json_schema(f.type, f.doc, plugins) for k, f in fields.items()},
        "required": [k for k, f in fields.items() if f.required],
        "additionalProperties": False if extra is None else to_json_schema(extra, plugins=plugins),
    }
