"""A small schema language: one source of truth for spec validation and the JSON Schema.

Types: `Str`, `Int`, `Num`, `Bool`, `ExpectT` (an expectation), `Obj` (named
fields, unknown keys rejected with a suggestion), `ListOf`, `MapOf`, `AnyOf`
and `Tagged` (a mapping whose `kind` picks the variant). `validate(doc,
schema)` reports the first problem with its file:line:col; `to_json_schema`
writes the same rules as JSON Schema (draft 2020-12) for editors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from circuitry.errors import did_you_mean
from circuitry.spec.expect import PATTERN as EXPECT_PATTERN
from circuitry.spec.expect import SYNTAX, ExpectationError, parse_expectation
from circuitry.spec.loader import Document, Path_

Choices = Callable[[], list[str]]  # names known only at run time (plugins)


@dataclass(frozen=True)
class Str:
    doc: str = ""
    choices: tuple[str, ...] | None = None
    dynamic: Choices | None = None  # e.g. registered detector names
    pattern: str | None = None
    pattern_doc: str = ""
    what: str = "value"  # in messages: "unknown detector 'x'"


@dataclass(frozen=True)
class Int:
    doc: str = ""
    minimum: int | None = None


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
    types = {Str: str, Int: int, Num: (int, float), Bool: bool, Obj: dict, Tagged: dict, MapOf: dict,
             ListOf: list}
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


def _check_str(doc: Document, path: Path_, value: Any, schema: Str, at_key: bool = False) -> None:
    import re

    if not isinstance(value, str):
        raise doc.error(path, f"expected {_describe(schema)}, got {_type_name(value)} {value!r}", at_key=at_key)
    choices = list(schema.choices or ()) or (schema.dynamic() if schema.dynamic else [])
    if (schema.choices or schema.dynamic) and value not in choices:
        raise doc.error(path, f"unknown {schema.what} {value!r}{did_you_mean(value, choices)}; "
                              f"valid: {', '.join(choices) or '(none registered)'}", at_key=at_key)
    if schema.pattern and not re.fullmatch(schema.pattern, value):
        raise doc.error(path, f"expected {schema.pattern_doc or 'a string matching ' + schema.pattern}, "
                              f"got {value!r}", at_key=at_key)


def validate(doc: Document, schema: Any, value: Any = None, path: Path_ = ()) -> None:
    """Raise SpecError at the first value that does not fit `schema`."""
    if not path and value is None:
        value = doc.data
    if isinstance(schema, Str):
        _check_str(doc, path, value, schema)
    elif isinstance(schema, Int):
        if not isinstance(value, int) or isinstance(value, bool):
            raise doc.error(path, f"expected an integer, got {_type_name(value)} {value!r}")
        if schema.minimum is not None and value < schema.minimum:
            raise doc.error(path, f"expected an integer >= {schema.minimum}, got {value}")
    elif isinstance(schema, Num):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise doc.error(path, f"expected a number, got {_type_name(value)} {value!r}")
    elif isinstance(schema, Bool):
        if not isinstance(value, bool):
            raise doc.error(path, f"expected true or false, got {_type_name(value)} {value!r}")
    elif isinstance(schema, ExpectT):
        try:
            parse_expectation(value)
        except ExpectationError as exc:
            raise doc.error(path, str(exc)) from None
    elif isinstance(schema, Obj):
        _validate_obj(doc, path, value, schema.fields, schema.extra)
    elif isinstance(schema, Tagged):
        if not isinstance(value, dict):
            raise doc.error(path, f"expected a mapping, got {_type_name(value)} {value!r}")
        if schema.key not in value:
            raise doc.error(path, f"missing required key {schema.key!r} (one of: {', '.join(schema.variants)})")
        tag = value[schema.key]
        if not isinstance(tag, str) or tag not in schema.variants:
            raise doc.error((*path, schema.key), f"unknown {schema.key} {tag!r}"
                            f"{did_you_mean(str(tag), schema.variants)}; valid: {', '.join(schema.variants)}")
        variant = schema.variants[tag]
        fields = {**schema.common, schema.key: Field(Str(), required=True), **variant.fields}
        _validate_obj(doc, path, value, fields, variant.extra)
    elif isinstance(schema, ListOf):
        if not isinstance(value, list):
            raise doc.error(path, f"expected a list, got {_type_name(value)} {value!r}")
        if len(value) < schema.min_items:
            raise doc.error(path, f"expected at least {schema.min_items} item(s)")
        for i, item in enumerate(value):
            validate(doc, schema.item, item, (*path, i))
    elif isinstance(schema, MapOf):
        if not isinstance(value, dict):
            raise doc.error(path, f"expected a mapping, got {_type_name(value)} {value!r}")
        for k, v in value.items():
            if schema.key is not None:
                _check_str(doc, (*path, k), k, schema.key, at_key=True)
            validate(doc, schema.value, v, (*path, k))
    elif isinstance(schema, AnyOf):
        errors = []
        for option in schema.options:
            try:
                validate(doc, option, value, path)
                return
            except Exception as exc:  # noqa: BLE001 - collect, report the most specific
                errors.append(exc)
        # report the error of the one option made for this type of value (the most specific)
        fitting = [exc for option, exc in zip(schema.options, errors) if _accepts_type(option, value)]
        if len(fitting) == 1:
            raise fitting[0]
        raise doc.error(path, f"expected {_describe(schema, value)}, got {_type_name(value)} {value!r}")
    else:  # pragma: no cover
        raise TypeError(f"unknown schema type {schema!r}")


def _validate_obj(doc: Document, path: Path_, value: Any, fields: Mapping[str, Field], extra: Any) -> None:
    if not isinstance(value, dict):
        raise doc.error(path, f"expected a mapping, got {_type_name(value)} {value!r}")
    for key in value:
        if key not in fields and extra is None:
            raise doc.error((*path, key), f"unknown key {key!r}{did_you_mean(key, fields)}; "
                            f"valid keys: {', '.join(fields)}", at_key=True)
    for key, f in fields.items():
        if f.required and key not in value:
            raise doc.error(path, f"missing required key {key!r} ({f.doc or _describe(f.type)})")
    for key, v in value.items():
        validate(doc, fields[key].type if key in fields else extra, v, (*path, key))


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
