"""Malformed specs: `circuitry verify` exits 2 with one line on stderr that names file:line:col and
says what was expected; nothing in a spec can run code.

Every case is a spec written to tmp_path and run through `circuitry.cli.main(["verify", path])`;
the expected line and column are counted by hand in the text below.
"""

from __future__ import annotations

import pytest

from circuitry.cli import main

# line numbers of BASE, for counting the marks below
BASE = """\
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
  edges:
    - L0H0 -> L1H3 (K)
checks:
  - id: prev
    kind: detector
    detector: previous_token
    expect: ">= 0.9"
"""
#  1 apiVersion     5 model     9 L0H0      13 checks      17 expect
#  2 kind           6 data     10 L1H3      14 - id
#  3 metadata       7 circuit  11 edges     15 kind
#  4 name           8 nodes    12 - edge    16 detector

# an intervention check appended as lines 18-23
ABLATION = """\
  - id: abl
    kind: intervention
    intervention: zero
    target: L0H0
    metric: loss
    expect: {change: ">= 1"}
"""


def edit(*pairs: str, add: str = "") -> str:
    """BASE with each (old, new) pair replaced (old must occur exactly once), plus `add` at the end."""
    text = BASE
    for old, new in zip(pairs[::2], pairs[1::2]):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text + add


CASES = [
    # --- broken YAML
    ("bad-indentation", edit("  name: t\n", "  name: t\n   extra: 1\n"), 5, 9, "indented wrongly"),
    ("unclosed-bracket", edit("  edges:\n    - L0H0 -> L1H3 (K)\n", "  edges: [L0H0 -> L1H3 (K)\n"), 11, 10,
     "this '[' is not closed"),
    ("unclosed-brace", edit("data: {name: repeated, seq_len: 10, batch: 8, seed: 1}",
                            "data: {name: repeated, seq_len: 10"), 6, 7, "this '{' is not closed"),
    ("tab", edit("    L1H3: induction\n", "\tL1H3: induction\n"), 10, 1, "spaces, not tabs"),
    ("unclosed-quote", edit('expect: ">= 0.9"', 'expect: ">= 0.9'), 17, 13, "quoted string is not closed"),
    ("unquoted-greater-than", edit('expect: ">= 0.9"', "expect: >= 0.9"), 17, 13,
     "a value starting with '>' or '|' starts a YAML block of text here; quote it"),
    ("two-documents", BASE + "---\nmore: 1\n", 18, 1, "one YAML document"),
    # --- wrong types
    ("nodes-as-list", edit("  nodes:\n    L0H0: previous_token\n    L1H3: induction\n",
                           "  nodes: [L0H0, L1H3]\n"), 8, 10, "circuit.nodes: expected a mapping, got list"),
    ("batch-not-a-number", edit("batch: 8", 'batch: "ten"'), 6, 44,
     "parameter 'batch' of dataset 'repeated' must be an integer"),
    ("expect-true", edit('expect: ">= 0.9"', "expect: true"), 17, 13, "expected an expectation"),
    ("model-not-a-string", edit("model: builtin:attn-only-2l", "model: 3"), 5, 8,
     "expected a model reference"),
    ("document-is-a-list", "- L0H0\n- L1H3\n", 1, 1, "expected a mapping, got list"),
    # --- names the model lacks
    ("head-model-lacks-in-nodes", edit("    L1H3: induction\n", "    L1H3: induction\n    L9H9: induction\n"),
     11, 5, "the model has no head L9H9: it has heads L0H0..L1H3"),
    ("head-model-lacks-in-target", edit(add=ABLATION.replace("target: L0H0", "target: L9H9")), 21, 13,
     "checks[1].target: the model has no head L9H9"),
    ("head-model-lacks-in-node-list", edit("    detector: previous_token\n",
                                           "    detector: previous_token\n    nodes: [L0H0, L7H1]\n"), 17, 19,
     "checks[0].nodes[1]: the model has no head L7H1"),
    # --- unknown plugin names (with did-you-mean)
    ("unknown-detector", edit("detector: previous_token", "detector: previous_tokn"), 16, 15,
     "unknown detector 'previous_tokn' (did you mean 'previous_token'?)"),
    ("unknown-metric", edit(add=ABLATION.replace("metric: loss", "metric: los")), 22, 13,
     "unknown metric 'los' (did you mean 'loss'?)"),
    ("unknown-intervention", edit(add=ABLATION.replace("intervention: zero", "intervention: zer")), 20, 19,
     "unknown intervention 'zer' (did you mean 'zero'?)"),
    ("unknown-dataset", edit("name: repeated", "name: repeatd"), 6, 14,
     "unknown dataset 'repeatd' (did you mean 'repeated'?)"),
    ("unknown-dataset-parameter", edit("seq_len: 10", "seqlen: 10"), 6, 24,
     "dataset 'repeated' has no parameter 'seqlen' (did you mean 'seq_len'?)"),
    ("unknown-reference-data-parameter", BASE + "reference_data: {sed: 2}\n", 18, 18,
     "has no parameter 'sed' (did you mean 'seed'?)"),
    ("unknown-check-kind", edit("kind: detector", "kind: detectr"), 15, 11,
     "unknown check kind 'detectr' (did you mean 'detector'?)"),
    # --- edges
    ("edge-to-undeclared-node", edit("- L0H0 -> L1H3 (K)", "- L0H0 -> L1H2 (K)"), 12, 7,
     "names 'L1H2', which is not a node of the circuit (did you mean 'L1H3'?)"),
    ("malformed-edge", edit("- L0H0 -> L1H3 (K)", "- L0H0 => L1H3 (K)"), 12, 7,
     "'L0H0 => L1H3 (K)' is not an edge: expected an edge 'A -> B (KIND)'"),
    ("edge-kind-unknown", edit("- L0H0 -> L1H3 (K)", "- L0H0 -> L1H3 (X)"), 12, 7,
     "unknown edge kind 'X'; valid: Q, K, V, mlp_in, direct"),
    ("edge-wrong-layer-order", edit("    L1H3: induction\n", "    L1H3: induction\n    L0H1: other\n",
                                    "- L0H0 -> L1H3 (K)", "- L1H3 -> L0H1 (K)"), 13, 7,
     "the sender must be in an earlier layer than the receiver (layer 1 is not before layer 0)"),
    ("edge-object-misspelled-key", edit(add=ABLATION.replace("target: L0H0", "target: {from: L0H0, to: L1H3, knd: K}")),
     21, 36, "unknown key 'knd' (did you mean 'kind'?)"),
    # --- expectations
    ("threshold-not-a-number", edit('">= 0.9"', '">= abc"'), 17, 13, "cannot read expectation '>= abc'; write '>= X'"),
    ("empty-range", edit('">= 0.9"', '"1.0 .. 0.5"'), 17, 13, "is empty: the lower bound is above the upper"),
    ("empty-range-list", edit('">= 0.9"', "[1.0, 0.5]"), 17, 13, "is empty"),
    ("expect-mapping-two-keys", edit(add=ABLATION.replace('{change: ">= 1"}', '{change: ">= 1", value: "< 3"}')),
     23, 13, "give exactly one of change, relative_change, value"),
    ("expect-mapping-on-detector", edit('expect: ">= 0.9"', 'expect: {ratio_to_baseline: ">= 1"}'), 17, 13,
     "expected an expectation"),
    # --- decomposition paths and targets
    ("decomposition-path-order", edit(add="  - id: d\n    kind: decomposition\n    path: [L1H3, L0H0]\n"
                                          "    expect: '>= 0.1'\n"), 20, 11,
     "the first head must be in an earlier layer than the second (layer 1 is not before layer 0); "
     "did you mean ('L0H0', 'L1H3')?"),
    ("decomposition-target-not-a-token", edit(add="  - id: d\n    kind: decomposition\n    path: L1H3\n"
                                                  "    target: 999\n    expect: '>= 0.1'\n"), 21, 13,
     "target token 999 is not a token id of the model (0..64)"),
    ("decomposition-target-word", edit(add="  - id: d\n    kind: decomposition\n    path: L1H3\n"
                                           "    target: wrong\n    expect: '>= 0.1'\n"), 21, 13,
     "expected 'correct' or a token id, got 'wrong'"),
    # --- keys
    ("duplicate-key", edit("model: builtin:attn-only-2l\n", "model: builtin:attn-only-2l\nmodel: other\n"), 6, 1,
     "duplicate key 'model' (first defined at line 5)"),
    ("duplicate-check-id", edit(add=ABLATION.replace("id: abl", "id: prev")), 18, 9, "duplicate check id 'prev'"),
    ("unknown-top-level-key", edit("checks:", "chekcs:"), 13, 1, "unknown key 'chekcs' (did you mean 'checks'?)"),
    ("missing-apiVersion", edit("apiVersion: circuitry/v1\n", ""), 1, 1, "missing required key 'apiVersion'"),
    ("missing-checks", BASE.split("checks:")[0], 1, 1, "missing required key 'checks'"),
    ("wrong-apiVersion", edit("circuitry/v1", "circuitry/v2"), 1, 13,
     "unknown value 'circuitry/v2' (did you mean 'circuitry/v1'?)"),
    ("nodes-and-role", edit("    detector: previous_token\n",
                            "    detector: previous_token\n    nodes: [L0H0]\n    role: previous_token\n"), 18, 5,
     "give nodes or role, not both"),
    ("role-matches-no-node", edit("    detector: previous_token\n",
                                  "    detector: previous_token\n    role: previous_tokens\n"), 17, 11,
     "no circuit node has role 'previous_tokens' (did you mean 'previous_token'?)"),
    # --- the model reference
    ("missing-model-file", edit("model: builtin:attn-only-2l", "model: models/nothere.safetensors"), 5, 8,
     "no such model file or directory"),
    ("unknown-model-source", edit("model: builtin:attn-only-2l", "model: nosuch:gpt2"), 5, 8,
     "unknown model source 'nosuch'"),
    ("unknown-builtin-model", edit("builtin:attn-only-2l", "builtin:attn-only-3l"), 5, 8,
     "unknown builtin model 'attn-only-3l' (did you mean 'attn-only-2l'?)"),
    # --- files
    ("empty-file", "", 1, 1, "the file is empty"),
    ("custom-tag", edit("name: t", "name: !env HOME"), 4, 9, "unsupported YAML tag '!env'"),
]


def run_verify(capsys, path) -> tuple[int, str, str]:
    code = main(["verify", str(path)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_enough_cases():
    assert len(CASES) >= 25
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name,text,line,col,message", CASES, ids=[c[0] for c in CASES])
def test_malformed_spec(tmp_path, capsys, name, text, line, col, message):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    code, out, err = run_verify(capsys, path)
    assert code == 2, (out, err)
    error = assert_one_line_error(err)
    assert error.startswith(f"error: {path}:{line}:{col}: "), error
    assert message in error, error
    assert out == ""


@pytest.mark.parametrize("tag", [
    '!!python/object/apply:os.system ["touch {marker}"]',
    "!!python/object/apply:subprocess.call [[touch, {marker}]]",
    '!!python/name:os.system ""',
])
def test_python_tags_run_nothing(tmp_path, capsys, tag):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.yaml"
    path.write_text(edit("name: t", "name: " + tag.format(marker=marker)))
    code, _, err = run_verify(capsys, path)
    assert code == 2
    error = assert_one_line_error(err)
    assert error.startswith(f"error: {path}:4:9: metadata.name: unsupported YAML tag '!!python/")
    assert not marker.exists()


def test_not_utf8(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(edit("name: t", "name: caf\xe9").encode("latin-1"))
    code, _, err = run_verify(capsys, path)
    assert code == 2
    assert assert_one_line_error(err) == f"error: {path}:1:1: the file is not UTF-8 text"


def test_directory_instead_of_a_file(tmp_path, capsys):
    code, out, err = run_verify(capsys, tmp_path)
    assert code == 2 and out == ""
    assert assert_one_line_error(err) == f"error: {tmp_path} is a directory, not a spec file"


def test_file_that_does_not_exist(tmp_path, capsys):
    path = tmp_path / "nothere.yaml"
    code, out, err = run_verify(capsys, path)
    assert code == 2 and out == ""
    assert assert_one_line_error(err) == f"error: no such spec file: {path}"


def test_every_spec_is_checked_before_any_runs(tmp_path, capsys):
    """A broken second spec stops the command before the first one prints a table."""
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(BASE)
    bad.write_text(edit("detector: previous_token", "detector: inductoin"))
    code = main(["verify", str(good), str(bad)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    error = assert_one_line_error(captured.err)
    assert error.startswith(f"error: {bad}:16:15: ") and "(did you mean 'induction'?)" in error


def test_base_spec_is_valid(tmp_path, capsys):
    """The cases above differ from a spec that runs: each error comes from its one edit."""
    path = tmp_path / "base.yaml"
    path.write_text(BASE + ABLATION)
    code, out, err = run_verify(capsys, path)
    assert code == 0, err
    assert "2 of 2 checks passed" in out
