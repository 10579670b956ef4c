"""Regression tests of the hardening defects: user mistakes are located exit-2 errors (never exit 3),
every spec problem is reported in one run, random data never holds special tokens, resampling never
draws a row from itself, paths in specs are read relative to the spec, silent footguns are warnings,
and every command reads `--data` the same way.

Every case runs through the real CLI (`circuitry.cli.main`) or the library functions, and checks
values against an independent computation where there is a value to check.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from circuitry.cli import main
from circuitry.data import periodic_tokens, repeated_tokens
from circuitry.datasets import parse_data_ref

REPO = Path(__file__).resolve().parents[1]
LOCATED = re.compile(r"^error: (?P<file>.+?):(?P<line>\d+):(?P<col>\d+): ")

SPEC = """\
apiVersion: circuitry/v1
kind: CircuitSpec
metadata:
  name: t
model: builtin:attn-only-2l
data: {name: repeated, seq_len: 10, batch: 8, seed: 1}
circuit:
  nodes:
    L0H0: previous_token
    L1H3: induction
checks:
  - id: prev
    kind: detector
    detector: previous_token
    expect: ">= 0.9"
"""
#  1 apiVersion  4 name   7 circuit  10 L1H3    13 kind
#  2 kind        5 model  8 nodes    11 checks  14 detector
#  3 metadata    6 data   9 L0H0     12 - id    15 expect


@pytest.fixture(autouse=True)
def small_budget(monkeypatch):
    """A memory budget far below what any refused case would allocate: refusals happen before allocating."""
    monkeypatch.setenv("CIRCUITRY_MEMORY_BUDGET", "256MiB")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def assert_located(err: str, path: Path, *where: tuple[int, int]) -> list[str]:
    """Every error line is located in `path`; with `where`, at exactly those (line, col), in that order."""
    lines = errors(err)
    assert lines and "Traceback" not in err, err
    found = []
    for line in lines:
        m = LOCATED.match(line)
        assert m and m["file"] == str(path), line
        found.append((int(m["line"]), int(m["col"])))
    if where:
        assert found == list(where), lines
    return lines


# ------------------------------------------------------------------ YAML that would crash a loader
DEEP_FLOW = "x: " + "[" * 500 + "]" * 500 + "\n"
DEEP_BLOCK = "".join("  " * i + f"k{i}:\n" for i in range(120)) + "  " * 120 + "v\n"
LAUGHS = ("a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n"
          + "".join(f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcde", "bcdef")))


@pytest.mark.parametrize("text, fragment", [
    (SPEC + "extra: &a [*a]\n", "a recursive alias"),
    (SPEC + "extra: &m {k: *m}\n", "a recursive alias"),
    (SPEC + DEEP_FLOW, "nesting too deep"),
    (SPEC + DEEP_BLOCK, "nesting too deep"),
    (SPEC + LAUGHS, "document too large"),
    (SPEC.replace("batch: 8", "batch: !!float abc"), "'abc' cannot be read as !!float"),
    (SPEC.replace("batch: 8", "batch: !!int 1.5x"), "'1.5x' cannot be read as !!int"),
    (SPEC.replace("batch: 8", "batch: !!bool maybe"), "'maybe' cannot be read as !!bool"),
    (SPEC.replace("batch: 8", "batch: 1" + "0" * 5000), "cannot be read as !!int"),
])
def test_hostile_yaml_is_a_located_error(tmp_path, capsys, text, fragment):
    path = write(tmp_path, text)
    code, out, err = run(capsys, "verify", str(path))
    assert code == 2 and out == ""
    lines = assert_located(err, path)
    assert fragment in lines[0]


# ------------------------------------------------------------------ data parameters
@pytest.mark.parametrize("change, col, fragment", [
    ("batch: 0", 44, "parameter 'batch' of dataset 'repeated' must be >= 1, got 0"),
    ("batch: -3", 44, "must be >= 1, got -3"),
    ("seed: 9223372036854775808", 53, "parameter 'seed' of dataset 'repeated' must be between 0 and "
                                      "9223372036854775807"),
    ("seed: -1", 53, "must be between 0 and"),
])
def test_data_parameters_are_bounded_where_they_are_written(tmp_path, capsys, change, col, fragment):
    key = change.split(":")[0]
    old = {"batch": "batch: 8", "seed": "seed: 1"}[key]
    path = write(tmp_path, SPEC.replace(old, change))
    code, out, err = run(capsys, "verify", str(path))
    assert code == 2 and out == ""
    line = SPEC.replace(old, change).splitlines()[5]
    assert line.index(change) + len(key) + 3 == col  # the value's column
    assert fragment in assert_located(err, path, (6, col))[0]


@pytest.mark.parametrize("data, fragment", [
    ("{name: repeated, seq_len: 10, batch: 1000000000000, seed: 1}", "over the memory budget of 256.0 MiB"),
    ("{name: repeated, seq_len: 1000000, batch: 8}", "longer than the model's context of 64"),
    ("{name: repeated, n_repeats: 100000000000, batch: 8}", "longer than the model's context of 64"),
    ("{name: periodic, n_ctx: 1000000000, batch: 8}", "longer than the model's context of 64"),
])
def test_huge_data_is_refused_before_it_is_generated(tmp_path, capsys, data, fragment):
    path = write(tmp_path, SPEC.replace("{name: repeated, seq_len: 10, batch: 8, seed: 1}", data))
    code, out, err = run(capsys, "verify", str(path))
    assert code == 2 and out == ""
    assert fragment in assert_located(err, path, (6, 7))[0]


def test_huge_command_line_data_is_refused_too(capsys):
    code, out, err = run(capsys, "scan", "builtin:attn-only-2l", "--data", "repeated:batch=1000000000000")
    assert code == 2 and "over the memory budget" in err and "Traceback" not in err


# ------------------------------------------------------------------ every problem in one run
def test_three_spec_mistakes_are_three_lines_in_line_order(tmp_path, capsys):
    text = (SPEC.replace("batch: 8", "batch: ten")
            .replace("detector: previous_token", "detector: previous_tokn")
            .replace('expect: ">= 0.9"', 'expect: ">= high"'))
    path = write(tmp_path, text)
    code, out, err = run(capsys, "verify", str(path))
    assert code == 2 and out == ""
    lines = assert_located(err, path, (6, 44), (14, 15), (15, 13))
    assert "must be an integer" in lines[0]
    assert "unknown detector 'previous_tokn' (did you mean 'previous_token'?)" in lines[1]
    assert "cannot read expectation '>= high'" in lines[2]


def test_every_name_the_model_lacks_is_reported_in_one_run(tmp_path, capsys):
    text = SPEC.replace("    L1H3: induction\n", "    L1H3: induction\n    L9H9: induction\n    M0: mlp\n  edges:\n"
                                                 "    - L1H3 -> M0 (mlp_in)\n")
    text += ("  - id: abl\n    kind: intervention\n    intervention: zero\n    target: L5H0\n"
             "    metric: loss\n    expect: {change: \">= 1\"}\n")
    path = write(tmp_path, text)
    code, out, err = run(capsys, "verify", str(path))
    assert code == 2 and out == ""
    lines = assert_located(err, path, (11, 5), (12, 5), (14, 7), (23, 13))
    assert "the model has no head L9H9: it has heads L0H0..L1H3 (2 layers x 4 heads)" in lines[0]
    assert "the model is attention-only: it has no MLP M0" in lines[1] and "M0" in lines[2]
    assert "the model has no head L5H0" in lines[3]


def test_problems_of_several_specs_are_reported_together(tmp_path, capsys):
    a = write(tmp_path, SPEC.replace("batch: 8", "batch: 0"), "a.yaml")
    b = write(tmp_path, SPEC.replace("kind: detector", "kind: detectr"), "b.yaml")
    code, _, err = run(capsys, "verify", str(a), str(b))
    assert code == 2
    lines = errors(err)
    assert len(lines) == 2 and str(a) in lines[0] and str(b) in lines[1]
    assert "unknown check kind 'detectr' (did you mean 'detector'?)" in lines[1]


# ------------------------------------------------------------------ located after the spec loads
def test_problems_found_after_loading_point_at_the_spec(tmp_path, capsys):
    text = SPEC.replace("seed: 1}", "seed: 1}\nreference_data: {seq_len: 5}")
    text += ("  - id: abl\n    kind: intervention\n    intervention: mean\n    target: L0H0\n"
             "    metric: loss\n    expect: {change: \">= 1\"}\n")
    path = write(tmp_path, text)
    code, _, err = run(capsys, "verify", str(path))
    assert code == 2
    assert "the reference data has 11 positions, fewer than the 21" in assert_located(err, path, (7, 17))[0]

    path = write(tmp_path, SPEC.replace("seq_len: 10", "seq_len: 40"))
    code, _, err = run(capsys, "verify", str(path))
    assert code == 2 and "81 positions are longer than the model's context of 64" in \
        assert_located(err, path, (6, 7))[0]


def test_a_device_this_machine_lacks_is_exit_2_in_every_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ckpt = tmp_path / "step-000001.safetensors"
    shutil.copy(REPO / "circuitry/builtin/attn-only-2l/model.safetensors", ckpt)
    for argv in (["scan", "builtin:attn-only-2l"], ["show", "builtin:attn-only-2l", "--head", "L0H0"],
                 ["discover", "builtin:attn-only-2l"], ["track", str(ckpt)],
                 ["verify", str(REPO / "specs/induction.yaml")]):
        code, out, err = run(capsys, *argv, "--device", "cuda")
        assert code == 2 and out == "", argv
        assert errors(err) == ["error: device 'cuda': CUDA is not available here (use cpu)"], (argv, err)


# ------------------------------------------------------------------ random data without special tokens
def test_random_data_never_holds_bos_or_padding_whatever_their_ids():
    for make in (lambda ex: repeated_tokens(10, 0, batch=64, seq_len=20, seed=3, exclude=ex),
                 lambda ex: periodic_tokens(10, 0, batch=64, n_ctx=40, seed=3, exclude=ex)):
        tokens = make((7,))
        assert (tokens.tokens[:, 0] == 0).all()
        body = tokens.tokens[:, 1:]
        assert not (body == 0).any() and not (body == 7).any()
        assert set(body.unique().tolist()) == {1, 2, 3, 4, 5, 6, 8, 9}  # every other id is drawn


def test_excluding_the_last_id_draws_exactly_as_before():
    """With BOS the last id (the shipped models), the draw equals a plain randint over the other ids,
    so every measured value of the shipped models stays the same."""
    batch = repeated_tokens(65, 64, batch=16, seq_len=10, seed=1)
    expected = torch.randint(0, 64, (16, 10), generator=torch.Generator().manual_seed(1))
    assert torch.equal(batch.tokens[:, 1:11], expected)


def test_the_dataset_plugins_exclude_the_tokenizers_special_ids(shipped):
    from circuitry.datasets import make_batch

    class Tok:
        bos_token_id, eos_token_id, pad_token_id = 64, 5, 7

    shipped.tokenizer = Tok()
    try:
        for ref in ("repeated:batch=64,seq_len=20", "periodic:batch=64"):
            body = make_batch(shipped, ref).tokens[:, 1:]
            assert not ((body == 5) | (body == 7) | (body == 64)).any(), ref
    finally:
        shipped.tokenizer = None


# ------------------------------------------------------------------ resampling never draws a row from itself
def test_resampling_a_file_dataset_without_reference_data_is_not_a_no_op(tmp_path, capsys):
    """The reference of a token file without reference_data is the file itself: row i must be resampled
    from another row. The change equals the one measured with reference_data naming the same file with
    its rows rolled (row i + 1 first), where rows are drawn in order."""
    tokens = repeated_tokens(65, 64, batch=8, seq_len=10, seed=4).tokens
    rows = tokens.tolist()
    (tmp_path / "tokens.txt").write_text("\n".join(" ".join(map(str, r)) for r in rows) + "\n")
    (tmp_path / "rolled.txt").write_text("\n".join(" ".join(map(str, r)) for r in rows[1:] + rows[:1]) + "\n")
    check = ("  - id: resample\n    kind: intervention\n    intervention: resample\n    target: L0H0\n"
             "    metric: loss\n    expect: {change: \">= 0\"}\n")
    base = SPEC.replace("{name: repeated, seq_len: 10, batch: 8, seed: 1}", "{name: file, path: tokens.txt}")
    values = []
    for extra in ("", "reference_data: {path: rolled.txt}\n"):
        path = write(tmp_path, base.replace("circuit:\n", extra + "circuit:\n") + check)
        code, out, _ = run(capsys, "verify", str(path), "--json")
        assert code in (0, 1)
        values.append(next(c for c in json.loads(out)["checks"] if c["id"] == "resample")["value"])
    assert values[0] > 0.5  # the previous-token head's output from another sequence hurts the loss
    assert values[0] == pytest.approx(values[1], abs=1e-6)


# ------------------------------------------------------------------ paths relative to the spec
def test_model_and_data_paths_resolve_relative_to_the_spec(tmp_path, capsys, monkeypatch):
    pytest.importorskip("transformers")
    folder = tmp_path / "project"
    shutil.copytree(REPO / "circuitry/builtin/neox-induction", folder / "neox")
    tokens = repeated_tokens(65, 64, batch=8, seq_len=10, seed=4).tokens.tolist()
    (folder / "tokens.txt").write_text("\n".join(" ".join(map(str, r)) for r in tokens) + "\n")
    spec = (SPEC.replace("model: builtin:attn-only-2l", "model: hf:neox")
            .replace("{name: repeated, seq_len: 10, batch: 8, seed: 1}", "{name: file, path: tokens.txt}"))
    path = write(folder, spec)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = run(capsys, "verify", str(path), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["model"] == f"hf:{folder / 'neox'}" and doc["data"] == "tokens from tokens.txt"


def test_shipped_specs_name_shipped_models_as_builtin():
    for spec in (REPO / "specs").glob("*.yaml"):
        model = next(line for line in spec.read_text().splitlines() if line.startswith("model:"))
        assert model.startswith("model: builtin:"), (spec.name, model)


# ------------------------------------------------------------------ warnings
def test_a_misspelt_role_is_a_located_warning(tmp_path, capsys):
    path = write(tmp_path, SPEC.replace("L1H3: induction", "L1H3: inductoin"))
    code, out, err = run(capsys, "verify", str(path), "--json")
    assert code == 0
    expected = (f"{path}:10:5: circuit.nodes.L1H3: role 'inductoin' names no detector (did you mean "
                f"'induction'?) and no check uses it")
    assert f"warning: {expected}" in err
    assert json.loads(out)["warnings"] == [expected]


def test_a_faithfulness_without_any_effect_is_a_warning(tmp_path, capsys):
    """A model whose heads write nothing: ablating everything changes nothing, so the fraction recovered is
    0 / 0 (reported as null) and a warning says so with both values."""
    from circuitry.model import save_model
    from circuitry.sources import load_model

    model = load_model("builtin:attn-only-2l")
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_O.zero_()
    save_model(model, tmp_path / "mute")
    text = SPEC.replace("model: builtin:attn-only-2l", "model: mute")
    text += "  - id: faith\n    kind: faithfulness\n    expect: \">= 0.5\"\n"
    path = write(tmp_path, text)
    code, out, err = run(capsys, "verify", str(path), "--json")
    assert code == 1
    faith = next(c for c in json.loads(out)["checks"] if c["id"] == "faith")
    assert faith["value"] is None and not faith["passed"]
    clean = faith["details"]["metric_clean"]
    assert faith["details"]["metric_all_ablated"] == pytest.approx(clean, abs=1e-6)
    assert re.search(rf"warning: {re.escape(str(path))}:16:5: check 'faith': mean-ablating every component "
                     r"leaves loss almost unchanged \(clean [0-9.]+, all ablated [0-9.]+\)", err), err


def test_data_longer_than_a_shipped_model_was_trained_on_is_a_warning(capsys):
    code, out, err = run(capsys, "scan", "builtin:attn-only-2l", "--data", "repeated:seq_len=15", "--json")
    assert code == 0
    message = ("the data has 31 positions, but builtin:attn-only-2l was trained on shorter sequences: its circuits "
               "are reliable only in the first 23 positions (see its model card)")
    assert f"warning: {message}" in err and json.loads(out)["warnings"] == [message]
    code, out, err = run(capsys, "scan", "builtin:attn-only-2l", "--json")
    assert code == 0 and "warning" not in err and json.loads(out)["warnings"] == []


def test_text_of_unknown_tokens_is_a_warning(capsys):
    pytest.importorskip("transformers")
    code, _, err = run(capsys, "scan", "builtin:neox-induction", "--detectors", "previous_token",
                       "--data", 'text:text="日本語のテキスト, 日本語",repeat=2')
    assert code == 0
    assert "of the text are the tokenizer's unknown or BOS token" in err


# ------------------------------------------------------------------ one --data everywhere
@pytest.mark.parametrize("ref, expected", [
    ("repeated:seq_len=20,seed=3", ("repeated", {"seq_len": "20", "seed": "3"})),
    ('text:text="Hello, world",repeat=2', ("text", {"text": "Hello, world", "repeat": "2"})),
    ("text:text='a = b, c' , seed = 1", ("text", {"text": "a = b, c", "seed": "1"})),
    (r"text:text=a\,b", ("text", {"text": "a,b"})),
    ("tokens.npy", ("file", {"path": "tokens.npy"})),
])
def test_data_references_take_quoted_values(ref, expected):
    assert parse_data_ref(ref) == expected


def test_verify_data_changes_the_specs_data(capsys):
    spec = str(REPO / "specs/induction.yaml")
    code, out, _ = run(capsys, "verify", spec, "--data", "repeated:seq_len=8", "--json")
    assert code in (0, 1)
    assert json.loads(out)["data"] == "repeated random tokens (64 x 8 x 2, seed 1)"  # batch and seed kept
    code, out, err = run(capsys, "verify", spec, "--data", "periodic:period=8,batch=4")
    assert code in (0, 1) and "periodic repeats (4 x 64, period 8, seed 0)" in out
    code, _, err = run(capsys, "verify", spec, "--data", "repeated:sequence=3")
    assert code == 2 and "dataset 'repeated' has no parameter 'sequence'" in err


# ------------------------------------------------------------------ files that could be read without end
def test_pipes_are_refused_as_models_and_token_files(tmp_path, capsys):
    import os

    from circuitry.tokenfiles import token_file

    os.mkfifo(tmp_path / "model.safetensors")
    os.mkfifo(tmp_path / "tokens.txt")
    code, _, err = run(capsys, "info", str(tmp_path / "model.safetensors"))
    assert code == 2 and "not a regular file, but a device, a pipe or a socket" in err
    with pytest.raises(Exception, match="not a regular file, but a device, a pipe or a socket"):
        token_file(tmp_path / "tokens.txt", 65)


def test_component_numbers_too_long_for_an_int_are_a_usage_error():
    from circuitry.errors import UsageError
    from circuitry.names import parse_component

    with pytest.raises(UsageError, match="layer and head numbers have at most 9 digits"):
        parse_component("L" + "9" * 5000 + "H0")
