"""The `circuitry` command's basics: --version, --help, `info`, --json, unknown names."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

import circuitry
from circuitry.cli import main
from circuitry.model import ModelConfig

BUILTIN = Path(circuitry.__file__).parent / "builtin" / "attn-only-2l"


def _expected_params(cfg: dict) -> int:
    """Parameter count of an attention-only, bias-free, norm-free model from its config."""
    d, v = cfg["d_model"], cfg["d_vocab"]
    per_layer = 4 * cfg["n_heads"] * d * cfg["d_head"]  # W_Q, W_K, W_V, W_O
    return v * d + cfg["n_ctx"] * d + cfg["n_layers"] * per_layer + d * v  # W_E, W_pos, blocks, W_U


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"circuitry {circuitry.__version__}"


def test_version_of_installed_command():
    exe = Path(sys.executable).parent / "circuitry"
    if not exe.exists():
        pytest.skip("the circuitry script is not installed next to this Python")
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"circuitry {circuitry.__version__}"


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: circuitry" in out
    for command in ("info", "train"):
        assert f"    {command} " in out, out


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: circuitry" in capsys.readouterr().out


def test_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["inf", "builtin:attn-only-2l"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'inf'" in err and "Traceback" not in err


def _table_rows(text: str) -> dict[str, str]:
    """key -> value of a two-column table as rich draws it (cells between vertical bars)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("\u2502").split("\u2502")]
        if len(cells) == 2:
            rows[cells[0]] = cells[1]
    return rows


def test_info_table(capsys):
    config = json.loads((BUILTIN / "config.json").read_text())
    assert _expected_params(config) == 45_184
    assert main(["info", "builtin:attn-only-2l"]) == 0
    rows = _table_rows(capsys.readouterr().out)
    assert rows["parameters"] == "45,184"
    assert rows["source"] == "builtin:attn-only-2l"
    for key in ("n_layers", "d_model", "n_heads", "d_vocab", "n_ctx", "normalization"):
        assert rows[key] == str(config[key]), key


def test_info_json_is_one_document(capsys):
    assert main(["info", "builtin:attn-only-2l", "--json"]) == 0
    cap = capsys.readouterr()
    doc = json.loads(cap.out)  # fails on anything but exactly one JSON document
    assert doc["n_params"] == 45_184
    assert doc["source"] == "builtin:attn-only-2l"
    stored = json.loads((BUILTIN / "config.json").read_text())
    assert {k: doc["config"][k] for k in stored} == stored
    # fields newer than the stored config.json are reported with their ModelConfig defaults
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    for k in doc["config"].keys() - stored.keys():
        assert doc["config"][k] == defaults[k], k


def test_info_of_a_path(capsys):
    assert main(["info", str(BUILTIN), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n_params"] == 45_184 and doc["source"] == str(BUILTIN)


def test_unknown_builtin_name(capsys):
    rc = main(["info", "builtin:attn-only-2"])
    cap = capsys.readouterr()
    assert rc == 2 and cap.out == ""
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in cap.err
    assert "'attn-only-2'" in lines[0]
    assert "did you mean 'attn-only-2l'" in lines[0]
    assert "valid choices: attn-only-2l" in lines[0]
