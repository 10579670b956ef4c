"""What a new user meets first: misspellings answered with a suggestion, bare model names, the lists of shipped
models and dataset parameters, head names in either case, tables that stay one row per line when piped, Ctrl-C,
and a `--version` / `--help` that import no torch."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from circuitry.cli import main

REPO = Path(__file__).resolve().parents[1]
BUILTIN = REPO / "circuitry" / "builtin"
SPEC = REPO / "specs" / "induction.yaml"


def _env() -> dict:
    """The environment of a child `circuitry`: this checkout first on the path, no COLUMNS (a plain pipe)."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "CIRCUITRY_DEBUG")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "plugins"), env.get("PYTHONPATH", "")])
    return env


def _circuitry(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "circuitry", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=_env())


# ------------------------------------------------------------------ misspellings
def test_misspelled_command_suggests_the_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["scna", "builtin:attn-only-2l"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'scna' (did you mean 'scan'?)" in err
    assert "Traceback" not in err


def test_misspelled_choice_of_an_option_suggests_the_choice(capsys):
    with pytest.raises(SystemExit) as info:
        main(["paths", "builtin:attn-only-2l", "--by", "maen"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "(did you mean 'mean'?)" in err and "valid: mean, abs, mean_abs" in err


def test_bare_model_name_suggests_its_builtin_reference(capsys):
    from circuitry.plugins import get_manager

    assert main(["info", "attn-only-2l"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'builtin:attn-only-2l'?" in err
    schemes = ", ".join(sorted(get_manager().model_sources()))
    assert f"SCHEME one of {schemes}" in err and "builtin" in schemes
    assert main(["info", "builtin:attn-only-2l", "--json"]) == 0  # the suggestion is a reference that loads
    assert json.loads(capsys.readouterr().out)["config"]["name"] == "attn-only-2l"


# ------------------------------------------------------------------ lists: models, dataset parameters
def test_models_lists_every_shipped_model_with_its_size(capsys):
    import circuitry

    shipped = sorted(p.name for p in BUILTIN.iterdir() if (p / "model.safetensors").exists())
    assert main(["models", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {m["ref"]: m for m in doc["models"]}
    assert sorted(rows) == [f"builtin:{n}" for n in shipped]
    for name in shipped:
        row = rows[f"builtin:{name}"]
        model = circuitry.load_model(f"builtin:{name}")
        assert row["n_params"] == sum(p.numel() for p in model.parameters())
        assert (row["n_layers"], row["n_heads"], row["d_model"]) == (model.cfg.n_layers, model.cfg.n_heads,
                                                                     model.cfg.d_model)
        assert row["file_bytes"] == (BUILTIN / name / "model.safetensors").stat().st_size
        assert row["description"] and "\n" not in row["description"]
    assert {s["scheme"] for s in doc["sources"]} >= {"builtin", "file", "hf", "tl"}

    assert main(["info", "--list"]) == 0  # the same list, as a table
    out = capsys.readouterr().out
    for name in shipped:
        line = next(x for x in out.splitlines() if f"builtin:{name} " in x)
        assert f"{rows[f'builtin:{name}']['n_params']:,}" in line


def test_info_without_a_model_says_where_the_list_is(capsys):
    assert main(["info"]) == 2
    assert "`circuitry models` lists the shipped models" in capsys.readouterr().err


def test_plugins_datasets_lists_the_parameters_a_data_reference_takes(capsys):
    import circuitry
    from circuitry.datasets import make_batch

    assert main(["plugins", "--datasets", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["datasets"]}
    assert {"repeated", "periodic", "file", "text"} <= set(rows)
    repeated = {k: p["default"] for k, p in rows["repeated"]["parameters"].items()}
    assert repeated == {"batch": 32, "seq_len": 10, "n_repeats": 2, "seed": 0}
    # the listed defaults are what a reference without parameters gets: BOS + seq_len tokens n_repeats times
    batch = make_batch(circuitry.load_model("builtin:attn-only-2l"), "repeated")
    assert tuple(batch.tokens.shape) == (repeated["batch"], 1 + repeated["seq_len"] * repeated["n_repeats"])
    assert rows["repeated"]["parameters"]["batch"]["limits"] == [1, None]

    assert main(["plugins", "--datasets"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "│ repeated " in x)
    assert "batch=32 (>= 1), seq_len=10 (>= 1), n_repeats=2 (>= 1), seed=0" in line


# ------------------------------------------------------------------ head names in either case
def test_names_are_read_in_either_case_and_written_canonically():
    from circuitry.names import canonical_name, head_index, parse_component, parse_edge, parse_site

    assert parse_component("l1h3").name == "L1H3" and parse_component("L1h3") == parse_component("L1H3")
    assert parse_component("m0").name == "M0"
    assert head_index("l1h2") == (1, 2)
    assert str(parse_edge("l0h0 -> l1h3 (K)")) == "L0H0 -> L1H3 (K)"
    assert parse_site("l1.resid_pre").name == "L1.resid_pre" and parse_site("l1h3.q").name == "L1H3.q"
    assert canonical_name("m1") == "M1" and canonical_name("nonsense") == "nonsense"


def _lowercase_names(text: str) -> str:
    """The spec with every head name of its circuit and checks written in lower case (l0h0)."""
    head, _, rest = text.partition("circuit:")
    return head + "circuit:" + re.sub(r"\bL(\d+)H(\d+)\b", lambda m: f"l{m.group(1)}h{m.group(2)}", rest)


def test_spec_with_lowercase_head_names_verifies_as_the_original(tmp_path, capsys):
    lower = tmp_path / "lower.yaml"
    lower.write_text(_lowercase_names(SPEC.read_text()))
    assert "l0h0" in lower.read_text() and "- L0H0" not in lower.read_text()
    assert main(["verify", str(SPEC), "--json"]) == 0
    original = json.loads(capsys.readouterr().out)
    assert main(["verify", str(lower), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)

    def claims(doc: dict) -> list:
        report = doc["reports"][0] if "reports" in doc else doc
        return [(c["id"], c["claim"], c["value"], c["passed"]) for c in report["checks"]]

    assert claims(again) == claims(original)  # canonical names in every claim, the same values
    assert not re.search(r"\bl\dh\d\b", json.dumps(claims(again)))


def test_a_node_declared_twice_in_two_cases_is_an_error(tmp_path, capsys):
    text = SPEC.read_text().replace("    L0H0: previous_token\n", "    L0H0: previous_token\n    l0h0: induction\n")
    spec = tmp_path / "twice.yaml"
    spec.write_text(text)
    assert main(["verify", str(spec)]) == 2
    err = capsys.readouterr().err
    line = 1 + text.splitlines().index("    l0h0: induction")
    assert f"twice.yaml:{line}:5: circuit.nodes.l0h0: node L0H0 is declared twice" in err


def test_show_writes_the_canonical_head_name(capsys):
    assert main(["show", "builtin:attn-only-2l", "--head", "l1h3", "--tokens", "64 1 2 3 1 2 3"]) == 0
    out = capsys.readouterr().out
    assert "L1H3" in out and "l1h3" not in out


# ------------------------------------------------------------------ piped tables
def test_verify_piped_keeps_each_check_on_one_line():
    proc = _circuitry("verify", "specs/induction.yaml")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    spec = yaml.safe_load(SPEC.read_text())
    assert lines[0].rstrip() == f"{spec['metadata']['name']}  (specs/induction.yaml)"  # the title, whole
    body = [x for x in lines if x.startswith("│")]
    assert len(body) == len(spec["checks"])  # one line per check: no row wraps
    for check, line in zip(spec["checks"], body):
        cells = [c.strip() for c in line.strip("│").split("│")]
        assert cells[0] == check["id"] and cells[-1] == "pass"
    k_comp = next(x for x in body if "│ k-composition " in x)
    edges = [f"{a} -> {b} (K)" for a in ("L0H0", "L0H2") for b in ("L1H0", "L1H1", "L1H3")]
    assert f"composition ratio to baseline of {', '.join(edges)}" in k_comp  # the longest claim, unbroken


# ------------------------------------------------------------------ Ctrl-C
_INTERRUPTED_IMPORT = textwrap.dedent("""
    import sys, time
    from importlib.abc import MetaPathFinder

    MODULE = sys.argv[1]

    class Slow(MetaPathFinder):  # the import of MODULE takes long: a Ctrl-C arrives while it runs
        def find_spec(self, name, path=None, target=None):
            if name == MODULE:
                print("importing", flush=True)
                time.sleep(60)
            return None

    sys.meta_path.insert(0, Slow())
    import circuitry.cli
    sys.argv = ["circuitry", "scan", "builtin:attn-only-2l"]
    circuitry.cli.entry()
""")


@pytest.mark.parametrize("module", ["circuitry.cli.scan", "torch"])
def test_ctrl_c_during_an_import_is_one_line_and_exit_130(module):
    """circuitry.cli.scan is imported while the parser is built, torch inside the command's run."""
    proc = subprocess.Popen([sys.executable, "-c", _INTERRUPTED_IMPORT, module], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=_env())
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "importing"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err == "error: interrupted\n"


# ------------------------------------------------------------------ no torch for --version and --help
_PROBE = textwrap.dedent("""
    import json, sys
    {prelude}
    from circuitry.cli import main
    try:
        main(json.loads(sys.argv[1]))
    except SystemExit:
        pass
    heavy = ("torch", "numpy", "yaml", "pluggy", "rich")
    print(json.dumps(sorted(m for m in heavy if m in sys.modules)), file=sys.stderr)
""")
_STUB_PACKAGE = (f"import types; pkg = types.ModuleType('circuitry'); pkg.__path__ = [{str(REPO / 'circuitry')!r}]; "
                 f"pkg.__version__ = '0'; sys.modules['circuitry'] = pkg")
LIGHT = [["--version"], ["--help"], ["verify", "--help"], ["scan", "--help"], ["models", "--help"], ["scna"]]


def _heavy_after(argv: list[str], prelude: str = "") -> list[str]:
    proc = subprocess.run([sys.executable, "-c", _PROBE.format(prelude=prelude), json.dumps(argv)],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=_env())
    return json.loads(proc.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", LIGHT, ids=" ".join)
def test_cli_parsing_imports_nothing_heavy(argv):
    """The command package alone (under a bare `circuitry` package): parsing and --help import no torch, numpy,
    yaml, pluggy or rich."""
    assert _heavy_after(argv, _STUB_PACKAGE) == []


@pytest.mark.parametrize("argv", [["--version"], ["--help"]], ids=" ".join)
def test_version_and_help_do_not_import_torch(argv):
    assert "torch" not in _heavy_after(argv)
