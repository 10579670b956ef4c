"""The JSON Schema of specs (generated from SPEC_SCHEMA, committed for editors) and docs/specs.md.

The schema must accept every spec in specs/ and the full specs in docs/specs.md, reject malformed
ones, and equal the committed schema/circuitry-spec-v1.json. Every ```yaml block of docs/specs.md
is exercised: full specs load (and the full example verifies against builtin:attn-only-2l); check
snippets are added to the full example and verified too.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from circuitry.spec import json_schema, load_spec

jsonschema = pytest.importorskip("jsonschema")  # in the test extra

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
COMMITTED = ROOT / "schema" / "circuitry-spec-v1.json"
DOCS = ROOT / "docs" / "specs.md"


@pytest.fixture(scope="module")
def validator():
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def yaml_blocks(text: str) -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", text, flags=re.M | re.S)


def doc_blocks() -> tuple[list[str], list[str], list[str]]:
    """(full specs, check snippets, other fragments) of docs/specs.md."""
    full, checks, other = [], [], []
    for block in yaml_blocks(DOCS.read_text()):
        if "apiVersion:" in block:
            full.append(block)
        elif block.lstrip().startswith("- id:"):
            checks.append(block)
        else:
            other.append(block)
    return full, checks, other


# ------------------------------------------------------------------ the schema
@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_schema_accepts_every_spec(validator, path):
    assert list(validator.iter_errors(yaml.safe_load(path.read_text()))) == []


def test_there_are_specs():
    assert {p.name for p in SPECS} >= {"induction.yaml", "wrong-previous-token.yaml"}


def _induction(edit=None) -> dict:
    doc = yaml.safe_load((ROOT / "specs" / "induction.yaml").read_text())
    if edit:
        edit(doc)
    return doc


MALFORMED = {
    "unknown top-level key": lambda d: d.update(chekcs=d.pop("checks")),
    "unknown key in a check": lambda d: d["checks"][0].update(expected=">= 0.9"),
    "nodes as a list": lambda d: d["circuit"].update(nodes=["L0H0", "L1H0"]),
    "metadata without name": lambda d: d["metadata"].pop("name"),
    "wrong apiVersion": lambda d: d.update(apiVersion="circuitry/v2"),
    "missing model": lambda d: d.pop("model"),
    "empty checks": lambda d: d.update(checks=[]),
    "expectation not a number": lambda d: d["checks"][0].update(expect=">= abc"),
    "expectation true": lambda d: d["checks"][0].update(expect=True),
    "expectation of three numbers": lambda d: d["checks"][0].update(expect=[1, 2, 3]),
    "unknown check kind": lambda d: d["checks"][0].update(kind="detectr"),
    "malformed edge": lambda d: d["circuit"]["edges"].append("L0H0 => L1H0 (K)"),
    "edge kind X": lambda d: d["circuit"]["edges"].append("L0H0 -> L1H0 (X)"),
    "node name": lambda d: d["circuit"]["nodes"].update(head3="x"),
    "check id with a space": lambda d: d["checks"][0].update(id="has space"),
    "data as a list": lambda d: d.update(data=["repeated"]),
    "intervention expect key": lambda d: d["checks"][5].update(expect={"chnge": ">= 1"}),
    "decomposition target word": lambda d: d["checks"][9].update(target="wrong"),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_schema_rejects_malformed_specs(validator, name, tmp_path):
    doc = _induction(MALFORMED[name])
    assert list(validator.iter_errors(doc)), name
    # and `load_spec` rejects each one as well: the schema and validation agree
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(doc))
    from circuitry.spec import SpecError

    with pytest.raises(SpecError):
        load_spec(path)


def test_valid_variants_are_accepted(validator):
    """Forms the format allows beyond specs/: edge mappings, roles as mappings, ranges, bare numbers."""
    def edit(d):
        d["circuit"]["nodes"]["L0H2"] = {"role": "previous_token", "description": "weaker"}
        d["circuit"]["edges"].append({"from": "L0H2", "to": "L1H1", "kind": "Q"})
        d["checks"][0]["expect"] = [0.9, 1.0]
        d["checks"][1]["expect"] = 0.5
        d["checks"][2]["expect"] = "== 1 +- 0.1"
        d["checks"][9].update(path="direct", target=5)
    assert list(validator.iter_errors(_induction(edit))) == []


def test_plugin_names_are_open_unless_asked(validator):
    """The committed schema does not depend on the plugins installed; --plugins enumerates them."""
    doc = _induction(lambda d: d["checks"][0].update(detector="my_lab_detector"))
    assert list(validator.iter_errors(doc)) == []
    installed = jsonschema.Draft202012Validator(json_schema(plugins=True))
    assert list(installed.iter_errors(doc))
    assert list(installed.iter_errors(_induction())) == []


def test_committed_schema_is_the_generated_one():
    assert COMMITTED.exists(), "run: python -m circuitry.spec > schema/circuitry-spec-v1.json"
    assert json.loads(COMMITTED.read_text()) == json_schema(), \
        "schema/circuitry-spec-v1.json is stale: python -m circuitry.spec > schema/circuitry-spec-v1.json"


def test_regenerating_prints_the_committed_file():
    proc = subprocess.run([sys.executable, "-m", "circuitry.spec"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == COMMITTED.read_text(encoding="utf-8")
    bad = subprocess.run([sys.executable, "-m", "circuitry.spec", "--nope"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "usage: python -m circuitry.spec" in bad.stderr


# ------------------------------------------------------------------ docs/specs.md
def test_docs_full_specs_load_and_validate(validator):
    full, _, _ = doc_blocks()
    assert full, "docs/specs.md has no full spec"
    for block in full:
        spec = load_spec(text=block)
        assert spec.checks
        assert list(validator.iter_errors(yaml.safe_load(block))) == []


def test_docs_example_and_snippets_verify():
    """The full example, with every check snippet of the page added, holds on builtin:attn-only-2l."""
    from circuitry.verify import verify

    full, snippets, _ = doc_blocks()
    example = full[0]
    assert "model: builtin:attn-only-2l" in example
    kinds = {c.kind for c in load_spec(text=example).checks}
    assert kinds == {"detector", "composition", "intervention", "faithfulness", "decomposition"}
    expects = example + "".join(snippets)
    for key in ("change:", "relative_change:", "value:"):  # each form of an intervention expectation
        assert key in expects
    text = example.rstrip("\n") + "\n" + "".join(
        "\n".join("  " + line for line in s.rstrip("\n").splitlines()) + "\n" for s in snippets)
    spec = load_spec(text=text)
    assert len(spec.checks) == len(load_spec(text=example).checks) + sum(s.count("- id:") for s in snippets)
    report = verify(spec)
    assert [c.id for c in report.failed] == []


def test_docs_fragments_parse():
    """The remaining yaml blocks (nodes, edges, editor comment) are valid YAML of the documented shape."""
    _, _, other = doc_blocks()
    assert other
    for block in other:
        yaml.safe_load(block)
