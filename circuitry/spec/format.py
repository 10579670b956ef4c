"""The circuit spec format, version circuitry/v1: its schema and its typed form.

```yaml
apiVersion: circuitry/v1
kind: CircuitSpec
metadata: {name: induction, description: ...}
model: builtin:attn-only-2l
data: {name: repeated, seq_len: 10, batch: 64, seed: 1}
reference_data: {seed: 2}          # mean / resample ablations (default: data with seed + 1)
circuit:
  nodes:
    L0H0: {role: previous_token}
    L1H0: {role: induction}
  edges:
    - L0H0 -> L1H0 (K)             # or {from: L0H0, to: L1H0, kind: K}
checks:
  - {id: prev, kind: detector, detector: previous_token, nodes: [L0H0], expect: ">= 0.9"}
```

`SPEC_SCHEMA` is the single source of truth: `load_spec` validates with it
and `json_schema()` turns it into the JSON Schema for editors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuitry.names import EDGE_DOC, EDGE_KINDS, EDGE_PATTERN, NODE_DOC, NODE_PATTERN, Edge, parse_edge
from circuitry.spec.expect import Expectation, parse_expectation
from circuitry.spec.loader import Document, SpecError, load_document, load_file
from circuitry.spec.schema import (
    AnyOf,
    Bool,
    ExpectT,
    Field,
    Int,
    ListOf,
    MapOf,
    Num,
    Obj,
    Str,
    Tagged,
    _type_name,
    to_json_schema,
    validate,
)

API_VERSION = "circuitry/v1"
NODE_RE = NODE_PATTERN


def _plugin_names(hook: str):
    def names() -> list[str]:
        from circuitry.plugins import get_manager

        return sorted(get_manager().records(hook))
    return names


NODE = Str(doc=NODE_DOC, pattern=NODE_RE, pattern_doc=NODE_DOC)
EDGE_STR = Str(doc=EDGE_DOC, pattern=EDGE_PATTERN, pattern_doc=EDGE_DOC)
EDGE_OBJ = Obj({
    "from": Field(NODE, required=True, doc="the sender"),
    "to": Field(NODE, required=True, doc="the receiver (a later head, or logits for direct)"),
    "kind": Field(Str(choices=EDGE_KINDS), required=True, doc="which input of the receiver"),
})
EDGE = AnyOf((EDGE_STR, EDGE_OBJ), doc="an edge")
NODES = AnyOf((NODE, ListOf(NODE, min_items=1)), doc="one node or a list of nodes")
DETECTORS = Str(dynamic=_plugin_names("circuitry_detectors"), what="detector",
                doc="a detector (a plugin name; `circuitry plugins` lists them)")
METRICS = Str(dynamic=_plugin_names("circuitry_metrics"), what="metric",
              doc="a metric (a plugin name; `circuitry plugins` lists them)")
INTERVENTIONS = Str(dynamic=_plugin_names("circuitry_interventions"), what="intervention",
                    doc="an intervention (a plugin name; `circuitry plugins` lists them)")
DATASETS = Str(dynamic=_plugin_names("circuitry_datasets"), what="dataset",
               doc="a dataset (a plugin name; `circuitry plugins` lists them)")
PATH_TERM = Str(pattern=rf"{NODE_RE}|direct|bias|remainder",
                pattern_doc="a head L{layer}H{head}, an MLP M{layer}, direct, bias or remainder")
TARGET = AnyOf((Str(pattern=r"correct|\d+", pattern_doc="'correct' or a token id"), Int(minimum=0)),
               doc="the logit to explain: correct (the next token; default) or a token id")
SCALAR = AnyOf((Str(), Num(), Bool(), ListOf(Str())), doc="a parameter value (a list of strings for text prompts)")

DATA = Obj({"name": Field(DATASETS, doc="the dataset plugin (default: repeated, or text when text is given)")},
           extra=SCALAR, doc="a dataset plugin and its parameters")
CHANGE = Obj({
    "change": Field(ExpectT(), doc="metric(intervened) - metric(clean)"),
    "relative_change": Field(ExpectT(), doc="(metric(intervened) - metric(clean)) / |metric(clean)|"),
    "value": Field(ExpectT(), doc="metric(intervened) itself"),
}, doc="exactly one of change, relative_change, value")
COMPOSITION_EXPECT = Obj({
    "score": Field(ExpectT(), doc="the composition score itself"),
    "ratio_to_baseline": Field(ExpectT(), doc="score / random-matrix baseline"),
}, doc="exactly one of score, ratio_to_baseline")

COMMON = {
    "id": Field(Str(pattern=r"[A-Za-z0-9_.\-]+", pattern_doc="an id made of letters, digits, '_', '-' and '.'"),
                required=True,
                doc="a unique name for the claim"),
    "description": Field(Str(), doc="what the claim means"),
}
CHECKS = Tagged("kind", {
    "detector": Obj({
        "detector": Field(DETECTORS, required=True),
        "nodes": Field(NODES, doc="heads to check (default: the circuit's nodes whose role is the detector)"),
        "role": Field(Str(), doc="check the circuit's nodes with this role"),
        "expect": Field(ExpectT(), required=True, doc="must hold for every node"),
    }, doc="a detector score of each node"),
    "composition": Obj({
        "edges": Field(AnyOf((EDGE, ListOf(EDGE, min_items=1))),
                       doc="edges to check (default: the circuit's Q/K/V edges)"),
        "expect": Field(AnyOf((ExpectT(), COMPOSITION_EXPECT)), required=True,
                        doc="on the score, or {ratio_to_baseline: ...}; must hold for every edge"),
    }, doc="composition scores of edges"),
    "intervention": Obj({
        "intervention": Field(INTERVENTIONS, required=True),
        "target": Field(AnyOf((EDGE, NODE, ListOf(AnyOf((EDGE, NODE)), min_items=1))), required=True,
                        doc="a node, an edge, or a list of them intervened on together"),
        "metric": Field(METRICS, required=True),
        "expect": Field(AnyOf((ExpectT(), CHANGE)), required=True,
                        doc="on the change of the metric, or {relative_change: ...} / {value: ...}"),
    }, doc="the effect of an intervention on a metric"),
    "faithfulness": Obj({
        "ablation": Field(INTERVENTIONS, doc="how nodes outside the circuit are removed (default: mean)"),
        "metric": Field(METRICS, doc="default: loss"),
        "nodes": Field(NODES, doc="the circuit (default: its nodes)"),
        "expect": Field(ExpectT(), required=True, doc="on the fraction of the metric recovered"),
    }, doc="fraction of the metric recovered by the circuit alone"),
    "decomposition": Obj({
        "path": Field(AnyOf((PATH_TERM, ListOf(NODE, min_items=1))), required=True,
                      doc="a path term: a head, an MLP, direct, bias, remainder, or [A, B]: two heads in "
                          "increasing layers (a virtual head)"),
        "target": Field(TARGET),
        "positions": Field(Str(choices=("predictable", "all")), doc="default: predictable"),
        "expect": Field(ExpectT(), required=True, doc="on the path's share of the target logit"),
    }, doc="a path's share of the target logit in the exact decomposition"),
}, common=COMMON, doc="one claim")

SPEC_SCHEMA = Obj({
    "apiVersion": Field(Str(choices=(API_VERSION,)), required=True, doc="the spec format version"),
    "kind": Field(Str(choices=("CircuitSpec",)), required=True),
    "metadata": Field(Obj({
        "name": Field(Str(), required=True),
        "description": Field(Str()),
        "authors": Field(ListOf(Str())),
        "tags": Field(ListOf(Str())),
    }), required=True),
    "model": Field(Str(pattern=r"\S.*", pattern_doc="a model reference: builtin:NAME, a path, hf:NAME ...",
                       doc="a model reference: builtin:NAME, a path (relative to the spec's directory, then to "
                           "the working directory), hf:NAME ..."), required=True),
    "data": Field(DATA, doc="the data of the clean run (default: repeated)"),
    "reference_data": Field(DATA, doc="data for mean and resample ablations (default: data with seed + 1)"),
    "circuit": Field(Obj({
        "nodes": Field(MapOf(AnyOf((Str(doc="the role"), Obj({
            "role": Field(Str(), doc="what the node does, e.g. previous_token, induction"),
            "description": Field(Str()),
        }))), key=NODE), required=True),
        "edges": Field(ListOf(EDGE)),
    }), required=True),
    "checks": Field(ListOf(CHECKS, min_items=1), required=True),
}, doc="a circuit hypothesis and the claims that test it")


def json_schema(plugins: bool = False) -> dict:
    """The JSON Schema of specs, generated from SPEC_SCHEMA.

    Names of detectors, metrics, interventions and datasets are open strings
    (plugins add names); `plugins=True` enumerates those installed now.
    """
    out = to_json_schema(SPEC_SCHEMA, plugins=plugins)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "circuitry/v1/CircuitSpec",
            "title": "circuitry circuit spec", **out}


# ------------------------------------------------------------------ typed form
@dataclass(frozen=True)
class Check:
    """One claim; `options` holds the kind-specific keys as written (validated)."""

    id: str
    kind: str
    expect: Any
    options: dict
    path: tuple  # key path in the document, for error marks
    description: str = ""


@dataclass(frozen=True)
class CircuitSpec:
    name: str
    model: str
    data: dict
    reference_data: dict
    nodes: dict[str, str]  # node -> role
    edges: tuple[Edge, ...]
    checks: tuple[Check, ...]
    document: Document = field(compare=False, repr=False)
    description: str = ""

    @property
    def file(self) -> str:
        return self.document.file

    def error(self, path: tuple, message: str) -> SpecError:
        return self.document.error(path, message)


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _semantics(doc: Document) -> CircuitSpec:
    """Checks the schema cannot express: references between parts of the spec."""
    data = doc.data
    nodes_raw = data["circuit"]["nodes"]
    nodes = {k: (v if isinstance(v, str) else v.get("role", "")) for k, v in nodes_raw.items()}
    edges = []
    for i, e in enumerate(data["circuit"].get("edges", [])):
        edge = parse_edge(e)
        for end, key in ((edge.sender, "from"), (edge.receiver, "to")):
            if end not in nodes and end not in ("embed", "pos_embed", "logits"):
                raise doc.error(("circuit", "edges", i), f"edge {edge} names {end!r}, which is not a node of the "
                                f"circuit{_suggest(end, nodes)}; declared nodes: {', '.join(nodes)}")
        if (edge.kind == "direct") != (edge.receiver == "logits"):
            raise doc.error(("circuit", "edges", i), f"edge {edge}: a direct edge goes into logits, and an edge "
                            "into logits is direct")
        edges.append(edge)
    ids: dict[str, int] = {}
    checks = []
    for i, c in enumerate(data["checks"]):
        if c["id"] in ids:
            raise doc.error(("checks", i, "id"), f"duplicate check id {c['id']!r} (also checks[{ids[c['id']]}])")
        ids[c["id"]] = i
        opts = {k: v for k, v in c.items() if k not in ("id", "kind", "expect", "description")}
        expect = c["expect"]
        if isinstance(expect, dict) and len(expect) != 1:
            raise doc.error(("checks", i, "expect"), f"give exactly one of {', '.join(_expect_keys(c['kind']))}")
        if c["kind"] == "detector" and "nodes" in opts and "role" in opts:
            raise doc.error(("checks", i, "role"), "give nodes or role, not both", at_key=True)
        checks.append(Check(c["id"], c["kind"], expect, opts, ("checks", i), c.get("description", "")))
    data_spec = dict(data.get("data", {"name": "repeated"}))
    data_spec.setdefault("name", "text" if "text" in data_spec else "repeated")
    _check_data_params(doc, "data", data_spec)
    ref_raw = data.get("reference_data", {})
    # the reference data is the data with the keys reference_data changes (unless it names another dataset)
    ref = dict(ref_raw) if ref_raw.get("name", data_spec["name"]) != data_spec["name"] else {**data_spec, **ref_raw}
    _check_data_params(doc, "reference_data" if "reference_data" in data else "data", ref)
    if "reference_data" not in data and "seed" in _dataset_params(data_spec["name"]):
        ref["seed"] = int(data_spec.get("seed", _dataset_params(data_spec["name"])["seed"])) + 1
    return CircuitSpec(data["metadata"]["name"], data["model"], data_spec, ref, nodes, tuple(edges), tuple(checks),
                       doc, data["metadata"].get("description", ""))


def _dataset_params(name: str) -> dict:
    """The parameters (name -> default) of the dataset plugin `name` (the schema checked the name)."""
    from circuitry.plugins import get_manager

    return dict(get_manager().datasets()[name].params)


def _check_data_params(doc: Document, key: str, params: dict) -> None:
    """Every parameter must be one the dataset plugin takes, of the type of its default."""
    from circuitry.errors import did_you_mean

    name = params["name"]
    defaults = _dataset_params(name)
    for k, v in params.items():
        if k == "name":
            continue
        if k not in defaults:
            valid = ", ".join(defaults) or "(none)"
            raise doc.error((key, k), f"dataset {name!r} has no parameter {k!r}{did_you_mean(k, defaults)}; "
                                      f"valid: {valid}", at_key=True)
        default = defaults[k]
        if isinstance(default, bool):
            ok, what = isinstance(v, bool), "true or false"
        elif isinstance(default, int):
            ok, what = isinstance(v, int) and not isinstance(v, bool), "an integer"
        elif isinstance(default, float):
            ok, what = isinstance(v, (int, float)) and not isinstance(v, bool), "a number"
        elif isinstance(default, str):
            ok, what = isinstance(v, str), "a string"
        else:
            ok, what = True, ""
        if not ok:
            raise doc.error((key, k), f"parameter {k!r} of dataset {name!r} must be {what} "
                                      f"(default {default!r}), got {_type_name(v)} {v!r}")


def _expect_keys(kind: str) -> list[str]:
    return {"intervention": ["change", "relative_change", "value"],
            "composition": ["score", "ratio_to_baseline"]}.get(kind, ["a plain expectation"])


def _suggest(name: str, choices) -> str:
    from circuitry.errors import did_you_mean

    return did_you_mean(name, choices)


def expectation_of(check: Check) -> tuple[str, Expectation]:
    """(what is compared, the expectation): ('change', >= 1.0) ..."""
    e = check.expect
    if isinstance(e, dict):
        (key, raw), = e.items()
        return key, parse_expectation(raw)
    default = {"intervention": "change", "composition": "score"}.get(check.kind, "value")
    return default, parse_expectation(e)


def load_spec(path: str | Path | None = None, text: str | None = None) -> CircuitSpec:
    """Load and validate a spec file (or text); SpecError with file:line:col on problems."""
    doc = load_document(text, "<string>") if text is not None else load_file(path)  # type: ignore[arg-type]
    validate(doc, SPEC_SCHEMA)
    return _semantics(doc)
