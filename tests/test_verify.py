"""`circuitry verify`: exit codes, the JSON document, the table, and the measured values checked
against independent computations written here with plain hooks (not the intervention machinery).

specs/induction.yaml must pass on builtin:attn-only-2l, specs/wrong-previous-token.yaml must fail.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from circuitry.cli import main
from circuitry.data import repeated_tokens
from circuitry.model import HookedTransformer, save_model
from circuitry.scan import scan

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
INDUCTION = str(SPECS / "induction.yaml")
WRONG = str(SPECS / "wrong-previous-token.yaml")
# every spec in specs/ and the exit code `circuitry verify` must give on it (a new spec must be added here)
EXPECTED_EXIT = {"induction.yaml": 0, "wrong-previous-token.yaml": 1, "induction-gpt2.yaml": 0, "ioi-toy.yaml": 0}
NEEDS_TRANSFORMERS = {"induction-gpt2.yaml"}  # a Hugging Face model, loaded through hf:
CHECK_KEYS = {"id", "kind", "claim", "value", "expect", "passed", "details", "seconds"}
KINDS = {"detector", "composition", "intervention", "faithfulness", "decomposition"}


@functools.lru_cache(maxsize=None)
def verify_cli(*args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `circuitry verify ARGS`, run in-process once per argument list."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["verify", *args])
    return code, out.getvalue(), err.getvalue()


def verify_json(*args: str) -> tuple[int, dict]:
    code, out, err = verify_cli(*args, "--json")
    return code, json.loads(out)  # exactly one JSON document: json.loads rejects anything after it


def checks_by_id(doc: dict) -> dict[str, dict]:
    return {c["id"]: c for c in doc["checks"]}


# ------------------------------------------------------------------ the data the specs name, made here
@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    """specs/induction.yaml's data: BOS + 10 random tokens repeated twice, 64 sequences, seed 1 [64, 21]."""
    return repeated_tokens(65, 64, batch=64, seq_len=10, n_repeats=2, seed=1).tokens


@pytest.fixture(scope="module")
def reference_tokens() -> torch.Tensor:
    """Its reference_data: the same with seed 2 [64, 21]."""
    return repeated_tokens(65, 64, batch=64, seq_len=10, n_repeats=2, seed=2).tokens


def repeat_loss(logits: torch.Tensor, tokens: torch.Tensor) -> float:
    """Mean next-token loss at positions 11..19 [batch, 21]: those whose next token (12..20) is in the
    second copy and can be copied from the first."""
    assert tokens.shape[1] == 21 and bool((tokens[:, 1:11] == tokens[:, 11:21]).all())
    lg = logits[:, 11:20]  # [batch, 9, d_vocab]
    return float(F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tokens[:, 12:21].reshape(-1)))


# ------------------------------------------------------------------ exit codes and the JSON document
def test_every_spec_in_specs_is_verified():
    assert sorted(p.name for p in SPECS.glob("*.yaml")) == sorted(EXPECTED_EXIT), \
        "add each spec in specs/ to EXPECTED_EXIT"
    import importlib.util

    have_hf = importlib.util.find_spec("transformers") is not None
    for name, expected in EXPECTED_EXIT.items():
        if name in NEEDS_TRANSFORMERS and not have_hf:
            continue  # tests/test_gpt2_example.py covers it where transformers is installed
        code, doc = verify_json(str(SPECS / name))
        assert code == expected, name
        assert doc["passed"] is (expected == 0)


def test_induction_spec_json_document():
    code, doc = verify_json(INDUCTION)
    assert code == 0
    assert {"spec", "model", "passed", "checks"} <= set(doc)
    assert doc["spec"] == INDUCTION and doc["model"] == "builtin:attn-only-2l" and doc["passed"] is True
    assert len(doc["checks"]) == 10
    assert {c["kind"] for c in doc["checks"]} == KINDS
    for c in doc["checks"]:
        assert set(c) == CHECK_KEYS
        assert c["passed"] is True and isinstance(c["value"], float) and isinstance(c["expect"], str)
    checks = checks_by_id(doc)
    assert checks["previous-token-heads"]["expect"] == ">= 0.9"
    assert checks["k-composition"]["expect"] == "ratio_to_baseline >= 1.5"
    # the claims, as measured
    assert checks["ablate-previous-token-head"]["value"] >= 1.0
    assert checks["patch-k-edges"]["value"] >= 1.0
    assert checks["patch-v-edges"]["value"] < 0.3 * checks["patch-k-edges"]["value"]
    assert checks["faithfulness"]["value"] >= 0.8


def test_induction_spec_table():
    code, out, err = verify_cli(INDUCTION)
    assert code == 0, err
    assert "10 of 10 checks passed" in out
    for check_id in ("previous-token", "k-composition", "faithfulness", "patch-v-edges"):
        assert check_id in out
    assert "FAIL" not in out


def test_failing_spec_names_the_failed_claim_with_its_value(tokens):
    code, out, err = verify_cli(WRONG)
    assert code == 1, err
    summary = [line for line in out.splitlines() if "checks failed" in line]
    assert summary == ["1 of 2 checks failed: l0h1-is-previous-token (measured 0.1187, expected >= 0.9)"]
    code, doc = verify_json(WRONG)
    assert code == 1 and doc["passed"] is False
    failed = [c for c in doc["checks"] if not c["passed"]]
    assert [c["id"] for c in failed] == ["l0h1-is-previous-token"]
    # the measured value: mean attention of L0H1 from each position to the one before it
    _, cache = shipped_run(tokens)
    expected = float(cache["blocks.0.attn.hook_pattern"][:, 1].diagonal(-1, -2, -1).mean())
    assert failed[0]["value"] == pytest.approx(expected, abs=1e-6)
    assert 0.1 < expected < 0.14
    assert checks_by_id(doc)["l1h3-is-induction"]["passed"] is True


# ------------------------------------------------------------------ measured values, independently
@functools.lru_cache(maxsize=None)
def _model() -> HookedTransformer:
    from circuitry.sources import load_model

    return load_model("builtin:attn-only-2l").eval()


def shipped_run(tokens, hooks=()):
    """(logits [batch, pos, d_vocab], cache) of the shipped model, with plain hooks."""
    model = _model()
    with torch.inference_mode(), model.hooks(list(hooks)):
        return model.run_with_cache(tokens)


def test_previous_token_values(tokens):
    _, doc = verify_json(INDUCTION)
    check = checks_by_id(doc)["previous-token-heads"]
    _, cache = shipped_run(tokens)
    pattern = cache["blocks.0.attn.hook_pattern"]  # [batch, head, q, k]
    n = pattern.shape[-1]
    mine = {f"L0H{h}": float(sum(pattern[:, h, i, i - 1].mean() for i in range(1, n)) / (n - 1)) for h in (0, 2)}
    assert check["details"]["values"] == pytest.approx(mine, abs=1e-5)
    assert check["value"] == pytest.approx(min(mine.values()), abs=1e-5)  # the head closest to failing


def test_zero_ablation_change(tokens):
    _, doc = verify_json(INDUCTION)
    check = checks_by_id(doc)["ablate-previous-token-head"]

    def zero_l0h0(z, hook):  # z [batch, pos, head, d_head]
        z = z.clone()
        z[:, :, 0] = 0.0
        return z

    clean = repeat_loss(shipped_run(tokens)[0], tokens)
    ablated = repeat_loss(shipped_run(tokens, [("blocks.0.attn.hook_z", zero_l0h0)])[0], tokens)
    assert check["value"] == pytest.approx(ablated - clean, abs=1e-4)
    assert check["details"]["metric_clean"] == pytest.approx(clean, abs=1e-5)
    assert ablated - clean > 1.0


def test_faithfulness_fraction(tokens, reference_tokens):
    """Mean ablation by hand: each head's z averaged over the reference batch at each position."""
    _, doc = verify_json(INDUCTION)
    check = checks_by_id(doc)["faithfulness"]
    _, ref_cache = shipped_run(reference_tokens)
    means = [ref_cache[f"blocks.{l}.attn.hook_z"].mean(0) for l in range(2)]  # [pos, head, d_head]

    def mean_ablate(heads):
        def hook(layer):
            def fn(z, hook):  # z [batch, pos, head, d_head]
                z = z.clone()
                for l, h in heads:
                    if l == layer:
                        z[:, :, h] = means[l][:, h]
                return z
            return fn
        return [(f"blocks.{l}.attn.hook_z", hook(l)) for l in range(2)]

    every = [(l, h) for l in range(2) for h in range(4)]
    circuit = {(0, 0), (0, 2), (1, 0), (1, 1), (1, 3)}  # the spec's nodes
    clean = repeat_loss(shipped_run(tokens)[0], tokens)
    all_ablated = repeat_loss(shipped_run(tokens, mean_ablate(every))[0], tokens)
    circuit_only = repeat_loss(shipped_run(tokens, mean_ablate([x for x in every if x not in circuit]))[0], tokens)
    fraction = (all_ablated - circuit_only) / (all_ablated - clean)
    assert check["value"] == pytest.approx(fraction, abs=1e-4)
    assert check["details"]["metric_all_ablated"] == pytest.approx(all_ablated, abs=1e-4)
    assert check["details"]["metric_circuit_only"] == pytest.approx(circuit_only, abs=1e-4)
    assert fraction >= 0.8


def test_composition_ratio_equals_scan(tokens):
    from circuitry.data import TokenBatch

    _, doc = verify_json(INDUCTION)
    check = checks_by_id(doc)["k-composition"]
    batch = repeated_tokens(65, 64, batch=64, seq_len=10, n_repeats=2, seed=1)
    assert isinstance(batch, TokenBatch) and torch.equal(batch.tokens, tokens)
    ps = scan(_model(), batch, ["composition"]).pairs["composition"]
    edges = check["details"]["edges"]
    assert len(edges) == 6
    for l0 in (0, 2):
        for l1 in (0, 1, 3):
            row = edges[f"L0H{l0} -> L1H{l1} (K)"]
            ratio = float(ps.scores["K"][0, l0, 1, l1]) / ps.baseline["K"]
            assert row["ratio_to_baseline"] == pytest.approx(ratio, rel=1e-6)
    assert check["value"] == pytest.approx(min(r["ratio_to_baseline"] for r in edges.values()), rel=1e-9)


# ------------------------------------------------------------------ options
@pytest.fixture(scope="module")
def random_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised model with the shipped model's config, saved as a checkpoint directory."""
    path = tmp_path_factory.mktemp("random") / "random-attn-only-2l"
    save_model(HookedTransformer(_model().cfg, seed=123), path)
    return path


def test_model_option_overrides_the_spec(random_model_dir):
    code, doc = verify_json(INDUCTION, "--model", str(random_model_dir))
    assert code == 1
    assert doc["model"] == str(random_model_dir) and doc["passed"] is False
    checks = checks_by_id(doc)
    for check_id in ("previous-token-heads", "induction-heads"):  # a random model has no such heads
        assert checks[check_id]["passed"] is False
    assert checks["previous-token-heads"]["value"] < 0.9


def test_relative_model_path_is_found_next_to_the_spec(tmp_path, monkeypatch):
    """model: a relative path resolves against the spec's directory, wherever the command runs."""
    save_model(_model(), tmp_path / "weights")
    spec = tmp_path / "spec.yaml"
    spec.write_text(Path(WRONG).read_text().replace("model: builtin:attn-only-2l", "model: weights"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, doc = verify_json(str(spec))
    assert code == 1 and doc["model"] == str(tmp_path / "weights")  # the reference as it was loaded
    _, builtin = verify_json(WRONG)
    assert [c["value"] for c in doc["checks"]] == [c["value"] for c in builtin["checks"]]


def test_several_specs_in_one_call():
    code, out, _ = verify_cli(INDUCTION, WRONG)
    assert code == 1
    assert "10 of 10 checks passed" in out and "1 of 2 checks failed" in out
    code, doc = verify_json(INDUCTION, WRONG)
    assert code == 1 and doc["passed"] is False
    assert [r["spec"] for r in doc["reports"]] == [INDUCTION, WRONG]
    assert [r["passed"] for r in doc["reports"]] == [True, False]


def test_verbose_shows_per_node_values(tokens):
    _, cache = shipped_run(tokens)
    l0h0 = float(cache["blocks.0.attn.hook_pattern"][:, 0].diagonal(-1, -2, -1).mean())
    text = f"{l0h0:.4g}"  # L0H0's score; the check itself reports L0H2's, the lower one
    code, verbose, _ = verify_cli(INDUCTION, "-v")
    assert code == 0
    rows = [line for line in verbose.splitlines() if " L0H0 " in line and text in line]
    assert rows, verbose
    assert " ms " in verbose  # timings
    _, plain, _ = verify_cli(INDUCTION)
    assert text not in plain


def test_verify_as_a_subprocess(record_property):
    """The installed command on the shipped spec, start-up included (the time is recorded, not asserted)."""
    exe = Path(sys.executable).parent / "circuitry"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "circuitry"]
    start = time.perf_counter()
    proc = subprocess.run([*cmd, "verify", INDUCTION], capture_output=True, text=True, timeout=300, cwd=ROOT)
    wall = time.perf_counter() - start
    record_property("verify_induction_wall_s", round(wall, 2))
    assert proc.returncode == 0, proc.stderr
    assert "10 of 10 checks passed" in proc.stdout
    assert "Traceback" not in proc.stderr



DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_device_option_gives_the_same_values(device):
    code, doc = verify_json(WRONG, "--device", device)
    _, default = verify_json(WRONG)
    assert code == 1
    for mine, ref in zip(doc["checks"], default["checks"]):
        assert mine["value"] == pytest.approx(ref["value"], abs=1e-4)


@pytest.mark.parametrize("device,message", [
    ("nosuch", "error: device 'nosuch' is not a torch device (cpu, cuda, cuda:1, mps ...)"),
    *([("cuda", "error: device 'cuda': CUDA is not available here (use cpu)")]
      if not torch.cuda.is_available() else []),
])
def test_bad_device_is_a_usage_error(device, message):
    code, out, err = verify_cli(WRONG, "--device", device)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [message]


def test_dataset_without_a_seed_is_its_own_reference(tmp_path, tokens):
    """data from a token file: the reference batch for mean ablation is the same file (no seed + 1)."""
    path = tmp_path / "tokens.txt"
    path.write_text("\n".join(" ".join(map(str, row)) for row in tokens[:8].tolist()) + "\n")
    spec = tmp_path / "file-data.yaml"
    spec.write_text(f"""\
apiVersion: circuitry/v1
kind: CircuitSpec
metadata: {{name: file-data}}
model: builtin:attn-only-2l
data: {{name: file, path: {json.dumps(str(path))}}}
circuit:
  nodes: {{L0H0: previous_token}}
checks:
  - {{id: mean-ablate, kind: intervention, intervention: mean, target: L0H0, metric: loss_all, expect: ">= 0.1"}}
""")
    code, doc = verify_json(str(spec))
    assert code == 0, doc
    check = doc["checks"][0]
    # by hand: L0H0's z replaced by its mean over the same 8 sequences, loss on every position
    _, cache = shipped_run(tokens[:8])
    mean = cache["blocks.0.attn.hook_z"][:, :, 0].mean(0)  # [pos, d_head]

    def mean_l0h0(z, hook):
        z = z.clone()
        z[:, :, 0] = mean
        return z

    def loss_all(logits):
        return float(F.cross_entropy(logits[:, :-1].reshape(-1, 65), tokens[:8, 1:].reshape(-1)))

    change = loss_all(shipped_run(tokens[:8], [("blocks.0.attn.hook_z", mean_l0h0)])[0]) - \
        loss_all(shipped_run(tokens[:8])[0])
    assert check["value"] == pytest.approx(change, abs=1e-4)


def test_summary_stays_on_one_line(tmp_path):
    """A long failing claim id is still named whole, with its value, on one line of any width."""
    long_id = "l0h1-is-a-previous-token-head-according-to-a-long-and-wrong-hypothesis"
    spec = tmp_path / "long.yaml"
    spec.write_text(Path(WRONG).read_text().replace("l0h1-is-previous-token", long_id))
    code, out, _ = verify_cli(str(spec))
    assert code == 1
    summary = [line for line in out.splitlines() if "checks failed" in line]
    assert summary == [f"1 of 2 checks failed: {long_id} (measured 0.1187, expected >= 0.9)"]
    # the table shows the whole id too (folded over lines in an 80-column console, never cut)
    assert long_id in "".join(line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│"))
