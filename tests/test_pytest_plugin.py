"""The pytest plugin (circuitry.pytest_plugin, entry point pytest11): circuit specs run as tests.

Each test runs pytest on copies of the specs in a temporary directory (`pytester`) and checks the items
(one per check, named by its id), their outcomes against `verify` run directly on the same spec, the
failure messages (claim, measured value, expectation, spec:line found in the YAML text), how often
models load and clean runs happen (counted by wrapping circuitry.sources.load_model and
circuitry.interventions.clean_run), and the same outcomes under pytest-xdist.
"""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from circuitry.pytest_plugin import ModelCache, is_spec_file

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "specs"
# the specs run by the tests below; ioi-toy.yaml (19 checks, ~20 s) is only collected
FAST = ("induction.yaml", "induction-gpt2.yaml", "wrong-previous-token.yaml")


def spec_checks(path: Path) -> list[str]:
    """The check ids of a spec, read with plain YAML (not circuitry's loader)."""
    return [c["id"] for c in yaml.safe_load(path.read_text())["checks"]]


def line_of(path: Path, text: str) -> int:
    """The 1-based line of the first line of `path` containing `text`."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def outcomes(xml_path: Path) -> dict[str, str]:
    """{test id: passed | failed | xfailed | skipped} from a JUnit XML file."""
    out = {}
    for case in ET.parse(xml_path).iter("testcase"):
        classname = case.get("classname", "")  # specs.induction.yaml: the file's path with '/' written '.'
        name = f"{classname.replace('.', '/', classname.count('.') - 1)}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            out[name] = "failed"
        elif (skipped := case.find("skipped")) is not None:
            out[name] = "xfailed" if skipped.get("type") == "pytest.xfail" else "skipped"
        else:
            out[name] = "passed"
    return out


@pytest.fixture
def specs(pytester) -> Path:
    """A copy of specs/ (the fast specs and the task files) in pytester's directory."""
    dest = pytester.path / "specs"
    shutil.copytree(SPECS / "tasks", dest / "tasks")
    for name in FAST:
        shutil.copy(SPECS / name, dest / name)
    return dest


@pytest.fixture
def counted(monkeypatch) -> dict[str, list]:
    """Every model load (its reference) and every clean run of the runs inside the test."""
    import circuitry.interventions
    import circuitry.sources
    import circuitry.verify

    calls: dict[str, list] = {"loads": [], "clean_runs": [], "verified": []}
    load, clean_run, verify = circuitry.sources.load_model, circuitry.interventions.clean_run, circuitry.verify.verify

    depth = [0]  # a source may load through another (builtin:neox-induction through hf:): count the outer call

    def counting_load(ref, *args, **kwargs):
        if not depth[0]:
            calls["loads"].append(ref)
        depth[0] += 1
        try:
            return load(ref, *args, **kwargs)
        finally:
            depth[0] -= 1

    def counting_clean_run(*args, **kwargs):
        calls["clean_runs"].append(1)
        return clean_run(*args, **kwargs)

    def counting_verify(spec, *args, **kwargs):
        calls["verified"].append((Path(spec.file).name, [c.id for c in spec.checks]))
        return verify(spec, *args, **kwargs)

    monkeypatch.setattr(circuitry.sources, "load_model", counting_load)
    monkeypatch.setattr(circuitry.interventions, "clean_run", counting_clean_run)
    monkeypatch.setattr(circuitry.verify, "verify", counting_verify)
    return calls


def verified(path: Path, model_ref: str | None = None) -> dict:
    """{check id: CheckResult} of `verify` run directly on the spec (a model loaded for it alone)."""
    from circuitry.spec import load_spec
    from circuitry.verify import verify

    return {c.id: c for c in verify(load_spec(path), model_ref=model_ref).checks}


# ------------------------------------------------------------------ collection
def test_every_check_of_every_spec_is_an_item(pytester):
    shutil.copytree(SPECS, pytester.path / "specs")
    result = pytester.runpytest_inprocess("--collect-only", "-q", "specs")
    expected = [f"specs/{p.name}::{check}" for p in sorted(SPECS.glob("*.yaml")) for check in spec_checks(p)]
    assert [line for line in result.outlines if "::" in line] == expected
    assert result.ret == pytest.ExitCode.OK
    assert not any("tasks/" in line for line in result.outlines)  # task files (kind: Task) are not specs


def test_other_yaml_is_ignored(pytester):
    pytester.makefile(".yaml", deployment="apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n")
    pytester.makefile(".yml", a_list="- apiVersion: circuitry/v1\n- kind: CircuitSpec\n")
    pytester.makefile(".yaml", nested="metadata:\n  apiVersion: circuitry/v1\n")
    pytester.makefile(".yaml", mentions="description: written for circuitry/v1\n")
    pytester.makefile(".yaml", broken="key: [unclosed\n")
    pytester.makefile(".txt", not_yaml="apiVersion: circuitry/v1\nkind: CircuitSpec\n")
    shutil.copy(SPECS / "tasks" / "ioi.yaml", pytester.path / "task.yaml")
    result = pytester.runpytest_inprocess("--collect-only", "-q", ".")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    assert not any("::" in line for line in result.outlines)


@pytest.mark.parametrize("text, is_spec", [
    ("apiVersion: circuitry/v1\nkind: CircuitSpec\n", True),
    ('apiVersion: "circuitry/v1"   # the format\n', True),
    ("kind: CircuitSpec\r\napiVersion: 'circuitry/v1'\r\n", True),
    ("{apiVersion: circuitry/v1, kind: CircuitSpec}\n", True),
    ("apiVersion: circuitry/v1\nkind: Task\n", False),
    ("{apiVersion: circuitry/v1, kind: Task}\n", False),
    ("apiVersion: circuitry/v2\n", False),
    ("metadata:\n  apiVersion: circuitry/v1\n", False),
    ("{apiVersion: circuitry/v1\n", False),
])
def test_is_spec_file(tmp_path, text, is_spec):
    path = tmp_path / "x.yml"
    path.write_bytes(text.encode())
    assert is_spec_file(path) is is_spec
    assert not is_spec_file(path.rename(tmp_path / "x.json"))


# ------------------------------------------------------------------ running
def test_specs_pass_and_the_wrong_one_is_an_expected_failure(pytester, specs, counted):
    value = verified(SPECS / "wrong-previous-token.yaml")["l0h1-is-previous-token"].value
    for calls in counted.values():
        calls.clear()
    result = pytester.runpytest_inprocess("specs", "-rx", "--junitxml=out.xml")
    checks = {name: spec_checks(specs / name) for name in FAST}
    got = outcomes(pytester.path / "out.xml")
    wrong = {f"specs/wrong-previous-token.yaml::{c}": o for c, o in
             [("l0h1-is-previous-token", "xfailed"), ("l1h3-is-induction", "passed")]}
    assert got == {**{f"specs/{name}::{c}": "passed" for name in FAST[:2] for c in checks[name]}, **wrong}
    result.assert_outcomes(passed=len(checks["induction.yaml"]) + len(checks["induction-gpt2.yaml"]) + 1,
                           xfailed=1)
    assert result.ret == pytest.ExitCode.OK
    # the expected failure says why, with the value verify measures
    reason = yaml.safe_load((SPECS / "wrong-previous-token.yaml").read_text())["metadata"]["xfail"]
    result.stdout.fnmatch_lines([f"XFAIL specs/wrong-previous-token.yaml::l0h1-is-previous-token - {reason} "
                                 f"(measured {value:.4g}, expected >= 0.9)"])
    # one load per model for the session (builtin:attn-only-2l serves two specs with 12 checks), one
    # verification and one clean run per spec, with every check of the spec
    assert sorted(counted["loads"]) == ["builtin:attn-only-2l", "builtin:neox-induction"]
    assert sorted(counted["verified"]) == sorted((name, checks[name]) for name in FAST)
    assert len(counted["clean_runs"]) == len(FAST)


def test_a_wrong_claim_fails_with_its_value_and_line(pytester, counted):
    # the spec claims L1H2, which is no induction head, in place of L1H3
    spec = pytester.path / "mutated.yaml"
    spec.write_text((SPECS / "induction.yaml").read_text().replace("L1H3", "L1H2"))
    expected = verified(spec)
    failing = sorted(c for c, r in expected.items() if not r.passed)
    assert "induction-heads" in failing
    result = pytester.runpytest_inprocess("mutated.yaml")
    result.assert_outcomes(failed=len(failing), passed=len(expected) - len(failing))
    assert sorted(re.findall(r"^FAILED mutated\.yaml::(\S+)", result.stdout.str(), re.M)) == failing
    for check in failing:
        r = expected[check]
        result.stdout.fnmatch_lines([f"mutated.yaml:{line_of(spec, f'id: {check}')}: {check}: measured "
                                     f"{r.value:.4g}, expected {r.expect}", f"  claim:  {r.claim}"])
    heads = expected["induction-heads"].details["values"]
    assert set(heads) == {"L1H0", "L1H1", "L1H2"}
    result.stdout.fnmatch_lines([f"  values: L1H0 {heads['L1H0']:.4g}, L1H1 {heads['L1H1']:.4g}, "
                                 f"L1H2 {heads['L1H2']:.4g}"])
    assert "Traceback" not in result.stdout.str() and "raise " not in result.stdout.str()
    # -k selects checks; only the selected check is verified
    counted["verified"].clear()
    selected = pytester.runpytest_inprocess("mutated.yaml", "-k", "induction-heads and not copy")
    selected.assert_outcomes(failed=1, deselected=len(expected) - 1)
    assert counted["verified"] == [("mutated.yaml", ["induction-heads"])]


def test_a_spec_marked_xfail_whose_checks_all_hold_fails(pytester):
    spec = pytester.path / "holds.yaml"
    spec.write_text((SPECS / "wrong-previous-token.yaml").read_text().replace('">= 0.9"', '">= 0.05"'))
    assert all(r.passed for r in verified(spec).values())
    result = pytester.runpytest_inprocess("holds.yaml")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([f"holds.yaml:{line_of(spec, 'id: l0h1')}: l0h1-is-previous-token: the spec is "
                                 f"marked xfail (*), but every check holds (this one measured *, expected >= 0.05)"])


def test_an_invalid_spec_is_one_failing_item_with_located_messages(pytester):
    text = (SPECS / "induction.yaml").read_text()
    bad = pytester.path / "bad.yaml"
    bad.write_text(text.replace("detector: previous_token", "detector: previous_tokn")
                   .replace('">= 0.5"', '">= abc"', 1))
    broken = pytester.path / "broken.yaml"
    broken.write_text(text.replace("edges: [L0H0 -> L1H0 (V)", "edges: [L0H0 -> L1H0 (V)\n  junk: [x"))
    no_head = pytester.path / "nohead.yaml"
    no_head.write_text(text.replace("    L1H3: induction\n", "    L1H3: induction\n    L9H9: induction\n"))
    result = pytester.runpytest_inprocess("bad.yaml", "broken.yaml", "nohead.yaml", "-q")
    n_checks = len(spec_checks(SPECS / "induction.yaml"))
    result.assert_outcomes(failed=2 + n_checks)
    out = result.stdout.str()
    assert re.findall(r"^FAILED (\S+)::spec\b", out, re.M) == ["bad.yaml", "broken.yaml"]
    line = line_of(bad, "previous_tokn")
    col = bad.read_text().splitlines()[line - 1].index("previous_tokn") + 1
    line2 = line_of(bad, '">= abc"')
    col2 = bad.read_text().splitlines()[line2 - 1].index('">= abc"') + 1
    lines = result.outlines
    assert lines[lines.index("_" * 27 + " bad.yaml (invalid spec) " + "_" * 28) + 1:][:2] == [
        f"bad.yaml:{line}:{col}: checks[0].detector: unknown detector 'previous_tokn' (did you mean "
        f"'previous_token'?); valid choices: composition, copying, duplicate_token, induction, previous_token",
        f"bad.yaml:{line2}:{col2}: checks[1].expect: cannot read expectation '>= abc'; write '>= X', '> X', "
        f"'<= X', '< X', '== X +- TOL', 'A .. B', [A, B] or a number (meaning >= it)"]
    assert re.search(rf"^broken\.yaml:{line_of(broken, 'edges: [L0H0 -> L1H0 (V)')}:\d+: invalid YAML: ", out, re.M)
    # a valid spec naming a head its model lacks: every check fails with the located message
    head = line_of(no_head, "L9H9")
    assert len(re.findall(rf"^nohead\.yaml:{head}:\d+: circuit\.nodes\.L9H9: the model has no head L9H9", out,
                          re.M)) == n_checks
    assert "Traceback" not in out


def test_circuitry_model_runs_every_spec_against_another_model(pytester, counted):
    spec = pytester.path / "induction.yaml"
    shutil.copy(SPECS / "induction.yaml", spec)
    expected = verified(spec, model_ref="builtin:neox-induction")
    counted["loads"].clear()
    result = pytester.runpytest_inprocess("induction.yaml", "--circuitry-model", "builtin:neox-induction",
                                          "--circuitry-dtype", "float32", "--junitxml=out.xml")
    assert counted["loads"] == ["builtin:neox-induction"]
    assert outcomes(pytester.path / "out.xml") == {
        f"induction.yaml::{c}": "passed" if r.passed else "failed" for c, r in expected.items()}
    assert any(not r.passed for r in expected.values())  # the other model is not the spec's: it shows
    result.stdout.fnmatch_lines(["*model:  builtin:neox-induction; data: *"])


@pytest.mark.parametrize("option, value, message", [
    ("--circuitry-dtype", "float8", "--circuitry-dtype: unknown dtype 'float8'*valid choices: bfloat16, float16, "
                                    "float32"),
    ("--circuitry-device", "tpu9", "--circuitry-device: device 'tpu9' is not a torch device*"),
    ("--circuitry-model", " ", "--circuitry-model: give a model reference*"),
])
def test_bad_options_are_usage_errors(pytester, option, value, message):
    result = pytester.runpytest_inprocess(option, value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


def test_xdist_gives_the_same_outcomes_with_each_spec_on_one_worker(pytester, specs):
    pytest.importorskip("xdist", reason="pytest-xdist is not installed (in the test extra)")
    (specs / "induction-gpt2.yaml").unlink()  # two specs for two workers
    single = pytester.runpytest_inprocess("specs", "--junitxml=single.xml")
    assert single.ret == pytest.ExitCode.OK
    result = pytester.runpytest_subprocess("specs", "-n", "2", "--dist", "loadfile", "-v", "--junitxml=xdist.xml",
                                           timeout=300)
    assert result.ret == pytest.ExitCode.OK
    assert outcomes(pytester.path / "xdist.xml") == outcomes(pytester.path / "single.xml")
    workers: dict[str, set[str]] = {}
    for worker, test in re.findall(r"^\[(gw\d+)\] \[\s*\d+%\] \w+ (\S+)", result.stdout.str(), re.M):
        workers.setdefault(test.split("::")[0], set()).add(worker)
    assert set(workers) == {"specs/induction.yaml", "specs/wrong-previous-token.yaml"}
    assert all(len(w) == 1 for w in workers.values()), workers


# ------------------------------------------------------------------ the session's models
def test_a_model_is_loaded_once_and_dropped_after_its_last_spec():
    cache, loads = ModelCache(), []

    def loader(name):
        return lambda: (loads.append(name) or object(), name)

    a, b = ("a", None, None), ("b", None, None)
    cache.users.update([a, b, a])  # specs in the order a, b, a
    model_a = cache.get(a, loader("a"))
    cache.release(a)
    cache.get(b, loader("b"))
    cache.release(b)
    assert set(cache.models) == {a}  # b has no spec left; a has one
    assert cache.get(a, loader("a")) is model_a
    cache.release(a)
    assert loads == ["a", "b"] and cache.models == {}


def test_the_circuitry_plugin_fixture_comes_with_the_package(pytester):
    """A plugin author's test suite gets the fixture without a conftest.py."""
    pytester.makepyfile(test_mine="""
        from circuitry import hookimpl
        from circuitry.plugins import get_manager
        from circuitry.records import Dataset

        class Mine:
            @hookimpl
            def circuitry_datasets(self):
                return [Dataset("mine", "a test dataset", lambda model, **kw: None, {})]

        def test_registered(circuitry_plugin):
            circuitry_plugin(Mine(), "mine")
            assert "mine" in get_manager().datasets()

        def test_removed_after():
            assert "mine" not in get_manager().datasets()
    """)
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(passed=2)
