"""Faulty plugins: exit 3 naming the plugin when its code raises or returns the wrong type,
skipped when it fails to import or register, clashes shown as clashes, and names of disabled
plugins reported as not available (exit 2)."""

from __future__ import annotations

import importlib.metadata as md
import json
import textwrap

import pytest
import torch

from circuitry import hookimpl
from circuitry.cli import main
from circuitry.errors import UsageError
from circuitry.interventions import Ablation, Node
from circuitry.plugins import PluginError, PluginManager, get_manager, reset_manager
from circuitry.records import Dataset, Detector, Intervention, Metric, result_problem
from circuitry.testing import registered_plugin

MODEL = "builtin:attn-only-2l"
DATA = "repeated:batch=2,seq_len=5"


def _boom(*args, **kwargs):
    raise ValueError("boom")


def _exits(*args, **kwargs):
    raise SystemExit(4)


def _usage(*args, **kwargs):
    raise UsageError("a problem the user can fix")


class Faulty:
    """One plugin with a faulty record of every kind."""

    @hookimpl
    def circuitry_detectors(self):
        return [Detector("bad_raises", "raises", _boom),
                Detector("bad_type", "returns a string", lambda inp: "scores"),
                Detector("bad_shape", "returns the wrong shape", lambda inp: torch.zeros(3)),
                Detector("bad_pair", "a pair detector returning a tensor", lambda inp: torch.zeros(1), kind="pair"),
                Detector("bad_exit", "calls sys.exit", _exits),
                Detector("bad_usage", "raises a usage error", _usage)]

    @hookimpl
    def circuitry_datasets(self):
        return [Dataset("bad_data", "returns a list", lambda model, **kw: [[1, 2, 3]])]

    @hookimpl
    def circuitry_metrics(self):
        return [Metric("bad_metric", "raises", _boom),
                Metric("bad_metric_type", "returns a string", lambda logits, batch, clean: "low")]

    @hookimpl
    def circuitry_interventions(self):
        return [Intervention("bad_build", "raises", _boom),
                Intervention("bad_build_type", "returns a string", lambda target: "ablate it")]


class FaultyHeader:
    @hookimpl
    def circuitry_report_header(self, spec, model):
        raise RuntimeError("no header today")


class WrongHeader:
    @hookimpl
    def circuitry_report_header(self, spec, model):
        return 42


class RaisesAtRegistration:
    @hookimpl
    def circuitry_detectors(self):
        raise RuntimeError("cannot list my detectors")

    @hookimpl
    def circuitry_metrics(self):
        return [Metric("orphan", "registered by a plugin whose other hook fails", lambda *a: 0.0)]


class Clashing:
    @hookimpl
    def circuitry_detectors(self):
        return [Detector("induction", "a second detector named induction", _boom)]


@pytest.fixture
def faulty(circuitry_plugin):
    circuitry_plugin(Faulty(), "faulty")


@pytest.fixture
def fresh():
    """A fresh process-wide manager before and after (for -p options and fake entry points)."""
    reset_manager()
    yield
    reset_manager()


def _spec(tmp_path, checks: str) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(f"""\
        apiVersion: circuitry/v1
        kind: CircuitSpec
        metadata: {{name: faults}}
        model: {MODEL}
        data: {{name: repeated, seq_len: 5, batch: 2, seed: 0}}
        circuit:
          nodes: {{L0H0: previous_token, L1H0: induction}}
          edges: [L0H0 -> L1H0 (K)]
        checks:
        """) + textwrap.indent(textwrap.dedent(checks), "  "))
    return str(path)


def _err(capsys) -> str:
    """stderr of the last command, with rich's line wrapping undone."""
    return " ".join(capsys.readouterr().err.split())


# ------------------------------------------------------------------ record functions
@pytest.mark.parametrize(("detector", "says"), [
    ("bad_raises", "detector 'bad_raises' raised ValueError: boom (in score())"),
    ("bad_type", "detector 'bad_type': score() returned the wrong type: expected a tensor of shape"),
    ("bad_shape", "got a tensor of shape (3,)"),
    ("bad_pair", "expected a PairScores, got a tensor of shape (1,)"),
    ("bad_exit", "detector 'bad_exit' raised SystemExit (the plugin called sys.exit(4))"),
])
def test_faulty_detector_in_scan_is_exit_3_naming_the_plugin(faulty, capsys, detector, says):
    assert main(["scan", MODEL, "--data", DATA, "--detectors", detector]) == 3
    err = _err(capsys)
    assert "plugin 'faulty'" in err and says in err


def test_usage_error_from_a_plugin_passes_through(faulty, capsys):
    assert main(["scan", MODEL, "--data", DATA, "--detectors", "bad_usage"]) == 2
    assert "a problem the user can fix" in _err(capsys)


def test_faulty_dataset_is_exit_3(faulty, capsys):
    assert main(["scan", MODEL, "--data", "bad_data", "--detectors", "previous_token"]) == 3
    err = _err(capsys)
    assert "plugin 'faulty': dataset 'bad_data': generate() returned the wrong type" in err
    assert "expected a circuitry.data.TokenBatch, got list" in err


@pytest.mark.parametrize(("intervention", "metric", "says"), [
    ("zero", "bad_metric", "plugin 'faulty': metric 'bad_metric' raised ValueError: boom (in compute())"),
    ("zero", "bad_metric_type", ("metric 'bad_metric_type': compute() returned the wrong type: "
                                 "expected a real number or a 0-dim tensor, got str")),
    ("bad_build", "loss", "plugin 'faulty': intervention 'bad_build' raised ValueError: boom (in build())"),
    ("bad_build_type", "loss", "expected an Ablation, EdgePatch or Patch, got str"),
])
def test_faulty_metric_or_intervention_in_verify_is_exit_3(faulty, capsys, tmp_path, intervention, metric, says):
    spec = _spec(tmp_path, f"""\
        - id: faulty
          kind: intervention
          intervention: {intervention}
          target: L0H0
          metric: {metric}
          expect: {{change: ">= 0"}}
        """)
    assert main(["verify", spec]) == 3
    assert says in _err(capsys)


def test_faulty_lifecycle_hook_is_exit_3_naming_the_plugin(circuitry_plugin, capsys, tmp_path):
    spec = _spec(tmp_path, """\
        - id: prev
          kind: detector
          detector: previous_token
          expect: ">= 0"
        """)
    circuitry_plugin(FaultyHeader(), "header")
    assert main(["verify", spec]) == 3
    assert "plugin 'header': circuitry_report_header() raised RuntimeError: no header today" in _err(capsys)


def test_call_hook_guards_each_plugin(circuitry_plugin):
    manager = get_manager()
    assert manager.call_hook("report_header", spec=None, model=None) == []
    circuitry_plugin(WrongHeader(), "wrong_header")
    with pytest.raises(PluginError, match="plugin 'wrong_header': circuitry_report_header.. returned int"):
        manager.call_hook("circuitry_report_header", spec=None, model=None)
    with pytest.raises(TypeError, match="takes the arguments model, spec"):
        manager.call_hook("circuitry_report_header", spec=None)


def test_guard_keeps_the_function_and_lets_interrupts_through(faulty):
    det = get_manager().get("detectors", "bad_raises")
    assert det.score.__wrapped__ is _boom
    interrupt = Detector("interrupted", "", lambda inp: (_ for _ in ()).throw(KeyboardInterrupt()))
    from circuitry.plugins import guard_record

    with pytest.raises(KeyboardInterrupt):
        guard_record(interrupt, "faulty").score(None)


def test_result_checks_accept_what_the_records_promise(shipped):
    from circuitry.records import DetectorInput

    inp = DetectorInput(shipped, None, None)
    det = Detector("d", "", _boom)
    shape = (shipped.cfg.n_layers, shipped.cfg.n_heads)
    assert result_problem(det, "score", torch.zeros(shape), (inp,)) is None
    assert "got a tensor of shape (1, 1)" in result_problem(det, "score", torch.zeros(1, 1), (inp,))
    metric = Metric("m", "", _boom)
    for good in (1.5, 2, torch.tensor(0.5)):
        assert result_problem(metric, "compute", good) is None
    for bad in (True, torch.zeros(2), None):
        assert result_problem(metric, "compute", bad) is not None
    build = Intervention("i", "", _boom)
    assert result_problem(build, "build", Ablation(Node.parse("L0H0"))) is None


# ------------------------------------------------------------------ loading and listing
def _with_entry_point(monkeypatch, tmp_path, module: str, source: str) -> None:
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    real = md.entry_points

    def fake(group=None, **kw):
        eps = list(real(group=group, **kw))
        if group == "circuitry":
            eps.append(md.EntryPoint(module, module, "circuitry"))
        return eps

    monkeypatch.setattr("circuitry.plugins.md.entry_points", fake)


def test_plugin_calling_sys_exit_at_import_is_skipped(monkeypatch, tmp_path, capsys, fresh):
    _with_entry_point(monkeypatch, tmp_path, "circuitry_exits_at_import", "import sys\nsys.exit(5)\n")
    pm = PluginManager()
    failed = {i.name: i.error for i in pm.failed}
    assert "sys.exit(5)" in failed["circuitry_exits_at_import"]
    assert "induction" in pm.detectors()
    assert main(["plugins", "--json"]) == 0
    status = {p["name"]: p["status"] for p in json.loads(capsys.readouterr().out)["plugins"]}
    assert status["circuitry_exits_at_import"] == "failed" and status["detectors"] == "loaded"
    monkeypatch.setenv("CIRCUITRY_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="circuitry_exits_at_import"):
        PluginManager()


def test_plugins_command_shows_a_plugin_whose_registration_fails(capsys):
    with registered_plugin(RaisesAtRegistration(), "raiser", check=False):
        _shows_failed_raiser(capsys)


def _shows_failed_raiser(capsys):
    assert main(["plugins", "--json"]) == 0
    out, err = capsys.readouterr()
    rows = {p["name"]: p for p in json.loads(out)["plugins"]}
    assert rows["raiser"]["status"] == "failed"
    assert "circuitry_detectors() raised RuntimeError: cannot list my detectors" in rows["raiser"]["error"]
    assert rows["detectors"]["status"] == "loaded"
    assert "plugin 'raiser'" in err and "skipped" in err
    assert main(["plugins"]) == 0
    assert "failed" in capsys.readouterr().out
    with pytest.raises(UsageError, match="metric 'orphan' is not available: plugin 'raiser' provides it and failed"):
        get_manager().get("metrics", "orphan")


def test_plugins_command_shows_a_clash_on_both_rows(circuitry_plugin, capsys):
    circuitry_plugin(Clashing(), "clashing")
    assert main(["plugins", "--json"]) == 0
    rows = {p["name"]: p for p in json.loads(capsys.readouterr().out)["plugins"]}
    for name in ("clashing", "detectors"):
        assert rows[name]["status"] == "clash"
        [clash] = rows[name]["clashes"]
        assert clash["name"] == "induction" and clash["plugins"] == ["clashing", "detectors"]
        assert "-p no:clashing" in clash["hint"] and "-p no:detectors" in clash["hint"]
    assert main(["plugins"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "clash" in out and "-p no:clashing" in out
    assert main(["scan", MODEL, "--data", DATA, "--detectors", "previous_token"]) == 0  # unaffected names work
    capsys.readouterr()


def test_using_a_clashed_name_is_exit_2_with_the_hint(circuitry_plugin, capsys, tmp_path):
    circuitry_plugin(Clashing(), "clashing")
    spec = _spec(tmp_path, """\
        - id: ind
          kind: detector
          detector: induction
          expect: ">= 0"
        """)
    assert main(["verify", spec]) == 2
    err = _err(capsys)
    assert "registered by both plugin 'clashing' and plugin 'detectors'" in err and "-p no:clashing" in err


# ------------------------------------------------------------------ disabled plugins
NOT_AVAILABLE = "detector 'composition' is not available: plugin 'detectors' provides it and is disabled " \
                "(-p no:detectors)"


def test_lookup_of_a_disabled_plugins_name_says_so(fresh, monkeypatch):
    pm = PluginManager(disabled={"detectors"})
    with pytest.raises(UsageError, match=r"is not available: .* \(-p no:detectors\)"):
        pm.get("detectors", "composition")
    with pytest.raises(UsageError, match="not available"):
        pm.detectors()["composition"]  # indexing is the same lookup
    with pytest.raises(UsageError, match="unknown detector 'nosuch'"):
        pm.get("circuitry_detectors", "nosuch")
    monkeypatch.setenv("CIRCUITRY_DISABLE_PLUGINS", "metrics")
    with pytest.raises(UsageError, match=r"plugin 'metrics' provides it and is disabled "
                                         r"\(CIRCUITRY_DISABLE_PLUGINS=metrics\)"):
        PluginManager().get("metrics", "loss")


def test_composition_check_with_detectors_disabled_is_exit_2(fresh, capsys, tmp_path):
    spec = _spec(tmp_path, """\
        - id: k
          kind: composition
          expect: {ratio_to_baseline: ">= 0"}
        """)
    assert main(["-p", "no:detectors", "verify", spec]) == 2
    assert NOT_AVAILABLE in _err(capsys)


def test_scan_with_detectors_disabled_is_exit_2_not_available(fresh, capsys):
    assert main(["-p", "no:detectors", "scan", MODEL, "--detectors", "composition"]) == 2
    assert NOT_AVAILABLE in _err(capsys)
