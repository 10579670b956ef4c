"""The spec a discovery writes: its checks, measured by `verify`, with thresholds set by a margin.

Checks (those that apply to the circuit found):
- one detector check per role detector among the nodes' roles
  (previous_token, induction, duplicate_token), on the lowest-scoring node;
- one composition check per edge kind, over the kept edges of that kind whose
  composition score is clearly above the random baseline (ratio >= 1.2; scores
  of random matrices scatter by about 5% around it);
- an intervention check: zero-ablating the previous-token heads together (when
  the circuit has none: the node whose removal costs most), change in the metric;
- an intervention check: mean-patching every kept edge together;
- a faithfulness check: the fraction of the metric the nodes recover with every
  other component mean-ablated (1 by definition when the circuit is the whole model).

On a task file (`kind: Task`) the spec names the task (`task:`, no data) and
the intervention checks patch activations of the corrupted prompts
(`intervention: corrupted`) with normalised expectations (the fraction of the
clean-corrupted difference the patch carries):
- a metric check: the task is solved on the clean run (bound in the metric's
  better direction);
- patching the node whose removal costs most; patching every node together
  (a circuit of more than one node); patching every kept edge together;
- the faithfulness check with `ablation: corrupted`.
A patch check whose normalised effect is below MIN_NORMALISED in magnitude
asserts nothing and is left out (a comment says so).

Margin rule (margin m, default 0.2): a measured value v gives the bound
`>= v - m|v|` (for a negative change: `<= v + m|v|`), rounded outwards to 3
decimals; a composition ratio r (score / random baseline) gives
`ratio_to_baseline >= 1 + (r - 1)(1 - m)`, keeping (1 - m) of the excess over
the baseline. The values come from `circuitry.verify` run on a draft of the
spec; the written spec is then checked on that same verified run (its model,
batch, clean run and swept values: no model runs again), so it measures
exactly what was measured. A check whose value is not a finite number is left
out (a comment and a warning say so).

Problems of the draft are never reported at the draft's own `<string>:line:col`:
they are told in the user's terms (the data, the model, the check and what it
measures).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from circuitry.checks import VerifiedRun
from circuitry.diagnostics import collecting, warn
from circuitry.discovery.records import Circuit, MeasuredCheck
from circuitry.errors import CircuitryError, UsageError
from circuitry.jsonable import strict_dumps
from circuitry.names import parse_component
from circuitry.sources import split_ref
from circuitry.spec import load_spec
from circuitry.spec.format import CircuitSpec
from circuitry.spec.loader import SpecError
from circuitry.verify import verify

PLACEHOLDER = ">= -1000000"
MIN_COMPOSITION_RATIO = 1.2  # edges with a weaker composition get no composition check
MIN_NORMALISED = 0.05  # a patch check whose normalised effect is smaller (in magnitude) is not written
MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")  # dropped from a model file's name in spec names


# ------------------------------------------------------------------ thresholds
def _floor3(x: float) -> float:
    return math.floor(x * 1000 + 1e-9) / 1000


def _ceil3(x: float) -> float:
    return math.ceil(x * 1000 - 1e-9) / 1000


def better_bound(value: float, margin: float, lower_is_better: bool) -> str:
    """The expectation for a metric that must stay as good as measured: <= v + m|v| where lower is better,
    >= v - m|v| where higher is better."""
    if not math.isfinite(value):
        raise ValueError(f"no bound for the non-finite value {value!r}")
    if lower_is_better:
        return f"<= {_ceil3(value + margin * abs(value)):.3f}"
    return f">= {_floor3(value - margin * abs(value)):.3f}"


def bound(value: float, margin: float) -> str:
    """The expectation for a measured value: >= v - m|v| (v >= 0), <= v + m|v| (v < 0)."""
    if not math.isfinite(value):
        raise ValueError(f"no bound for the non-finite value {value!r}")
    if value >= 0:
        return f">= {_floor3(value - margin * abs(value)):.3f}"
    return f"<= {_ceil3(value + margin * abs(value)):.3f}"


def ratio_bound(ratio: float, margin: float) -> str:
    """The expectation for a composition ratio r (> 1): >= 1 + (r - 1)(1 - m)."""
    if not math.isfinite(ratio):
        raise ValueError(f"no bound for the non-finite ratio {ratio!r}")
    return f">= {_floor3(1 + (ratio - 1) * (1 - margin)):.3f}"


def _q(value: Any) -> str:
    """A YAML flow value: strict JSON, which is valid YAML (a NaN or infinite number is refused)."""
    return strict_dumps(value, indent=None)


# ------------------------------------------------------------------ names and model paths
def model_short_name(ref: str) -> str:
    """The short name of a model reference: 'builtin:attn-only-2l' -> 'attn-only-2l', a path -> the name of
    its file (without .safetensors ...) or directory, 'hf:EleutherAI/pythia-70m' -> 'pythia-70m'."""
    _, rest = split_ref(ref)
    tail = PurePosixPath(rest.replace("\\", "/").rstrip("/") or "model").name
    stem, dot, suffix = tail.rpartition(".")
    return stem if dot and f".{suffix}" in MODEL_SUFFIXES and stem else tail


def spec_name(task: str, model_ref: str) -> str:
    """The spec's name: the task and the model's short name, sanitized (never a path)."""
    short = re.sub(r"[^A-Za-z0-9_.\-]+", "-", model_short_name(model_ref)).strip("-.")
    return re.sub(r"[^A-Za-z0-9_.\-]+", "-", f"{task}-{short or 'model'}").strip("-.")


def absolute_model(ref: str) -> str:
    """A reference to a local model (a path, `file:`, `hf:` or `tl:` PATH) with the path made absolute;
    any other reference unchanged."""
    scheme, rest = split_ref(ref)
    if scheme not in ("file", "hf", "tl") or not rest or not Path(rest).exists():
        return ref
    path = str(Path(rest).resolve())
    return path if ref == rest else f"{scheme}:{path}"


def _inside(path: str, spec_dir: str | Path) -> str | None:
    """An absolute path inside `spec_dir` (at any depth) as a POSIX path relative to it; else None."""
    if not Path(path).is_absolute():
        return None
    try:
        rel = Path(path).relative_to(Path(spec_dir).resolve())
    except ValueError:
        return None
    return None if str(rel) == "." else rel.as_posix()


def model_for_spec(ref: str, spec_dir: str | Path) -> str:
    """The `model:` of a spec written in `spec_dir`: a local model inside that directory as a path relative
    to it (specs read relative paths from their directory first); anything else unchanged."""
    scheme, rest = split_ref(ref)
    if scheme not in ("file", "hf", "tl") or not rest:
        return ref
    rel = _inside(rest, spec_dir)
    if rel is None:
        return ref
    return rel if ref == rest else f"{scheme}:{rel}"


def task_for_spec(path: str, spec_dir: str | Path) -> str:
    """The `task:` of a spec written in `spec_dir`: the task file's path relative to it when the file lies
    inside it (at any depth), else the absolute path (the same rule as for model paths)."""
    return _inside(path, spec_dir) or path


def _replace_line(text: str, old: str, new: str) -> str:
    return "\n".join(new if line == old else line for line in text.split("\n"))


def spec_text_at(circuit: Circuit, path: str | Path) -> str:
    """The circuit's spec as written to `path`: its `model:` (`model_for_spec`) and `task:`
    (`task_for_spec`) relative to the spec's directory when they lie inside it."""
    text, spec_dir = circuit.spec_text, Path(path).parent
    moved = model_for_spec(circuit.model, spec_dir)
    if moved != circuit.model:
        text = _replace_line(text, f"model: {_q(circuit.model)}", f"model: {_q(moved)}")
    if circuit.task_file:
        task = task_for_spec(circuit.task_file, spec_dir)
        if task != circuit.task_file:
            text = _replace_line(text, f"task: {_q(circuit.task_file)}", f"task: {_q(task)}")
    return text


# ------------------------------------------------------------------ the checks
def _top_node(circuit: Circuit):
    """The node whose removal alone costs most (an undefined effect counts least)."""
    return max(circuit.nodes, key=lambda n: n.effect if not math.isnan(n.effect) else -math.inf)


def _task_checks(circuit: Circuit) -> list[dict]:
    """A task file's checks besides detectors, composition and faithfulness: the task is solved; patching the
    top node, every node and every kept edge with the corrupted prompts' activations (normalised effects)."""
    checks: list[dict] = [{"id": "task-solved", "kind": "metric", "metric": circuit.metric, "_rule": "better",
                           "_what": "clean run"}]

    def patch(cid: str, target: list[str], what: str) -> dict:
        return {"id": cid, "kind": "intervention", "intervention": "corrupted", "target": target,
                "metric": circuit.metric, "_rule": "bound", "_what": what, "_key": "normalised"}

    if circuit.nodes:
        top = _top_node(circuit)
        checks.append(patch(f"patch-{top.name.lower()}", [top.name], "normalised effect"))
    if len(circuit.nodes) > 1:
        checks.append(patch("patch-circuit-nodes", [n.name for n in circuit.nodes], "normalised effect"))
    if circuit.edges:
        checks.append(patch("patch-circuit-edges", [e.name for e in circuit.edges], "normalised effect"))
    return checks


def plan_checks(circuit: Circuit, role_detectors: Sequence[str]) -> list[dict]:
    """The checks to write, as spec mappings without `expect`; `_rule` (bound, better or ratio), `_what`
    (what the measured value is) and `_key` (the expectation's key) are for the writer."""
    checks: list[dict] = []
    roles = {n.role for n in circuit.nodes}
    for role in role_detectors:
        if role in roles:
            checks.append({"id": f"{role.replace('_', '-')}-heads", "kind": "detector", "detector": role,
                           "_rule": "bound", "_what": "lowest node"})
    for kind in ("Q", "K", "V"):
        edges = [e for e in circuit.edges if e.kind == kind and e.composition is not None
                 and e.composition >= MIN_COMPOSITION_RATIO]
        if edges:
            checks.append({"id": f"{kind.lower()}-composition", "kind": "composition",
                           "edges": [e.name for e in edges], "_rule": "ratio", "_what": "lowest edge"})
    if circuit.task_file:
        checks += _task_checks(circuit)
        checks.append({"id": "faithfulness", "kind": "faithfulness", "ablation": circuit.ablation,
                       "metric": circuit.metric, "_rule": "bound", "_what": "fraction recovered"})
        return checks
    prev = [n.name for n in circuit.nodes if n.role == "previous_token"]
    if prev:
        checks.append({"id": "ablate-previous-token-heads", "kind": "intervention", "intervention": "zero",
                       "target": prev, "metric": circuit.metric, "_rule": "bound", "_what": "change"})
    elif circuit.nodes:
        top = _top_node(circuit)
        checks.append({"id": f"ablate-{top.name.lower()}", "kind": "intervention", "intervention": "zero",
                       "target": [top.name], "metric": circuit.metric, "_rule": "bound", "_what": "change"})
    if circuit.edges:
        checks.append({"id": "patch-circuit-edges", "kind": "intervention", "intervention": "mean",
                       "target": [e.name for e in circuit.edges], "metric": circuit.metric, "_rule": "bound",
                       "_what": "change"})
    checks.append({"id": "faithfulness", "kind": "faithfulness", "ablation": "mean", "metric": circuit.metric,
                   "_rule": "bound", "_what": "fraction recovered"})
    return checks


def purpose(check: dict) -> str:
    """What a planned check measures, in words ('zero-ablating L0H0, L0H2: change in loss')."""
    kind = check["kind"]
    if kind == "detector":
        return f"the {check['detector']} scores of the heads with that role"
    if kind == "composition":
        return f"the composition of the edges {', '.join(check['edges'])}"
    if kind == "intervention" and check["intervention"] == "corrupted":
        return (f"patching {', '.join(check['target'])} with the corrupted prompts' activations: normalised effect "
                f"on {check['metric']}")
    if kind == "intervention":
        return f"{check['intervention']}-ablating {', '.join(check['target'])}: change in {check['metric']}"
    if kind == "faithfulness":
        return f"the fraction of {check['metric']} the circuit's nodes recover"
    if kind == "metric":
        return f"{check['metric']} on the clean prompts"
    return kind


# ------------------------------------------------------------------ rendering
def _expect_yaml(check: dict, expect: str) -> str:
    if check["kind"] == "composition":
        return f"{{ratio_to_baseline: {_q(expect)}}}"
    if check["kind"] == "intervention":
        return f"{{{check.get('_key', 'change')}: {_q(expect)}}}"
    return _q(expect)


def _plain(text: str) -> str:
    """A string as a YAML value: plain when YAML reads it back as that string (previous_token), else quoted."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text) and yaml.safe_load(text) == text:
        return text
    return _q(text)


def _pct(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.1f}%"


def _node_comment(circuit: Circuit, node) -> str:
    """Why a node has its role (or none), its scores, and what removing it costs."""
    scores = ", ".join(f"{k} {v:.3f}" for k, v in node.scores.items())
    if parse_component(node.name).kind == "mlp":
        why = "MLP (no detector role)"
    elif node.role:
        why = scores
    else:
        why = f"no detector role (every role score < {circuit.role_threshold:g})" + (f": {scores}" if scores else "")
    return f"{why}; removing it alone loses {_pct(node.effect)} of the effect"


def _header(circuit: Circuit, name: str, omitted: dict[str, tuple[float, str]]) -> list[str]:
    """The comment lines on top of the spec: how the circuit was found and how thresholds were set."""
    m = circuit.margin
    if circuit.task_file:
        how = ["# Pruning: greedy rounds of batched sweeps remove components (replaced by their activations",
               "# on the task's corrupted prompts, row by row) and then Q/K/V edges (path-patched the same way)",
               f"# while the circuit recovers >= {circuit.target:g} of the task metric {circuit.metric!r}",
               f"# ((ablated - circuit) / (ablated - clean)): clean {circuit.metric_clean:.4f}, corrupted prompts "
               f"{circuit.metric_corrupted:.4f},"]
    else:
        how = ["# Pruning: greedy rounds of batched sweeps remove components (mean-ablated) and then",
               f"# Q/K/V edges (mean-patched) while the circuit recovers >= {circuit.target:g} of the task",
               f"# metric {circuit.metric!r} ((ablated - circuit) / (ablated - clean)): clean "
               f"{circuit.metric_clean:.4f},"]
    lines = [
        f"# {name}: a circuit found by `circuitry discover` for the task {circuit.task!r}.",
        *how,
        (f"# every component {'replaced' if circuit.task_file else 'ablated'} {circuit.metric_ablated:.4f}; "
         f"the nodes recover "
         f"{circuit.recovered_nodes:.3f}, the nodes with only"),
        f"# the edges below {circuit.recovered:.3f}.",
    ]
    if circuit.whole_model:
        lines.append("# Every component is needed: the circuit is the whole model, so nothing is ablated and it "
                     "recovers the metric by definition.")
    lines += [
        f"# Thresholds: from the values measured on this model with margin m = {m:g}: a measured value v",
        "# gives '>= v - m|v|' (a negative change: '<= v + m|v|'), rounded outwards to 3 decimals; a",
        "# composition ratio r (score / random baseline) gives 'ratio_to_baseline >= 1 + (r - 1)(1 - m)'.",
    ]
    if circuit.task_file:
        better = "'<= v + m|v|' (lower is better)" if circuit.lower_is_better else "'>= v - m|v|' (higher is better)"
        lines.append(f"# The task's metric on the clean prompts v gives {better}.")
    lines += [f"# Not written: check {cid!r}, measured {v:.4g} ({why})." for cid, (v, why) in omitted.items()]
    return lines


def render(circuit: Circuit, checks: list[dict], expects: dict[str, str], name: str,
           measured: dict[str, float] | None = None, omitted: dict[str, tuple[float, str]] | None = None) -> str:
    """The spec's YAML text, with comments on how it was found and how thresholds were set."""
    lines = [
        *_header(circuit, name, omitted or {}),
        "apiVersion: circuitry/v1",
        "kind: CircuitSpec",
        "metadata:",
        f"  name: {_q(name)}",
        f"  description: {_q(_description(circuit))}",
        f"  tags: {_q(['discovered', circuit.task])}",
        f"model: {_q(circuit.model)}",
        *([f"task: {_q(circuit.task_file)}"] if circuit.task_file else
          [f"data: {_q(dict(circuit.data))}", f"reference_data: {_q(dict(circuit.reference_data))}"]),
        "circuit:",
        "  nodes:",
    ]
    lines += [f"    {n.name}: {_plain(n.role)}  # {_node_comment(circuit, n)}" for n in circuit.nodes]
    if circuit.edges:
        lines.append("  edges:")
        for e in circuit.edges:
            comp = f"composition {e.composition:.2f}x baseline; " if e.composition is not None else ""
            lines.append(f"    - {e.name}  # {comp}patching it alone loses {_pct(e.effect)} of the effect")
    lines.append("checks:")
    for c in checks:
        lines.append(f"  - id: {c['id']}")
        lines += [f"    {key}: {value if isinstance(value, str) else _q(value)}" for key, value in c.items()
                  if key != "id" and not key.startswith("_")]
        comment = ""
        if measured is not None and c["id"] in measured:
            comment = f"  # measured ({c['_what']}): {measured[c['id']]:.4g}"
        lines.append(f"    expect: {_expect_yaml(c, expects[c['id']])}{comment}")
    return "\n".join(lines) + "\n"


def _description(circuit: Circuit) -> str:
    roles: dict[str, list[str]] = {}
    for n in circuit.nodes:
        roles.setdefault(n.role or "no role", []).append(n.name)
    parts = [f"{role} {', '.join(ns)}" for role, ns in roles.items()]
    kinds = sorted({e.kind for e in circuit.edges})
    edges = f"; {len(circuit.edges)} {'/'.join(kinds)} edges" if circuit.edges else ""
    return (f"Discovered circuit for {circuit.task}: {'; '.join(parts)}{edges}; recovers "
            f"{circuit.recovered_nodes:.2f} of {circuit.metric} (nodes only).")


# ------------------------------------------------------------------ the draft's problems in the user's terms
def data_ref(data: dict) -> str:
    """A data mapping as a `--data` reference: 'repeated:batch=64,seq_len=10'."""
    params = ",".join(f"{k}={v}" for k, v in data.items() if k != "name")
    return f"{data.get('name', '?')}:{params}" if params else str(data.get("name", "?"))


def _in_user_terms(error: SpecError, circuit: Circuit, checks: list[dict], name: str) -> str:
    """One problem of the draft spec, told by what caused it rather than where the draft says it."""
    path, message = tuple(error.path or ()), error.message
    head = path[0] if path else None
    if head == "data":
        return f"the data {data_ref(dict(circuit.data))}: {message}"
    if head == "reference_data":
        return f"the reference data for mean ablations {data_ref(dict(circuit.reference_data))}: {message}"
    if head == "model":
        return f"the model {circuit.model}: {message}"
    if head == "task":
        return f"the task file {circuit.task_file}: {message}"
    if head == "metadata":
        return f"the spec's name {name!r}: {message}"
    if head == "checks" and len(path) > 1 and isinstance(path[1], int) and path[1] < len(checks):
        check = checks[path[1]]
        return f"the check {check['id']!r} ({purpose(check)}): {message}"
    if head == "circuit":
        return f"the circuit found ({', '.join(n.name for n in circuit.nodes)}): {message}"
    return message


def _user_error(exc: SpecError, circuit: Circuit, checks: list[dict], name: str) -> UsageError:
    """The draft's SpecError (one or several) as a UsageError in the user's terms."""
    errors = getattr(exc, "errors", None) or [exc]
    lines = list(dict.fromkeys(_in_user_terms(e, circuit, checks, name) for e in errors))
    return UsageError(f"cannot measure the checks of the discovered circuit of task {circuit.task!r} on "
                      f"{circuit.model}:\n" + "\n".join(lines))


def _rewarn(found: list[str]) -> None:
    """The draft's warnings again, without its `<string>:line:col`."""
    for message in found:
        bare = re.sub(r"^<string>:\d+:\d+: ", "", message)
        warn(message if bare == message else f"measuring the discovered spec: {bare}")


# ------------------------------------------------------------------ measuring
def _draft_report(circuit: Circuit, model, checks: list[dict], name: str, manager):
    """verify on the draft spec (placeholder expectations): the report with its shared run."""
    draft = render(circuit, checks, {c["id"]: PLACEHOLDER for c in checks}, name)
    with collecting() as found:
        try:
            report = verify(load_spec(text=draft, manager=manager), model=model, manager=manager)
        except SpecError as exc:
            raise _user_error(exc, circuit, checks, name) from None
    _rewarn(found)
    return report


def measure_on(run: VerifiedRun, spec: CircuitSpec) -> list:
    """The results of `spec`'s checks on an existing verified run of the same model and data: its clean run,
    reference batch and swept values are reused, so no model runs again. Every sweep a check plans must
    already be in the run (the spec's checks are the run's, with other expectations)."""
    again = run.for_spec(spec)
    results = []
    for check in spec.checks:
        kind = run.manager.get("circuitry_check_kinds", check.kind)
        plan = kind.plan(again, check)
        missing = [s.key for s in plan.sweeps if s.key not in again.swept]
        if missing:
            raise CircuitryError(f"internal error: check {check.id!r} needs sweeps the verified run does not "
                                 f"hold: {', '.join(missing)}")
        results.append(kind.measure(again, check, plan))
    return results


def _expectation(check: dict, value: float, circuit: Circuit) -> str:
    """The bound of a measured value by the check's rule (`bound`, `ratio_bound` or `better_bound`)."""
    if check["_rule"] == "ratio":
        return ratio_bound(value, circuit.margin)
    if check["_rule"] == "better":
        return better_bound(value, circuit.margin, circuit.lower_is_better)
    return bound(value, circuit.margin)


def build_spec(circuit: Circuit, model, role_detectors: Sequence[str], name: str,
               manager) -> tuple[str, list[MeasuredCheck]]:
    """(spec text, measured checks): draft spec -> verify measures each check -> thresholds -> the written
    spec checked on the same verified run."""
    checks = plan_checks(circuit, role_detectors)
    report = _draft_report(circuit, model, checks, name, manager)
    measured = {c.id: (math.nan if c.value is None else float(c.value)) for c in report.checks}
    omitted: dict[str, tuple[float, str]] = {}
    for c in checks:
        value = measured[c["id"]]
        if not math.isfinite(value):
            warn(f"discover: check {c['id']!r} ({purpose(c)}) measured {value!r} on {circuit.model}, no finite "
                 f"value to bound: it is left out of the spec")
            omitted[c["id"]] = (value, "no finite value to bound")
        elif c.get("_key") == "normalised" and abs(value) < MIN_NORMALISED:
            omitted[c["id"]] = (value, f"the patch carries less than {MIN_NORMALISED:g} of the clean-corrupted "
                                       f"difference: no claim to make")
    kept = [c for c in checks if c["id"] not in omitted]
    if not kept:
        raise CircuitryError(f"no check of the discovered circuit measured a finite value on {circuit.model}: "
                             f"no spec written")
    expects = {c["id"]: _expectation(c, measured[c["id"]], circuit) for c in kept}
    text = render(circuit, kept, expects, name, measured, omitted)
    try:
        written = load_spec(text=text, manager=manager)
    except SpecError as exc:
        raise _user_error(exc, circuit, kept, name) from None
    failed = [r for r in measure_on(report.run, written) if not r.passed]
    if failed:
        raise CircuitryError("internal error: the discovered spec fails on the run it was measured on: " +
                             "; ".join(f"{r.id} measured {r.value!r}, expected {r.expect}" for r in failed))
    return text, [MeasuredCheck(c["id"], c["kind"], measured[c["id"]], expects[c["id"]]) for c in kept]
