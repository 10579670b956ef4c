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

`spec_schema()` is the single source of truth: `load_spec` validates with it
and `json_schema()` turns it into the JSON Schema for editors. The variants
of a check (`kind: detector` ...) come from the registered check kinds
(`circuitry.checks`; plugins add kinds). Every problem of a spec is reported
in one run, in line order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from circuitry.errors import UsageError, did_you_mean
from circuitry.names import (
    EDGE_DOC,
    EDGE_KINDS,
    EDGE_PATTERN,
    NODE_DOC,
    NODE_PATTERN,
    Edge,
    canonical_name,
    parse_edge,
)
from circuitry.spec.expect import Expectation, parse_expectation
from circuitry.spec.loader import Document, SpecError, load_document, load_file, raise_all
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
    _show,
    _type_name,
    problems,
    to_json_schema,
)

API_VERSION = "circuitry/v1"
NODE_RE = NODE_PATTERN


SEED_LIMITS = (0, 2**63 - 1)  # what torch.Generator.manual_seed takes


def _lookup(hook: str, what: str):
    """A check for names that plugins provide: the plugin manager's 'unknown' or 'not available' error."""
    def check(name: str) -> None:
        from circuitry.plugins import get_manager

        get_manager().get(hook, name, what)
    return check


def _plugin_names(hook: str):
    def names() -> list[str]:
        from circuitry.plugins import get_manager

        return sorted(get_manager().records(hook))
    return names


def _plugin_name(hook: str, what: str, doc: str) -> Str:
    return Str(dynamic=_plugin_names(hook), check=_lookup(hook, what), what=what, doc=doc)


MAX_DIGITS = 9  # of a layer, head or token id written in a name: more is no model's


def short_numbers(text: str) -> None:
    """A UsageError for a name whose number is too long to be a layer, head or token id (such a number
    would also exceed what Python converts from text)."""
    m = re.search(r"\d{%d,}" % (MAX_DIGITS + 1), text)
    if m:
        raise UsageError(f"{_show(text)}: a layer, head or token id has at most {MAX_DIGITS} digits, "
                         f"this one has {len(m.group())}")


def _edge_text(text: str) -> None:
    """Check an edge written as text: its numbers (`short_numbers`), its syntax and kinds (`parse_edge`)."""
    short_numbers(text)
    parse_edge(text)


NODE = Str(doc=NODE_DOC, pattern=NODE_PATTERN, pattern_doc=NODE_DOC, check=short_numbers)
EDGE_STR = Str(doc=EDGE_DOC, pattern=EDGE_PATTERN, pattern_doc=EDGE_DOC, check=_edge_text)
EDGE_OBJ = Obj({
    "from": Field(NODE, required=True, doc="the sender"),
    "to": Field(NODE, required=True, doc="the receiver (a later head or MLP, or logits for direct)"),
    "kind": Field(Str(choices=EDGE_KINDS), required=True, doc="which input of the receiver"),
})
EDGE = AnyOf((EDGE_STR, EDGE_OBJ), doc="an edge")
NODES = AnyOf((NODE, ListOf(NODE, min_items=1)), doc="one node or a list of nodes")
DETECTORS = _plugin_name("circuitry_detectors", "detector",
                         "a detector (a plugin name; `circuitry plugins` lists them)")
METRICS = _plugin_name("circuitry_metrics", "metric", "a metric (a plugin name; `circuitry plugins` lists them)")
INTERVENTIONS = _plugin_name("circuitry_interventions", "intervention",
                             "an intervention (a plugin name; `circuitry plugins` lists them)")
DATASETS = _plugin_name("circuitry_datasets", "dataset", "a dataset (a plugin name; `circuitry plugins` lists them)")
PATH_TERM = Str(pattern=rf"{NODE_PATTERN}|direct|bias|remainder", check=short_numbers,
                pattern_doc="a head L{layer}H{head}, an MLP M{layer}, direct, bias or remainder")
TARGET = AnyOf((Str(pattern=r"correct|\d+", pattern_doc="'correct' or a token id", check=short_numbers),
                Int(minimum=0)),
               doc="the logit to explain: correct (the next token; default) or a token id")
SCALAR = AnyOf((Str(), Num(), Bool(), ListOf(Str())), doc="a parameter value (a list of strings for text prompts)")

DATA = Obj({"name": Field(DATASETS, doc="the dataset plugin (default: repeated, or text when text is given)")},
           extra=SCALAR, doc="a dataset plugin and its parameters")

COMMON = {
    "id": Field(Str(pattern=r"[A-Za-z0-9_.\-]+", pattern_doc="an id made of letters, digits, '_', '-' and '.'"),
                required=True, doc="a unique name for the claim"),
    "description": Field(Str(), doc="what the claim means"),
}


def _expect_field(kind: Any) -> Field:
    """The `expect` key of a check kind: a plain expectation, or a mapping with one of its expect_keys."""
    if not kind.expect_keys:
        return Field(ExpectT(), required=True, doc=kind.expect_doc)
    keyed = Obj({k: Field(ExpectT()) for k in kind.expect_keys},
                doc=f"exactly one of {', '.join(kind.expect_keys)}")
    return Field(AnyOf((ExpectT(), keyed)), required=True, doc=kind.expect_doc)


def check_kinds(manager: Any = None) -> dict[str, Any]:
    """The registered check kinds, by name."""
    from circuitry.plugins import get_manager

    return dict((manager or get_manager()).check_kinds())


DTYPES = ("float32", "bfloat16", "float16")
MODEL_REF = Str(pattern=r"\S.*", pattern_doc="a model reference: builtin:NAME, a path, hf:NAME ...",
                doc="a model reference: builtin:NAME, a path, hf:PATH or tl:PATH (paths relative to the spec's "
                    "directory, then to the working directory), hf:NAME ...")


def spec_schema(manager: Any = None) -> Obj:
    """The schema of a v1 spec, with one check variant per registered check kind."""
    kinds = check_kinds(manager)
    checks = Tagged("kind", {name: Obj({**k.fields, "expect": _expect_field(k)}, doc=k.description)
                             for name, k in kinds.items()},
                    common=COMMON, doc="one claim", lookup=_lookup("circuitry_check_kinds", "check kind"))
    return Obj({
        "apiVersion": Field(Str(choices=(API_VERSION,)), required=True, doc="the spec format version"),
        "kind": Field(Str(choices=("CircuitSpec",)), required=True),
        "metadata": Field(Obj({
            "name": Field(Str(), required=True),
            "description": Field(Str()),
            "authors": Field(ListOf(Str())),
            "tags": Field(ListOf(Str())),
            "xfail": Field(Str(pattern=r"\S.*", pattern_doc="the reason, as text"),
                           doc="the reason the spec is expected to fail (a hypothesis known to be wrong): under "
                               "pytest its failing checks are expected failures, and it fails if every check "
                               "holds; `circuitry verify` reports it like any spec"),
            "attribution": Field(Obj({}, extra=SCALAR, doc="how discovery by attribution chose the circuit"),
                                 doc="written by `discover --method eap|eap-ig`: the method, its steps, the "
                                     "edges kept and the faithfulness curve's areas"),
        }), required=True),
        "model": Field(AnyOf((MODEL_REF, Obj({
            "ref": Field(MODEL_REF, required=True),
            "dtype": Field(Str(choices=DTYPES), doc="the dtype the weights and the forward pass run in "
                                                    "(default float32)"),
        }, doc="a model reference with the dtype to load it in"))), required=True,
            doc="the model: a reference, or {ref: REFERENCE, dtype: float32|bfloat16|float16}"),
        "data": Field(DATA, doc="the data of the clean run (default: repeated); {task: FILE} names a task file, "
                                "as `task:` does"),
        "task": Field(AnyOf((Str(pattern=r"\S.*", pattern_doc="the path of a task file"), _inline_task_schema())),
                      doc="a contrastive task instead of data: the path of a task file (relative to the spec) or "
                          "the task written here; its clean prompts are the data, its corrupted prompts the "
                          "reference"),
        "reference_data": Field(DATA, doc="data for mean and resample ablations (default: data with seed + 1)"),
        "circuit": Field(Obj({
            "nodes": Field(MapOf(AnyOf((Str(doc="the role"), Obj({
                "role": Field(Str(), doc="what the node does, e.g. previous_token, induction"),
                "description": Field(Str()),
            }))), key=NODE), required=True),
            "edges": Field(ListOf(EDGE)),
        }), required=True),
        "checks": Field(ListOf(checks, min_items=1), required=True),
    }, doc="a circuit hypothesis and the claims that test it")


def json_schema(plugins: bool = False) -> dict:
    """The JSON Schema of specs, generated from `spec_schema()`.

    Names of detectors, metrics, interventions and datasets are open strings
    (plugins add names); `plugins=True` enumerates those installed now.
    """
    out = to_json_schema(spec_schema(), plugins=plugins)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "circuitry/v1/CircuitSpec",
            "title": "circuitry circuit spec", **out}


# ------------------------------------------------------------------ typed form
@dataclass(frozen=True)
class Check:
    """One claim; `options` holds the kind-specific keys as written (validated).

    expect_key: what a plain expectation compares (the kind's first expect key, or "value").
    """

    id: str
    kind: str
    expect: Any
    options: dict
    path: tuple  # key path in the document, for error marks
    description: str = ""
    expect_key: str = "value"


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
    warnings: tuple[str, ...] = ()  # footguns found when the spec loaded (file:line:col: message)
    task: Any = None  # a circuitry.tasks.format.TaskFile when the spec checks a contrastive task
    dtype: str | None = None  # the dtype of the model section (None: the loader's default, float32)

    @property
    def task_key(self) -> tuple:
        """The key path that names the spec's task: ("task",) or ("data", "task")."""
        return _task_key(self.document.data if isinstance(self.document.data, dict) else {}) or ("task",)

    @property
    def file(self) -> str:
        return self.document.file

    def error(self, path: tuple, message: str) -> SpecError:
        return self.document.error(path, message)


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


class _Problems:
    """The problems found so far, and which parts of the document they concern."""

    def __init__(self, errors: list[SpecError]) -> None:
        self.errors = list(errors)

    def add(self, error: SpecError) -> None:
        self.errors.append(error)

    def clean(self, path: tuple) -> bool:
        """Whether no problem lies at, above or below `path` (so its value can be read as valid)."""
        n = len(path)
        return not any(e.path[:n] == path or path[: len(e.path)] == e.path for e in self.errors)


def _semantics(doc: Document, found: _Problems, manager: Any) -> CircuitSpec | None:
    """Checks the schema cannot express (references between parts of the spec); None when the
    spec has problems."""
    data = doc.data
    if not isinstance(data, dict):
        return None
    circuit: dict = data["circuit"] if isinstance(data.get("circuit"), dict) else {}
    nodes_raw: dict = circuit["nodes"] if isinstance(circuit.get("nodes"), dict) else {}
    nodes: dict[str, str] = {}  # canonical name (L1H3 for l1h3) -> role
    for k, v in nodes_raw.items():
        name = canonical_name(k)
        if name in nodes:
            found.add(doc.error(("circuit", "nodes", k), f"node {name} is declared twice", at_key=True))
        nodes[name] = v if isinstance(v, str) else v.get("role", "") if isinstance(v, dict) else ""
    edges = _edges(doc, found, circuit, nodes) if found.clean(("circuit", "nodes")) else []
    checks = _checks(doc, found, data, manager)
    data_spec, ref = _data(doc, found, data, manager)
    task = _task(doc, found, data)
    if found.errors:
        return None
    model = data["model"] if isinstance(data["model"], str) else data["model"]["ref"]
    dtype = None if isinstance(data["model"], str) else data["model"].get("dtype")
    spec = CircuitSpec(data["metadata"]["name"], model, data_spec, ref, nodes, tuple(edges), tuple(checks),
                       doc, data["metadata"].get("description", ""), task=task, dtype=dtype)
    return replace(spec, warnings=tuple(_role_warnings(spec, manager)))


def _inline_task_schema() -> Any:
    from circuitry.tasks.format import INLINE_SCHEMA

    return INLINE_SCHEMA


def _task_key(data: dict) -> tuple | None:
    """Where the spec names its task: `task:` or `data: {task: FILE}`; None without one."""
    if "task" in data:
        return ("task",)
    raw = data.get("data")
    return ("data", "task") if isinstance(raw, dict) and "task" in raw else None


def _task(doc: Document, found: _Problems, data: dict) -> Any:
    """The spec's task (a TaskFile), loaded from its file or read inline; None without one."""
    key_path = _task_key(data)
    if key_path is None or not found.clean(key_path):
        return None
    if key_path == ("data", "task"):
        others = [k for k in data["data"] if k != "task"]
        if "task" in data:
            found.add(doc.error(key_path, "the task is named twice (task: and data.task): keep one", at_key=True))
        for k in others:
            found.add(doc.error(("data", k), f"data with a task takes its prompts from the task: remove {k}",
                                at_key=True))
    for key in ("data", "reference_data"):
        if key in data and key_path[0] != key:
            found.add(doc.error((key,), f"a spec with a task takes its data from the task (clean prompts) and its "
                                        f"reference from the task (corrupted prompts): remove {key}", at_key=True))
    from circuitry.tasks.format import inline_task, load_task

    value = data["task"] if key_path == ("task",) else data["data"]["task"]
    if isinstance(value, dict):
        task, errors = inline_task(doc, key_path)
        for e in errors:
            found.add(e)
        return task
    try:
        return load_task(relative_to(doc.file, value))
    except SpecError as exc:
        if exc.mark is None:  # the file itself is missing or unreadable: say so at the spec's line
            found.add(doc.error(key_path, exc.message))
        else:
            for e in getattr(exc, "errors", [exc]):
                found.add(e)
        return None


def _edges(doc: Document, found: _Problems, circuit: dict, nodes: dict) -> list[Edge]:
    edges = []
    for i, e in enumerate(circuit.get("edges", []) if isinstance(circuit.get("edges"), list) else []):
        path = ("circuit", "edges", i)
        if not found.clean(path):
            continue
        try:
            edge = parse_edge(e)  # the schema checked the syntax; a mapping's kind must still fit its receiver
        except UsageError as exc:
            found.add(doc.error(path, str(exc)))
            continue
        for end in (edge.sender, edge.receiver):
            if end not in nodes and end not in ("embed", "pos_embed", "logits"):
                found.add(doc.error(path, f"edge {edge} names {end!r}, which is not a node of the circuit"
                                          f"{did_you_mean(end, nodes)}; declared nodes: {', '.join(nodes)}"))
        edges.append(edge)
    return edges


def _checks(doc: Document, found: _Problems, data: dict, manager: Any) -> list[Check]:
    kinds = check_kinds(manager)
    ids: dict[str, int] = {}
    checks = []
    listed: list = data["checks"] if isinstance(data.get("checks"), list) else []
    for i, c in enumerate(listed):
        path = ("checks", i)
        if not found.clean(path):
            continue
        if c["id"] in ids:
            found.add(doc.error((*path, "id"), f"duplicate check id {c['id']!r} (also checks[{ids[c['id']]}])"))
            continue
        ids[c["id"]] = i
        kind = kinds[c["kind"]]
        expect = c["expect"]
        if isinstance(expect, dict) and len(expect) != 1:
            found.add(doc.error((*path, "expect"), f"give exactly one of {', '.join(kind.expect_keys)}"))
            continue
        opts = {k: v for k, v in c.items() if k not in ("id", "kind", "expect", "description")}
        checks.append(Check(c["id"], c["kind"], expect, opts, path, c.get("description", ""),
                            kind.expect_keys[0] if kind.expect_keys else "value"))
    return checks


def _data(doc: Document, found: _Problems, data: dict, manager: Any) -> tuple[dict, dict]:
    """(data, reference data) with defaults filled in and parameters checked."""
    raw = data.get("data", {"name": "repeated"})
    if not found.clean(("data",)) or not isinstance(raw, dict) or _task_key(data) is not None:
        return {}, {}
    data_spec = dict(raw)
    data_spec.setdefault("name", "text" if "text" in data_spec else "repeated")
    _check_data_params(doc, found, "data", data_spec, manager)
    ref_raw = data.get("reference_data", {})
    if not found.clean(("reference_data",)) or not isinstance(ref_raw, dict):
        return data_spec, {}
    # the reference data is the data with the keys reference_data changes (unless it names another dataset)
    same = ref_raw.get("name", data_spec["name"]) == data_spec["name"]
    ref = {**data_spec, **ref_raw} if same else dict(ref_raw)
    ref.setdefault("name", data_spec["name"])
    _check_data_params(doc, found, "reference_data" if "reference_data" in data else "data", ref, manager)
    params = _dataset_params(data_spec["name"], manager)
    if "reference_data" not in data and params is not None and "seed" in params:
        seed = data_spec.get("seed", params["seed"])
        if isinstance(seed, int) and seed < SEED_LIMITS[1]:
            ref["seed"] = seed + 1
    return data_spec, ref


def _dataset_params(name: str, manager: Any) -> dict | None:
    """The parameters (name -> default) of the dataset plugin `name`, None when it is not available."""
    from circuitry.plugins import get_manager

    datasets = (manager or get_manager()).datasets()
    return dict(datasets[name].params) if name in datasets else None


def _check_data_params(doc: Document, found: _Problems, key: str, params: dict, manager: Any) -> None:
    """Every parameter must be one the dataset plugin takes, of the type of its default, within its limits;
    paths are read relative to the spec's directory when a file of that name is there."""
    from circuitry.plugins import get_manager

    datasets = (manager or get_manager()).datasets()
    name = params["name"]
    if name not in datasets:
        return  # reported by the schema
    ds = datasets[name]
    for k, v in list(params.items()):
        if k == "name":
            continue
        if k in ds.paths and isinstance(v, str) and v:
            v = params[k] = relative_to(doc.file, v)
        message = data_param_problem(ds, k, v)
        if message:
            found.add(doc.error((key, k), message, at_key=k not in ds.params))


def data_param_problem(ds: Any, key: str, value: Any) -> str | None:
    """Why `value` is not a valid parameter `key` of dataset record `ds`, or None."""
    name, defaults = ds.name, ds.params
    if key not in defaults:
        valid = ", ".join(defaults) or "(none)"
        return f"dataset {name!r} has no parameter {key!r}{did_you_mean(key, defaults)}; valid: {valid}"
    default = defaults[key]
    if isinstance(default, bool):
        ok, what = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, what = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok, what = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, str):
        ok, what = isinstance(value, str), "a string"
    else:
        ok, what = True, ""
    if not ok:
        return (f"parameter {key!r} of dataset {name!r} must be {what} (default {default!r}), "
                f"got {_type_name(value)} {_show(value)}")
    lo, hi = SEED_LIMITS if key == "seed" else ds.limits.get(key, (None, None))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value or (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = (f"between {lo} and {hi}" if lo is not None and hi is not None
                      else f">= {lo}" if lo is not None else f"<= {hi}")
            return f"parameter {key!r} of dataset {name!r} must be {bounds}, got {_show(value)}"
    if key in ds.paths and isinstance(value, str) and value:
        return _path_problem(name, key, value)
    return None


def _path_problem(name: str, key: str, value: str) -> str | None:
    """Why the path parameter `key` cannot name a file of data: a NUL character, or a device, pipe or
    socket (read without end, or blocking); None for a regular file, a directory or no file (the dataset
    says what it expects then)."""
    import os
    import stat

    if "\0" in value:
        return f"parameter {key!r} of dataset {name!r}: {_show(value)} holds a NUL character, which no file name can"
    try:
        mode = os.stat(os.path.expanduser(value)).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return (f"parameter {key!r} of dataset {name!r}: {_show(value)} is a device, a pipe or a socket, not a file "
            f"of data; give a regular file")


def relative_to(spec_file: str, value: str) -> str:
    """A relative path named in a spec: the file beside the spec when there is one, else as written."""
    from pathlib import Path

    if spec_file.startswith("<") or Path(value).is_absolute():
        return value
    beside = Path(spec_file).parent / value
    try:
        return str(beside) if beside.exists() else value
    except (OSError, ValueError):  # a name the file system cannot hold (too long, a NUL character)
        return value


def _role_warnings(spec: CircuitSpec, manager: Any) -> list[str]:
    """Roles that name no detector and that no check uses (a misspelt role, most likely)."""
    from circuitry.plugins import get_manager

    detectors = (manager or get_manager()).detectors()
    used = {c.options.get("role") for c in spec.checks} | {c.options.get("detector") for c in spec.checks
                                                           if "nodes" not in c.options and "role" not in c.options}
    out = []
    for node, role in spec.nodes.items():
        if role and role not in detectors and role not in used:
            mark = spec.document.key_mark(("circuit", "nodes", node))
            out.append(f"{mark}: circuit.nodes.{node}: role {role!r} names no detector"
                       f"{did_you_mean(role, detectors)} and no check uses it")
    return list(dict.fromkeys(out))


def expectation_of(check: Check) -> tuple[str, Expectation]:
    """(what is compared, the expectation): ('change', >= 1.0) ..."""
    e = check.expect
    if isinstance(e, dict):
        (key, raw), = e.items()
        return key, parse_expectation(raw)
    return check.expect_key, parse_expectation(e)


def load_spec(path: str | Path | None = None, text: str | None = None, manager: Any = None,
              name: str = "<string>") -> CircuitSpec:
    """Load and validate a spec file (or text, its errors located as `name`:line:col); every problem is raised
    at once, with file:line:col."""
    doc = load_document(text, name) if text is not None else load_file(path)  # type: ignore[arg-type]
    found = _Problems(problems(doc, spec_schema(manager)))
    spec = _semantics(doc, found, manager)
    raise_all(found.errors)
    assert spec is not None
    return spec
