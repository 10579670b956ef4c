"""Property-based tests (hypothesis) of the spec loader, the spec format and the data parameters.

Every spec the strategies below make is run through `circuitry verify` in this process
(`circuitry.cli.main`) and must end with exit 0 (every check holds), 1 (a check failed) or 2 (the
spec is wrong), where exit 2 prints only located errors: every error line starts with
`error: FILE:LINE:COL: ` with a mark inside the file, and stderr holds nothing but error and warning
lines, without control characters. Never exit 3, never a traceback, never a hang (each example runs
under an alarm, `time_limit`), never an allocation above the memory budget: CIRCUITRY_MEMORY_BUDGET is
64 MB here, so large data is refused before it is generated, and the growth of the peak resident
memory during each example must stay within a few budgets (MEMORY_LIMIT).

Strategies:

- generated: specs built from the format: random subsets of the nodes of `builtin:attn-only-2l`
  (2 layers x 4 heads, attention-only, 65 tokens, 64 positions) and names it lacks, edges of every
  kind (wrong ones too), checks of every kind with random options and expectations, and data
  parameters with extreme values (0, negative, 10**30, 2**63, floats, strings, lists, booleans,
  null, very long strings, unicode);
- data-params: the shipped induction spec with generated `data` and `reference_data`;
- text-mutations: the shipped specs (specs/*.yaml, with small batches) mutated as YAML text:
  lines deleted, duplicated, swapped or re-indented, characters, tags (`!!python/object`,
  `!!float abc`), anchors and aliases (recursive ones too), deep nesting inserted;
- tree-mutations: the shipped specs parsed, then values replaced by arbitrary values, keys dropped
  and unknown keys added.

Data files beside the spec (`write_data_files`) include broken ones, a symbolic link to /dev/zero and
a named pipe. Each defect the fuzzer found has its smallest spec in REGRESSIONS.

Profiles: `spec-fuzz` (the default run: a few hundred examples in a few seconds) and
`spec-fuzz-ci` (the slow test, `pytest --runslow`: 500 examples per strategy, 2,000 in all). Both are derandomized, so
a failure reproduces, and neither writes a hypothesis database. The number of examples of each
strategy and the exit codes they ended with are printed.
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import json
import os
import re
import shutil
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from circuitry.cli import main

REPO = Path(__file__).resolve().parents[1]
SPEC_FILES = sorted((REPO / "specs").glob("*.yaml"))
NEOX = REPO / "circuitry" / "builtin" / "neox-induction"

BUDGET = "64MB"  # CIRCUITRY_MEMORY_BUDGET while fuzzing: the shipped specs (batches of 64) fit in it
BUDGET_BYTES = 64 * 10**6
# Each large allocation is checked against the budget, and a run may hold a few at once (the clean run,
# the reference run, a sweep pass, a decomposition), plus what the interpreter and the allocator keep.
MEMORY_LIMIT = 4 * BUDGET_BYTES + 64 * 2**20  # growth of the peak resident memory during one example
EXAMPLE_SECONDS = 30  # an example still running after this long is a hang

_COMMON = dict(deadline=None, database=None, derandomize=True, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.large_base_example, HealthCheck.filter_too_much])
settings.register_profile("spec-fuzz", max_examples=60, **_COMMON)
settings.register_profile("spec-fuzz-ci", max_examples=500, **_COMMON)  # 2,000 in all, in about 2 minutes

# Error lines of exit 2 that need not be located in the spec file, as (prefix, why it is not about the
# spec file). None: the spec file exists and is named once, the only options are --json and -v, and
# the environment (memory budget, offline hub) is set here, so every error of these runs is about the
# spec's text; a missing spec file or a bad CIRCUITRY_MEMORY_BUDGET would be one.
NOT_ABOUT_THE_SPEC: tuple[tuple[str, str], ...] = ()

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # what may drive a terminal (tab and newline may not)
YAML_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")  # the line breaks YAML counts lines by
LOCATED = re.compile(r"error: (?P<file>.+?):(?P<line>\d+):(?P<col>\d+): ")


# ------------------------------------------------------------------ running one spec
class Hang(BaseException):
    """An example ran past EXAMPLE_SECONDS (a BaseException, so no `except Exception` swallows it)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise Hang in the block after `seconds` (SIGALRM). Native code that retries its system calls
    when a signal interrupts them (a blocking open() in Rust, say) never returns to Python: after twice
    the time, faulthandler prints every thread's stack and ends the process, so a hang fails the run
    instead of stalling it."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def alarm(signum, frame):
        raise Hang(f"the example ran over {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    faulthandler.dump_traceback_later(2 * seconds, exit=True, file=sys.__stderr__)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)


def _status_bytes(key: str) -> int | None:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in bytes; None elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_peak() -> int | None:
    """Start measuring the peak resident memory anew (Linux: clear_refs 5 resets VmHWM); the resident
    memory now, or None where the peak cannot be reset."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return None
    return _status_bytes("VmRSS")


def peak_rss() -> int:
    """The peak resident memory of this process (since `reset_peak`, where it works), in bytes; 0 where it
    cannot be read."""
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    try:
        import resource
    except ImportError:
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


@dataclass(frozen=True)
class Outcome:
    """What `circuitry verify` did with one spec."""

    code: int
    out: str
    err: str
    path: Path
    text: str

    def __repr__(self) -> str:
        return f"Outcome(code={self.code}, err={self.err[:300]!r})"

    def explain(self) -> str:
        return (f"exit {self.code}\n--- stderr\n{self.err[:5000]}--- stdout\n{self.out[-2000:]}"
                f"--- spec\n{self.text[:3000]}")


@dataclass
class Runner:
    """Runs specs through `circuitry verify` in a scratch directory and checks each outcome."""

    directory: Path
    baseline_rss: int = 0
    max_growth: int = 0  # the largest growth of the peak resident memory in one example, in bytes
    counts: Counter = field(default_factory=Counter)

    def run(self, text: str, flags: tuple[str, ...] = ()) -> Outcome:
        """Write `text` as a spec and verify it (stdout and stderr captured, under the hang alarm)."""
        path = self.directory / "spec.yaml"
        path.write_text(text, encoding="utf-8")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), time_limit(EXAMPLE_SECONDS):
            code = main(["verify", str(path), *flags])
        return Outcome(code, out.getvalue(), err.getvalue(), path, text)

    def check(self, text: str, flags: tuple[str, ...] = ()) -> Outcome:
        """Run `text` and assert the property; the outcome is counted by exit code."""
        start = reset_peak()
        outcome = self.run(text, flags)
        self.counts[outcome.code] += 1
        assert_property(outcome, "--json" in flags)
        grown = peak_rss() - (self.baseline_rss if start is None else start)
        self.max_growth = max(self.max_growth, grown)
        assert grown <= MEMORY_LIMIT, f"peak memory grew by {grown / 2**20:.0f} MiB\n{outcome.explain()}"
        return outcome


def assert_located(line: str, outcome: Outcome) -> None:
    """An error line names the spec file and a line:col inside it, or is about something else."""
    if any(line.startswith("error: " + prefix) for prefix, _ in NOT_ABOUT_THE_SPEC):
        return
    m = LOCATED.match(line)
    assert m and m["file"] == str(outcome.path), f"unlocated error line {line!r}\n{outcome.explain()}"
    lines = YAML_LINE_BREAK.split(outcome.text)
    row, col = int(m["line"]), int(m["col"])
    inside = 1 <= row <= len(lines) and 1 <= col <= len(lines[row - 1]) + 1
    assert inside or (row == len(lines) + 1 and col == 1), f"mark outside the file: {line!r}\n{outcome.explain()}"


def assert_property(outcome: Outcome, json_mode: bool = False) -> None:
    """Exit 0, 1 or 2; exit 2 with located errors only; stderr holds only error and warning lines."""
    assert "Traceback (most recent call last)" not in outcome.err + outcome.out, outcome.explain()
    assert outcome.code in (0, 1, 2), outcome.explain()
    lines = [line for line in outcome.err.splitlines() if line.strip()]
    strays = [line for line in lines if not line.startswith(("error: ", "warning: "))]
    assert not strays, f"stderr lines that are neither errors nor warnings: {strays}\n{outcome.explain()}"
    controls = CONTROL.findall(outcome.err)
    assert not controls, f"control characters on stderr: {controls}\n{outcome.explain()}"
    errors = [line for line in lines if line.startswith("error: ")]
    if outcome.code == 2:
        assert errors and not outcome.out, outcome.explain()
        for line in errors:
            assert_located(line, outcome)
    else:
        assert not errors, outcome.explain()
        if json_mode:
            assert json.loads(outcome.out)["passed"] is (outcome.code == 0), outcome.explain()


@pytest.fixture(scope="module")
def runner(tmp_path_factory, pytestconfig):
    """A Runner with a small memory budget, no network, data files beside the spec, warmed up."""
    directory = tmp_path_factory.mktemp("spec-fuzz")
    write_data_files(directory)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the batches are tiny: one thread is fastest, and fair to shared cores
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CIRCUITRY_MEMORY_BUDGET", BUDGET)
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.delenv("CIRCUITRY_DEBUG", raising=False)
        r = Runner(directory)
        for text in SHIPPED.values():  # imports and first model loads are not counted as growth
            r.run(text)
        r.baseline_rss = peak_rss()
        yield r
    torch.set_num_threads(threads)


def write_data_files(directory: Path) -> None:
    """Token files a `file` dataset may name: valid ones and broken ones; the shipped task files, which
    specs name relative to themselves (tasks/ioi.yaml)."""
    shutil.copytree(REPO / "specs" / "tasks", directory / "tasks")
    rows = [" ".join(str((7 * r + i) % 64) for i in range(12)) for r in range(4)]
    (directory / "tokens.txt").write_text("\n".join(rows) + "\n")
    (directory / "ragged.txt").write_text("1 2 3\n4 5\n")
    (directory / "out-of-vocab.txt").write_text("1 2 999\n")
    (directory / "long.txt").write_text(" ".join(["3"] * 200) + "\n")
    (directory / "empty.txt").write_text("")
    (directory / "garbage.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    (directory / "garbage.pt").write_bytes(b"PK\x03\x04 not a zip")
    (directory / "prompts.txt").write_text("a b c d\ne f g h\n")
    with contextlib.suppress(OSError, AttributeError, NotImplementedError):  # POSIX only
        (directory / "zero.txt").symlink_to("/dev/zero")  # read without end
        os.mkfifo(directory / "fifo.txt")  # opening it blocks until a writer comes


# ------------------------------------------------------------------ the shipped specs, small
def shrink(text: str) -> str:
    """A shipped spec with small batches (cheap to run) and the hf example's model as an absolute path."""
    text = re.sub(r"batch: \d+", "batch: 4", text)
    return text.replace("hf:circuitry/builtin/neox-induction", f"hf:{NEOX}")


SHIPPED = {p.name: shrink(p.read_text(encoding="utf-8")) for p in SPEC_FILES}
BASE_SPEC = """\
apiVersion: circuitry/v1
kind: CircuitSpec
metadata:
  name: t
model: builtin:attn-only-2l
data: {name: repeated, seq_len: 10, batch: 4, seed: 1}
circuit:
  nodes:
    L0H0: previous_token
    L1H3: induction
  edges:
    - L0H0 -> L1H3 (K)
checks:
  - id: prev
    kind: detector
    detector: previous_token
    expect: ">= 0.9"
"""


# ------------------------------------------------------------------ values
HEADS = [f"L{layer}H{head}" for layer in range(2) for head in range(4)]
BAD_NODES = ["L2H0", "L0H4", "L9H9", "M0", "M1", "embed", "pos_embed", "logits", "L00H01", "l0h0", " L0H0 ",
             "L-1H0", "", "H0", "L" + "9" * 30 + "H0", "L0H" + "9" * 5000, "M" + "9" * 4400]
DETECTORS = ["previous_token", "induction", "copying", "duplicate_token", "composition", "previous_tokn", ""]
METRICS = ["loss", "loss_all", "correct_logit", "logit_diff", "kl", "los", ""]
INTERVENTIONS = ["zero", "mean", "resample", "pattern_preserving", "zer", ""]
KINDS = ["detector", "composition", "intervention", "faithfulness", "decomposition"]
EDGE_KINDS = ["Q", "K", "V", "mlp_in", "direct", "k", "X", "", "Q|K"]
INTS = [0, -1, 1, 2, 3, 7, 63, 64, 65, 100, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30, -(10**30)]
STRINGS = ["", " ", "10", "ten", "nan", "inf", "1e3", "-5", "0x10", "true", "~", "null", "a\nb", "a\x00b",
           "\u2028", "\x85", "\ufeff", "é", "ünïcödé ☃ 𝔘", "x" * 10_000, "9" * 5000, "L0H0", "L0H0 -> L1H3 (K)",
           ">= 0.9", "correct", "all", "predictable", "builtin:attn-only-2l", "tokens.txt", "ragged.txt",
           "out-of-vocab.txt", "long.txt", "empty.txt", "garbage.npy", "garbage.pt", "prompts.txt", "nothere.txt",
           "zero.txt", "fifo.txt", "/dev/zero",
           "../x.pt", "/dev/zero", "/", ".", "[", "{", ":", "!!python/object", "*a", "&a", "%", "@", "`"]
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 0.5, 1e-300, 1e308, 2.0**63])
SCALARS = st.one_of(st.none(), st.booleans(), st.sampled_from(INTS), st.integers(), FLOATS,
                    st.sampled_from(STRINGS), st.text(max_size=12))
KEYS = st.sampled_from(["name", "kind", "id", "expect", "nodes", "edges", "role", "seed", "batch", "x", "",
                        "apiVersion", "<<", "chekcs", "é"]) | st.text(max_size=8)
ANY = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
                   max_leaves=8)


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """`good` three times in four, `bad` otherwise."""
    return st.one_of(good, good, good, bad)


def maybe(p_present: int = 3) -> st.SearchStrategy:
    """True p_present times in p_present + 1."""
    return st.integers(0, p_present).map(bool)


NODE = mostly(st.sampled_from(HEADS), st.sampled_from(BAD_NODES) | st.text(max_size=10))
EXPECT_TEXT = st.sampled_from([">= 0.9", ">= 0", "> -1e9", "< 0.5", "<= 1e6", "== 1 +- 0.05", "== 1.0 ± 0.5",
                               "0.5 .. 1.0", "-1e9 .. 1e9", "== 0", ">= abc", "1 .. 0", "", ">=", "== 1 +- -1",
                               "<= 1e309", ">= nan", ">=" + "1" * 100_000 + "x", "1" * 100_000 + " .. x",
                               "== " + "1" * 100_000 + "+-x"])
EXPECT = mostly(EXPECT_TEXT | FLOATS | st.lists(FLOATS, min_size=2, max_size=2), ANY)


@st.composite
def edge(draw, nodes: list[str]) -> Any:
    """An edge between circuit nodes (or anything), as a string or a mapping, of any kind."""
    pool = st.sampled_from(nodes + ["logits"]) if nodes else NODE
    sender, receiver = draw(mostly(pool, NODE)), draw(mostly(pool, NODE))
    kind = draw(st.sampled_from(EDGE_KINDS))
    form = draw(st.integers(0, 5))
    if form == 0:
        return {"from": sender, "to": receiver, "kind": kind}
    if form == 1:
        return draw(ANY)
    return f"{sender} -> {receiver} ({kind})"


def one_or_list(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return strategy | st.lists(strategy, min_size=0, max_size=4)


# ------------------------------------------------------------------ data parameters
SMALL = {"batch": st.integers(1, 6), "seq_len": st.integers(1, 12), "n_repeats": st.integers(1, 4),
         "seed": st.integers(0, 3), "n_ctx": st.integers(0, 64), "period": st.integers(0, 30),
         "repeat": st.integers(1, 3),
         "path": st.sampled_from(["tokens.txt", "prompts.txt", "tokens.txt", "prompts.txt", "zero.txt", "fifo.txt"]),
         "text": st.sampled_from(["a b c d", "hello world hello world"]) | st.lists(st.text(max_size=8), max_size=3),
         "separator": st.sampled_from(["", "|"]), "prepend_bos": st.booleans(), "truncate": st.booleans()}
DATASETS = {"repeated": ["batch", "seq_len", "n_repeats", "seed"], "periodic": ["batch", "n_ctx", "period", "seed"],
            "file": ["path"], "text": ["text", "path", "separator", "prepend_bos", "repeat", "truncate", "seed"]}
BIG = st.sampled_from(INTS) | st.integers(min_value=-(2**80), max_value=2**80)
EXTREME = st.one_of(BIG, BIG, st.integers(), FLOATS, st.sampled_from(STRINGS), st.booleans(), st.none(),
                    st.lists(SCALARS, max_size=3), ANY)


@st.composite
def data_params(draw, text_ok: bool = False) -> dict:
    """A `data` mapping: a dataset and some of its parameters, small ones, with none to three of the name, the
    parameters or an unknown key given extreme values."""
    names = list(DATASETS) if text_ok else ["repeated", "periodic", "file"]
    name = draw(st.sampled_from(names))
    out: dict[str, Any] = {"name": name}
    for key in draw(st.lists(st.sampled_from(DATASETS[name]), unique=True, max_size=4)):
        out[key] = draw(SMALL[key])
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 1, 2, 3]))):
        key = draw(st.sampled_from(["name", *DATASETS[name], *DATASETS[name], *DATASETS[name]]) | KEYS)
        if key == "name":
            out[key] = draw(st.sampled_from(["repeatd", "text", "", "nosuch"]) | SCALARS)
        else:
            out[key] = draw(EXTREME)
    if out.get("name") == "repeated" and draw(maybe(4)):
        del out["name"]  # the default dataset
    return out


# ------------------------------------------------------------------ checks
@st.composite
def check(draw, nodes: list[str], edges: list[Any], ids: st.SearchStrategy) -> dict:
    """One check of any kind with random options and an expectation (or anything)."""
    kind = draw(mostly(st.sampled_from(KINDS), st.sampled_from(["detectr", "", "Detector"]) | SCALARS))
    c: dict[str, Any] = {"id": draw(ids), "kind": kind}
    node = mostly(st.sampled_from(nodes), NODE) if nodes else NODE
    edge_value = mostly(st.sampled_from(edges), edge(nodes)) if edges else edge(nodes)
    options: dict[str, st.SearchStrategy] = {
        "detector": {"detector": mostly(st.sampled_from(DETECTORS), ANY), "nodes": one_or_list(node),
                     "role": st.sampled_from(["previous_token", "induction", "other", ""]) | ANY},
        "composition": {"edges": one_or_list(edge_value)},
        "intervention": {"intervention": st.sampled_from(INTERVENTIONS), "metric": st.sampled_from(METRICS),
                         "target": one_or_list(node | edge_value)},
        "faithfulness": {"ablation": st.sampled_from(INTERVENTIONS), "metric": st.sampled_from(METRICS),
                         "nodes": one_or_list(node)},
        "decomposition": {"path": node | st.sampled_from(["direct", "bias", "remainder", "M0"])
                          | st.lists(node, max_size=3),
                          "target": st.sampled_from(["correct", "5", "64", "65", "-1", "9" * 5000])
                          | st.sampled_from(INTS),
                          "positions": st.sampled_from(["predictable", "all", "some"])},
    }.get(kind if isinstance(kind, str) else "", {})
    required = {"detector": ["detector"], "intervention": ["intervention", "metric", "target"],
                "decomposition": ["path"]}.get(kind if isinstance(kind, str) else "", [])
    for key, strategy in options.items():
        if (key in required and draw(maybe(9))) or not draw(maybe(1)):
            c[key] = draw(mostly(strategy, ANY))
    keyed = {"composition": ["score", "ratio_to_baseline"],
             "intervention": ["change", "relative_change", "value"]}.get(kind if isinstance(kind, str) else "")
    expect = draw(EXPECT)
    if keyed and draw(maybe(1)):
        expect = {k: draw(EXPECT) for k in draw(st.lists(st.sampled_from([*keyed, "scor"]), min_size=1, max_size=2,
                                                         unique=True))}
    if draw(maybe(9)):
        c["expect"] = expect
    if not draw(maybe(6)):
        c[draw(st.sampled_from(["description", "unknown", "nodes", "metric"]))] = draw(ANY)
    return c


# ------------------------------------------------------------------ whole specs
def layer(head: str) -> int:
    return int(head[1])


ROLES = ["previous_token", "induction", "copying", "other"]
VALID_EXPECT = EXPECT_TEXT.filter(lambda e: e in (">= 0.9", ">= 0", "> -1e9", "< 0.5", "<= 1e6", "== 1 +- 0.05",
                                                 "== 1.0 ± 0.5", "0.5 .. 1.0", "-1e9 .. 1e9", "== 0")) \
    | st.floats(-10, 10) | st.tuples(st.floats(-10, 0), st.floats(0, 10)).map(list)


@st.composite
def valid_edge(draw, nodes: list[str], head_only: bool = False) -> Any:
    """An edge the model has between two circuit nodes (a later head reading Q/K/V), or into the logits."""
    pairs = [(a, b) for a in nodes for b in nodes if layer(a) < layer(b)]
    if pairs and (head_only or draw(st.integers(0, 3))):
        (sender, receiver), kind = draw(st.sampled_from(pairs)), draw(st.sampled_from(["Q", "K", "V"]))
    else:
        sender, receiver, kind = draw(st.sampled_from(nodes)), "logits", "direct"
    return {"from": sender, "to": receiver, "kind": kind} if draw(st.integers(0, 3)) == 0 else \
        f"{sender} -> {receiver} ({kind})"


@st.composite
def valid_check(draw, spec: dict, check_id: str) -> dict:
    """A check of a random kind that the model and the circuit can answer."""
    heads = st.sampled_from(HEADS)
    some_heads = heads | st.lists(heads, min_size=1, max_size=3, unique=True)
    kind = draw(st.sampled_from(KINDS))
    c: dict[str, Any] = {"id": check_id, "kind": kind}
    if kind == "detector":
        c["detector"] = draw(st.sampled_from(DETECTORS[:4]))
        if draw(st.booleans()):
            c["nodes"] = draw(some_heads)
        else:
            c["role"] = draw(st.sampled_from(sorted(set(spec["circuit"]["nodes"].values()))))
    elif kind == "composition":
        c["edges"] = draw(valid_edge(HEADS, head_only=True) | st.lists(valid_edge(HEADS, head_only=True), min_size=1,
                                                                        max_size=3))
    elif kind == "intervention":
        c["intervention"] = draw(st.sampled_from(INTERVENTIONS[:4]))
        target = heads if c["intervention"] == "pattern_preserving" else heads | valid_edge(HEADS)
        c["target"] = draw(target | st.lists(target, min_size=1, max_size=3))
        c["metric"] = draw(st.sampled_from(METRICS[:5]))
    elif kind == "faithfulness":
        for key, values in (("ablation", INTERVENTIONS[:4]), ("metric", METRICS[:5])):
            if draw(st.booleans()):
                c[key] = draw(st.sampled_from(values))
        if draw(st.booleans()):
            c["nodes"] = draw(some_heads)
    else:
        pair = st.tuples(st.sampled_from(HEADS[:4]), st.sampled_from(HEADS[4:])).map(list)
        c["path"] = draw(heads | st.sampled_from(["direct", "bias", "remainder"]) | pair)
        if draw(st.booleans()):
            c["target"] = draw(st.sampled_from(["correct", "5"]) | st.integers(0, 64))
        if draw(st.booleans()):
            c["positions"] = draw(st.sampled_from(["predictable", "all"]))
    keyed = {"composition": ["score", "ratio_to_baseline"], "intervention": ["change", "relative_change", "value"]}
    c["expect"] = draw(VALID_EXPECT)
    if kind in keyed and draw(st.booleans()):
        c["expect"] = {draw(st.sampled_from(keyed[kind])): c["expect"]}
    return c


@st.composite
def valid_spec(draw) -> dict:
    """A spec the format accepts and `builtin:attn-only-2l` can answer, with small data."""
    nodes = draw(st.lists(st.sampled_from(HEADS), min_size=1, max_size=6, unique=True))
    spec: dict[str, Any] = {
        "apiVersion": "circuitry/v1", "kind": "CircuitSpec",
        "metadata": draw(st.fixed_dictionaries({"name": st.text(max_size=20)},
                                               optional={"description": st.text(), "tags": st.lists(st.text())})),
        "model": "builtin:attn-only-2l",
        "data": {"name": "repeated", "batch": draw(st.integers(1, 6)), "seq_len": draw(st.integers(1, 12)),
                 "n_repeats": draw(st.integers(1, 4)), "seed": draw(st.integers(0, 2**63 - 1))},
        "circuit": {"nodes": {n: draw(st.sampled_from(ROLES) | st.fixed_dictionaries(
            {"role": st.sampled_from(ROLES)}, optional={"description": st.text()})) for n in nodes}},
    }
    plain_roles = {n: (r if isinstance(r, str) else r["role"]) for n, r in spec["circuit"]["nodes"].items()}
    spec["circuit"]["edges"] = draw(st.lists(valid_edge(nodes), max_size=4))
    if draw(st.booleans()):
        spec["reference_data"] = {"seed": draw(st.integers(0, 9))}
    roles_view = {**spec, "circuit": {**spec["circuit"], "nodes": plain_roles}}
    n_checks = draw(st.integers(1, 3))
    spec["checks"] = [draw(valid_check(roles_view, f"check-{i}")) for i in range(n_checks)]
    return spec


@st.composite
def corrupted_spec(draw) -> dict:
    """A valid spec with one to three values replaced, keys dropped or unknown keys added."""
    return mutate_tree(draw, draw(valid_spec()))


@st.composite
def wild_spec(draw) -> dict:
    """A spec built from the format with every part drawn from good and bad values alike."""
    nodes = draw(st.lists(NODE, max_size=6, unique=True))
    roles = st.sampled_from(["previous_token", "induction", "copying", "other", ""])
    node_map = {n: draw(mostly(roles | st.fixed_dictionaries({"role": roles}, optional={"description": st.text()}),
                               ANY)) for n in nodes}
    edges = draw(st.lists(edge([n for n in nodes if isinstance(n, str)]), max_size=5))
    ids = mostly(st.sampled_from(["a", "b", "c", "d", "e"]), st.text(max_size=6) | SCALARS)
    spec: dict[str, Any] = {
        "apiVersion": draw(mostly(st.just("circuitry/v1"), st.sampled_from(["circuitry/v2", ""]) | SCALARS)),
        "kind": draw(mostly(st.just("CircuitSpec"), SCALARS)),
        "metadata": draw(mostly(st.fixed_dictionaries({"name": st.text(max_size=20)},
                                                      optional={"description": st.text(), "tags": st.lists(st.text()),
                                                                "authors": ANY}), ANY)),
        "model": draw(mostly(st.just("builtin:attn-only-2l"),
                             st.sampled_from(["builtin:attn-only-3l", "builtin:", "nosuch:x", "model.safetensors",
                                              "tokens.txt", ".", "", "hf:", "hf:not/cached", "a\x00b",
                                              f"hf:{NEOX}", f"file:{NEOX}"]) | SCALARS)),
        "data": draw(data_params()),
        "reference_data": draw(data_params()),
        "circuit": {"nodes": node_map, "edges": edges},
        "checks": draw(st.lists(check(nodes, edges, ids), min_size=1, max_size=4)),
    }
    for key in list(spec):
        if not draw(maybe(9 if key != "reference_data" else 1)):
            del spec[key]
    if not draw(maybe(9)):
        spec["circuit"] = draw(ANY)
    return spec


generated_spec = st.one_of(valid_spec(), corrupted_spec(), wild_spec())


@st.composite
def dumped(draw, spec_strategy: st.SearchStrategy) -> str:
    """A spec as YAML text, in block or flow style."""
    return yaml.safe_dump(draw(spec_strategy), sort_keys=False, allow_unicode=draw(st.booleans()),
                          default_flow_style=draw(st.sampled_from([False, None])),
                          width=draw(st.sampled_from([80, 10**6])))


@st.composite
def data_spec(draw) -> str:
    """The shipped induction spec, cut to one cheap check, with generated `data` and `reference_data`
    (on the hf example model, which has a tokenizer, when a dataset is `text`)."""
    spec = yaml.safe_load(SHIPPED["induction.yaml"])
    keep = draw(st.sampled_from(["previous-token-heads", "ablate-previous-token-head", "induction-path-share",
                                 "faithfulness", "patch-k-edges"]))
    spec["checks"] = [c for c in spec["checks"] if c["id"] == keep]
    spec["data"] = draw(data_params(text_ok=True))
    if draw(maybe(1)):
        spec["reference_data"] = draw(data_params(text_ok=True))
    else:
        del spec["reference_data"]
    text = any(isinstance(d, dict) and d.get("name") == "text" for d in (spec["data"], spec.get("reference_data")))
    if text or not draw(maybe(4)):
        spec["model"] = f"hf:{NEOX}"
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)


# ------------------------------------------------------------------ mutations of YAML text
TAGS = ["!!python/object:os.system", "!!python/object/apply:os.system ['true']", "!!python/name:os.system",
        "!!float abc", "!!int x", "!!int", "!!bool maybe", "!!binary", "!!set", "!!omap", "!!timestamp",
        "!!timestamp x", "!!null", "!!str", "!!map", "!!seq", "!custom", "!", "!<tag:yaml.org,2002:str>",
        "!!merge", "!!value", "!!yaml"]
SNIPPETS = [":", ": ", "-", "- ", "[", "]", "{", "}", ",", "#", "&a", "*a", "!", "|", ">", "'", '"', "%", "@", "`",
            "?", "\t", "\n", "\r", "\r\n", "\x00", "\x07", "\x85", "\u2028", "\ufeff", "\ud7ff", "é", "☃", "𝔘",
            "---", "...", "<<: *a", "~", "\\", "\\x", "\\u12", "\\U0010ffff", "x" * 5000]
VALUE_LINE = re.compile(r"^(\s*(?:- )?[^:#\s][^:#]*:)( .*)?$")


def lines_of(text: str) -> list[str]:
    return text.split("\n")


def delete_line(draw, lines: list[str]) -> list[str]:
    i = draw(st.integers(0, len(lines) - 1))
    return lines[:i] + lines[i + 1:]


def duplicate_line(draw, lines: list[str]) -> list[str]:
    i = draw(st.integers(0, len(lines) - 1))
    return lines[: i + 1] + lines[i:]


def swap_lines(draw, lines: list[str]) -> list[str]:
    i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
    lines = list(lines)
    lines[i], lines[j] = lines[j], lines[i]
    return lines


def reindent(draw, lines: list[str]) -> list[str]:
    i = draw(st.integers(0, len(lines) - 1))
    body = lines[i].lstrip(" ")
    indent = draw(st.sampled_from(["", " ", "  ", "   ", "    ", "      ", "\t", "  \t", " " * 40]))
    return lines[:i] + [indent + body] + lines[i + 1:]


def insert_text(draw, lines: list[str]) -> list[str]:
    text = "\n".join(lines)
    at = draw(st.integers(0, len(text)))
    snippet = draw(st.sampled_from(SNIPPETS) | st.text(max_size=4))
    return lines_of(text[:at] + snippet + text[at:])


def value_lines(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if VALUE_LINE.match(line)] or [0]


def replace_value(draw, lines: list[str], value: str) -> list[str]:
    """The value of a random `key: value` line replaced by `value` (YAML text)."""
    i = draw(st.sampled_from(value_lines(lines)))
    m = VALUE_LINE.match(lines[i])
    key = m.group(1) if m else ""
    return lines[:i] + [f"{key} {value}"] + lines[i + 1:]


def insert_tag(draw, lines: list[str]) -> list[str]:
    i = draw(st.sampled_from(value_lines(lines)))
    m = VALUE_LINE.match(lines[i])
    if not m:
        return lines
    tag = draw(st.sampled_from(TAGS))
    return lines[:i] + [f"{m.group(1)} {tag}{m.group(2) or ''}"] + lines[i + 1:]


def anchors(draw, lines: list[str]) -> list[str]:
    """An anchor on one value and an alias (or a merge key, or an undefined alias) at another."""
    i = draw(st.sampled_from(value_lines(lines)))
    m = VALUE_LINE.match(lines[i])
    if m and m.group(2):
        lines = lines[:i] + [f"{m.group(1)} &a{m.group(2)}"] + lines[i + 1:]
    use = draw(st.sampled_from(["*a", "*b", "[*a, *a]", "{x: *a}", "*a *a"]))
    if draw(st.booleans()):
        return replace_value(draw, lines, use)
    j = draw(st.integers(0, len(lines)))
    indent = draw(st.sampled_from(["", "  ", "    "]))
    return lines[:j] + [f"{indent}<<: *a"] + lines[j:]


def recursive_alias(draw, lines: list[str]) -> list[str]:
    return replace_value(draw, lines, draw(st.sampled_from(
        ["&a [*a]", "&a {x: *a}", "&a [1, [2, *a]]", "&a {x: [*a, 1]}", "&a\n  - *a", "&a [&b [*b, *a]]"])))


def laughs(draw, lines: list[str]) -> list[str]:
    """Aliases of aliases (a billion laughs) as one value."""
    levels = draw(st.integers(2, 12))
    value = "&l0 [x, x, x, x, x, x, x, x, x, x]"
    doc = [f"laugh{k}: &l{k} [" + ", ".join([f"*l{k - 1}"] * 10) + "]" for k in range(1, levels)]
    return replace_value(draw, lines, value) + doc


def deep_nesting(draw, lines: list[str]) -> list[str]:
    n = draw(st.sampled_from([10, 63, 64, 65, 100, 1000, 5000]))
    style = draw(st.integers(0, 3))
    value = {0: "[" * n + "x" + "]" * n, 1: "{a: " * n + "x" + "}" * n, 2: "[" * n,
             3: "\n" + "\n".join("  " * (k + 1) + "- " for k in range(min(n, 2000))) + "x"}[style]
    return replace_value(draw, lines, value)


def random_value(draw, lines: list[str]) -> list[str]:
    return replace_value(draw, lines, draw(st.sampled_from(
        ['"x" x', "'unclosed", '"unclosed', "[1, 2", "{a: 1", "> 0.9", "| x", "? x", "- x", "@x", "`x`", "%x",
         "1e999", "-.inf", ".nan", "0x1F", "0o17", "1_000", "2024-01-01", "2024-01-01T00:00:00Z", "yes", "No",
         "~", "null", "'" + "x" * 10_000 + "'", "9" * 5000, "'L0H" + "9" * 5000 + "'", "\"\\x00\"", "\"\\N\"",
         "\"\\uD800\"", "!!binary aGVsbG8="])))


def truncate(draw, lines: list[str]) -> list[str]:
    text = "\n".join(lines)
    return lines_of(text[: draw(st.integers(0, len(text)))])


def whole_text(draw, lines: list[str]) -> list[str]:
    """Changes of the whole text: CRLF line ends, a BOM, a directive, a second document, no final newline."""
    text = "\n".join(lines)
    change = draw(st.sampled_from(["crlf", "cr", "bom", "directive", "document", "strip", "end"]))
    text = {"crlf": text.replace("\n", "\r\n"), "cr": text.replace("\n", "\r"), "bom": "\ufeff" + text,
            "directive": "%YAML 1.1\n---\n" + text, "document": text + "\n---\nmore: 1\n", "strip": text.strip(),
            "end": text + "\n...\n"}[change]
    return lines_of(text)


TEXT_MUTATIONS: list[Callable[..., list[str]]] = [
    delete_line, duplicate_line, swap_lines, reindent, insert_text, insert_tag, anchors, recursive_alias, laughs,
    deep_nesting, random_value, truncate, whole_text]


@st.composite
def text_mutation(draw) -> str:
    """A shipped spec with one to three mutations of its YAML text."""
    lines = lines_of(SHIPPED[draw(st.sampled_from(sorted(SHIPPED)))])
    for _ in range(draw(st.integers(1, 3))):
        mutate = draw(st.sampled_from(TEXT_MUTATIONS))
        lines = mutate(draw, lines) or [""]
    return "\n".join(lines)


# ------------------------------------------------------------------ mutations of the parsed tree
def paths_of(value: Any, path: tuple = ()) -> list[tuple]:
    """Every key path in a tree of mappings and lists (the root included)."""
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths_of(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths_of(v, (*path, i))
    return out


def get_at(tree: Any, path: tuple) -> Any:
    for p in path:
        tree = tree[p]
    return tree


SPEC_VALUES = st.sampled_from(["L0H0", "L1H3", "L9H9", "M0", "logits", "L0H0 -> L1H3 (K)", "L1H3 -> L0H0 (K)",
                               "L0H0 -> logits (direct)", "L1H3 -> logits (K)", "previous_token", "induction",
                               "zero", "mean", "resample", "pattern_preserving", "loss", "kl", "logit_diff",
                               "detector", "composition", "intervention", "faithfulness", "decomposition",
                               ">= 0.9", "< 0.1", "correct", "direct", "bias", "remainder", "repeated",
                               "periodic", "file", "text"])


def mutate_tree(draw, tree: Any) -> Any:
    """One to three changes of a parsed spec: a value replaced, a key dropped, an unknown key added, a list
    item repeated."""
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths_of(tree)))
        op = draw(st.sampled_from(["replace", "replace", "drop", "add", "duplicate"]))
        parent = get_at(tree, path[:-1]) if path else None
        if op == "replace" or not path:
            new = draw(st.one_of(ANY, SPEC_VALUES, st.lists(SPEC_VALUES, max_size=3), EXTREME))
            if path:
                parent[path[-1]] = new
            else:
                tree = new
        elif op == "drop":
            del parent[path[-1]]
        elif op == "add" and isinstance(get_at(tree, path), dict):
            get_at(tree, path)[draw(KEYS)] = draw(ANY | SPEC_VALUES)
        elif op == "duplicate" and isinstance(parent, list):
            parent.append(parent[path[-1]])
        if not isinstance(tree, (dict, list)):
            break
    return tree


@st.composite
def tree_mutation(draw) -> str:
    """A shipped spec, parsed and changed (`mutate_tree`), as YAML text."""
    tree = mutate_tree(draw, yaml.safe_load(SHIPPED[draw(st.sampled_from(sorted(SHIPPED)))]))
    return yaml.safe_dump(tree, sort_keys=False, allow_unicode=draw(st.booleans()))


FLAGS = st.sampled_from([(), (), ("--json",), ("-v",)])
STRATEGIES: dict[str, st.SearchStrategy] = {
    "generated": st.tuples(dumped(generated_spec), FLAGS),
    "data-params": st.tuples(data_spec(), FLAGS),
    "text-mutations": st.tuples(text_mutation(), st.just(())),
    "tree-mutations": st.tuples(tree_mutation(), FLAGS),
}


# ------------------------------------------------------------------ the tests
def fuzz(runner: Runner, name: str, profile: str, pytestconfig) -> None:
    """Check the property on the examples of strategy `name` under a settings profile; report the count."""
    runner.counts.clear()
    runner.max_growth = 0

    @settings(settings.get_profile(profile))
    @given(STRATEGIES[name])
    def prop(case: tuple[str, tuple[str, ...]]) -> None:
        runner.check(*case)

    prop()
    counts = dict(sorted(runner.counts.items()))
    report = (f"spec fuzz [{name}, {profile}]: {sum(counts.values())} examples; "
              + ", ".join(f"exit {code}: {n}" for code, n in counts.items())
              + f"; peak memory growth at most {runner.max_growth / 2**20:.0f} MiB")
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n{report}")
    if name in ("generated", "data-params"):
        assert counts.get(0, 0) + counts.get(1, 0) > 0, f"no {name} spec ran its checks: {report}"


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_spec_fuzz(runner, name, pytestconfig):
    """The default run: a few hundred examples in all, in a few seconds."""
    fuzz(runner, name, "spec-fuzz", pytestconfig)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_spec_fuzz_ci(runner, name, pytestconfig):
    """CI (`pytest --runslow`): 500 examples per strategy."""
    fuzz(runner, name, "spec-fuzz-ci", pytestconfig)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_specs_run_small(runner, name):
    """The mutations start from specs that run: exit 0, or 1 for the deliberately wrong one."""
    outcome = runner.check(SHIPPED[name])
    assert outcome.code == (1 if name.startswith("wrong") else 0), outcome.explain()


# ------------------------------------------------------------------ defects the fuzzer found
REGRESSIONS = [
    # a key with a line break: the error message was two lines, the second one unlocated
    ("line-break-in-key", 'metadata:\n  "\\r": null\n', ":2:3: metadata.\\r: unknown key"),
    # a key with a terminal escape sequence: the raw escape reached the terminal in the key path
    ("escape-in-key", BASE_SPEC.replace("name: t", 'name: t\n  "\\e[2J": 1'), ":5:3: metadata.\\x1b[2J: unknown key"),
    # an edge mapping whose kind does not fit its receiver: an error without file, line or column
    ("edge-mapping-kind-for-logits", BASE_SPEC.replace("- L0H0 -> L1H3 (K)", "- {from: L0H0, to: logits, kind: Q}"),
     ":12:7: circuit.edges[0]: edge L0H0 -> logits (Q): logits read through direct, not Q"),
    # a character YAML refuses, after a line break that only YAML counts (U+2028): the mark counted "\n" only
    ("reader-error-after-u2028", "apiVersion: circuitry/v1\u2028kind: x\x00\n", ":2:8: invalid YAML: character #x0000"),
    # a number too long for int(): exit 3 (ValueError: Exceeds the limit (4300 digits))
    ("long-number-in-edge", BASE_SPEC.replace("L0H0 -> L1H3 (K)", "L0H0 -> L0H" + "9" * 5000 + " (Q)"),
     ":12:7: circuit.edges[0]: 'L0H0 -> L0H9999"),
    ("long-number-in-node", BASE_SPEC.replace("L1H3: induction", "? L1H" + "9" * 5000 + "\n    : induction")
     .replace("  edges:\n    - L0H0 -> L1H3 (K)\n", ""),
     ":10:7: circuit.nodes.L1H9999"),
    ("long-number-in-edge-mapping", BASE_SPEC.replace("- L0H0 -> L1H3 (K)", "- {from: L0H0, to: M" + "9" * 5000
                                                      + ", kind: mlp_in}"), "at most 9 digits, this one has 5000"),
    ("long-token-id", BASE_SPEC + "  - {id: d, kind: decomposition, path: L1H3, target: '" + "9" * 5000
     + "', expect: '>= 0'}\n", "checks[1].target: '9999"),
    # a period longer than the sequence: its whole block was drawn before being cut (320 MB for this
    # one, over the budget), or the allocation failed (exit 3 for period 2**31)
    ("periodic-long-period", BASE_SPEC.replace("{name: repeated, seq_len: 10, batch: 4, seed: 1}",
                                               "{name: periodic, batch: 4, period: 10000000}"),
     ":6:7: data: period 10000000 is longer than the 63 random tokens"),
    ("periodic-huge-period", BASE_SPEC.replace("{name: repeated, seq_len: 10, batch: 4, seed: 1}",
                                               "{name: periodic, period: 2147483648}"), "is longer than"),
    # data files that are devices or pipes: read without end (MemoryError, exit 3), or a hang
    ("data-from-a-device", BASE_SPEC.replace("{name: repeated, seq_len: 10, batch: 4, seed: 1}",
                                             "{name: file, path: zero.txt}"),
     ":6:26: data.path: parameter 'path' of dataset 'file': "),
    ("data-from-a-pipe", BASE_SPEC.replace("{name: repeated, seq_len: 10, batch: 4, seed: 1}",
                                           "{name: file, path: fifo.txt}"), "is a device, a pipe or a socket"),
    # a NUL character in a path: ValueError from the file system call (exit 3)
    ("nul-in-data-path", BASE_SPEC.replace("{name: repeated, seq_len: 10, batch: 4, seed: 1}",
                                           '{name: file, path: "a\\0b.txt"}'), "holds a NUL character"),
    # the text dataset tiled its prompt `repeat` times before any size check: OverflowError (exit 3), or
    # gigabytes for repeat 10**7 (fixed in the hf plugin)
    ("text-repeated-without-bound", BASE_SPEC.replace("model: builtin:attn-only-2l", f"model: hf:{NEOX}").replace(
        "{name: repeated, seq_len: 10, batch: 4, seed: 1}", "{name: text, text: a b c d, repeat: " + str(10**30) + "}"),
     "more than the model's context"),
    # an expectation of many digits: the number's regular expression backtracked over every split of
    # the digits (minutes for 100 000 digits)
    ("long-expectation", BASE_SPEC.replace('">= 0.9"', '">= ' + "1" * 100_000 + 'x"'),
     ":17:13: checks[0].expect: cannot read expectation"),
]


@pytest.mark.parametrize("name,text,message", REGRESSIONS, ids=[r[0] for r in REGRESSIONS])
def test_regressions(runner, name, text, message):
    """Each defect found by the fuzzer, as the smallest spec that showed it: now a located exit 2."""
    outcome = runner.check(text)
    assert outcome.code == 2 and message in outcome.err, outcome.explain()


def test_decomposition_over_the_budget_is_refused_with_the_other_problems(runner):
    """A decomposition over the memory budget is a problem found before any check runs (it was found
    only after the sweeps had run), so it is reported together with the spec's other problems."""
    text = BASE_SPEC.replace("seq_len: 10, batch: 4", "seq_len: 10, batch: 350") + (
        "  - {id: d, kind: decomposition, path: L1H3, expect: '>= 0'}\n"
        "  - {id: z, kind: intervention, intervention: zero, target: L9H9, metric: loss, expect: '>= 0'}\n")
    outcome = runner.check(text)
    errors = outcome.err.splitlines()
    assert outcome.code == 2 and len(errors) == 2, outcome.explain()
    assert ":18:5: checks[1]: the decomposition of 350 x 21 tokens would need" in errors[0], outcome.explain()
    assert ":19:61: checks[2].target: the model has no head L9H9" in errors[1], outcome.explain()


def test_sweep_passes_follow_the_memory_budget(runner):
    """Batched sweeps size their passes from CIRCUITRY_MEMORY_BUDGET (they used a fixed 2 GiB)."""
    from circuitry.budget import memory_budget
    from circuitry.interventions.sweep import default_max_batch
    from circuitry.sources import load_model

    cfg = load_model("builtin:attn-only-2l").cfg
    assert memory_budget() == BUDGET_BYTES
    assert default_max_batch(cfg, 21) == default_max_batch(cfg, 21, BUDGET_BYTES) < default_max_batch(cfg, 21, 2**31)
