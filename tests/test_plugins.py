"""The plugin layer: entry points, failures, disabling, clashes, the plugins command."""

from __future__ import annotations

import importlib.metadata as md
import json

import pytest
import torch

from circuitry import hookimpl
from circuitry.cli import main
from circuitry.errors import UsageError
from circuitry.plugins import PluginError, PluginManager
from circuitry.records import Detector


def test_standard_plugins_come_from_entry_points():
    pm = PluginManager()
    names = {i.name for i in pm.summary() if i.status == "loaded"}
    assert {"sources", "datasets", "detectors"} <= names
    assert {"previous_token", "duplicate_token", "induction", "copying", "composition"} <= set(pm.detectors())
    assert {"builtin", "file"} <= set(pm.model_sources())
    assert {"repeated", "periodic", "file"} <= set(pm.datasets())
    assert pm.owner("circuitry_detectors", "induction") == "detectors"


def _with_broken_entry_point(monkeypatch):
    real = md.entry_points

    def fake(group=None, **kw):
        eps = list(real(group=group, **kw))
        if group == "circuitry":
            eps.append(md.EntryPoint("broken", "circuitry_no_such_module_xyz", "circuitry"))
        return eps

    monkeypatch.setattr("circuitry.plugins.md.entry_points", fake)


def test_plugin_that_fails_to_import_is_reported_and_skipped(monkeypatch):
    _with_broken_entry_point(monkeypatch)
    pm = PluginManager()
    assert [i.name for i in pm.failed] == ["broken"]
    assert "circuitry_no_such_module_xyz" in pm.failed[0].error
    assert "induction" in pm.detectors()  # the others still work


def test_strict_mode_makes_import_failure_fatal(monkeypatch):
    _with_broken_entry_point(monkeypatch)
    monkeypatch.setenv("CIRCUITRY_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="broken"):
        PluginManager()


def test_cli_reports_broken_plugin_and_still_runs(monkeypatch, capsys):
    _with_broken_entry_point(monkeypatch)
    from circuitry.plugins import reset_manager

    reset_manager()
    try:
        assert main(["plugins", "--json"]) == 0
    finally:
        reset_manager()
    out, err = capsys.readouterr()
    doc = json.loads(out)
    status = {p["name"]: p["status"] for p in doc["plugins"]}
    assert status["broken"] == "failed" and status["detectors"] == "loaded"
    assert "plugin 'broken'" in err and "skipped" in err


def test_disable_by_env_and_cli(monkeypatch, capsys):
    monkeypatch.setenv("CIRCUITRY_DISABLE_PLUGINS", "datasets")
    pm = PluginManager()
    assert "repeated" not in pm.datasets()
    assert {i.name: i.status for i in pm.summary()}["datasets"] == "disabled"
    monkeypatch.delenv("CIRCUITRY_DISABLE_PLUGINS")
    from circuitry.plugins import reset_manager

    reset_manager()
    try:
        assert main(["-p", "no:detectors", "plugins", "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert {p["name"]: p["status"] for p in doc["plugins"]}["detectors"] == "disabled"
        # with the detectors disabled, scan cannot use their detectors (a usage error)
        assert main(["-p", "no:detectors", "scan", "builtin:attn-only-2l", "--detectors", "induction"]) == 2
        assert "'induction'" in capsys.readouterr().err
    finally:
        reset_manager()


class _Clash:
    @hookimpl
    def circuitry_detectors(self):
        return [Detector("induction", "a second detector with a taken name", lambda inp: None)]


def test_name_clash_names_both_plugins(circuitry_plugin):
    from circuitry.plugins import get_manager

    circuitry_plugin(_Clash(), "clashing")
    detectors = get_manager().detectors()
    assert "induction" not in detectors and "previous_token" in detectors  # the rest still works
    with pytest.raises(UsageError) as exc:
        get_manager().get("detectors", "induction")
    msg = str(exc.value)
    assert "'detectors'" in msg and "'clashing'" in msg and "-p no:clashing" in msg
    with pytest.raises(UsageError, match="registered by both"):
        detectors["induction"]  # indexing is the same lookup


def test_name_clash_is_fatal_in_strict_mode(monkeypatch):
    from circuitry.plugins import get_manager
    from circuitry.testing import registered_plugin

    monkeypatch.setattr(get_manager(), "strict", True)
    with (registered_plugin(_Clash(), "clashing", check=False),
          pytest.raises(PluginError, match="registered by both")):
        get_manager().detectors()


class _Wrong:
    @hookimpl
    def circuitry_detectors(self):
        return ["not a record"]


def test_wrong_record_type_skips_the_plugin(monkeypatch):
    from circuitry.plugins import get_manager
    from circuitry.testing import registered_plugin

    with registered_plugin(_Wrong(), "wrong", check=False):
        assert "induction" in get_manager().detectors()
        failed = {i.name: i.error for i in get_manager().failed}
        assert "returned str, expected Detector" in failed["wrong"]
    with (pytest.raises(PluginError, match="plugin 'wrong' was skipped: .*returned str, expected Detector"),
          registered_plugin(_Wrong(), "wrong")):
        pass
    with registered_plugin(_Wrong(), "wrong", check=False):
        monkeypatch.setattr(get_manager(), "strict", True)
        with pytest.raises(PluginError, match="returned str, expected Detector"):
            get_manager().detectors()


class _Attends:
    """A throw-away detector: attention to BOS."""

    @hookimpl
    def circuitry_detectors(self):
        def first(inp):
            pats = torch.stack([inp.cache[f"blocks.{l}.attn.hook_pattern"]
                                for l in range(inp.model.cfg.n_layers)])
            return pats[..., 0].mean((1, 3))
        return [Detector("first_token", "attention to position 0", first)]


def test_throwaway_plugin_detector_in_scan(circuitry_plugin, capsys, shipped):
    circuitry_plugin(_Attends(), "attends")
    assert main(["scan", "builtin:attn-only-2l", "--json", "--detectors", "first_token,previous_token"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc["heads"][0]) == {"head", "first_token", "previous_token"}
    from circuitry.data import repeated_tokens

    batch = repeated_tokens(65, 64, batch=32, seq_len=10, seed=0)
    with torch.no_grad():
        _, cache = shipped.run_with_cache(batch.tokens)
    ref = cache["pattern", 1][:, 2, :, 0].mean()
    assert abs(doc["heads"][6]["first_token"] - float(ref)) < 1e-5  # L1H2


def test_unknown_detector_lists_choices_with_suggestion(capsys):
    assert main(["scan", "builtin:attn-only-2l", "--detectors", "inducton"]) == 2
    err = capsys.readouterr().err
    assert "unknown detector 'inducton'" in err and "did you mean 'induction'" in err
    assert "previous_token" in err and "composition" in err


def test_model_source_not_installed_or_not_found(capsys):
    from circuitry.sources import load_model

    with pytest.raises(UsageError, match="unknown model source 'nosuch'.*builtin.*installed"):
        load_model("nosuch:thing")
    with pytest.raises(UsageError, match="unknown builtin model 'attn-only-3l'.*did you mean 'attn-only-2l'"):
        load_model("builtin:attn-only-3l")
    assert main(["scan", "/no/such/model.safetensors"]) == 2
    assert "no such model file" in capsys.readouterr().err


def test_unknown_dataset_and_parameter(capsys):
    assert main(["scan", "builtin:attn-only-2l", "--data", "repeatd"]) == 2
    assert "did you mean 'repeated'" in capsys.readouterr().err
    assert main(["scan", "builtin:attn-only-2l", "--data", "repeated:seqlen=5"]) == 2
    assert "did you mean 'seq_len'" in capsys.readouterr().err
    assert main(["scan", "builtin:attn-only-2l", "--data", "repeated:seq_len=abc"]) == 2
    assert "must be of type int" in capsys.readouterr().err
    assert main(["scan", "builtin:attn-only-2l", "--data", "repeated:seq_len=40"]) == 2
    assert "81 positions are longer than the model's context of 64" in capsys.readouterr().err
