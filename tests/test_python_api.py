"""The notebook surface `import circuitry as cy`: torch-free import, each export on the shipped model, specs
built in Python, in-memory model conversions, and the inline HTML of reports, scans, graphs and patterns."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import circuitry as cy

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "specs" / "induction.yaml"
NETWORK = re.compile(r"""(?:src|href|srcset|action)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?(?:https?:)?//|@import""",
                     re.I)


@pytest.fixture(scope="module")
def model():
    return cy.load_model("builtin:attn-only-2l")


def _self_contained(html: str) -> None:
    assert NETWORK.search(html) is None
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html


def _patterns(model, tokens: torch.Tensor) -> dict[int, torch.Tensor]:
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens)
    return {l: cache[f"blocks.{l}.attn.hook_pattern"] for l in range(model.cfg.n_layers)}  # [batch, head, q, k]


# ------------------------------------------------------------------ import
def test_import_circuitry_does_not_import_torch():
    code = ("import circuitry, sys; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert isinstance(circuitry.__version__, str); "
            "assert {'scan', 'verify', 'Spec', 'from_hf', 'patch'} <= set(dir(circuitry)); "
            "assert 'torch' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr


def test_scan_and_verify_are_callable_modules():
    import circuitry.scan
    import circuitry.verify

    assert cy.scan is circuitry.scan and callable(cy.scan) and circuitry.scan.ScanResult.__name__ == "ScanResult"
    assert callable(cy.verify) and circuitry.verify.VerificationReport.__name__ == "VerificationReport"
    import inspect

    assert list(inspect.signature(cy.verify).parameters)[:2] == ["spec", "model"]
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        cy.nonexistent  # noqa: B018


# ------------------------------------------------------------------ exports on the shipped model
def test_make_batch_and_scan_match_the_patterns(model):
    batch = cy.make_batch(model, "repeated:seq_len=10,batch=8,seed=3")
    assert tuple(batch.tokens.shape) == (8, 21)
    result = cy.scan(model, batch, detectors="previous_token")
    pats = _patterns(model, batch.tokens)
    expect = torch.stack([pats[l].diagonal(offset=-1, dim1=-2, dim2=-1).mean((0, 2)) for l in range(2)])
    assert torch.allclose(result.heads["previous_token"], expect.float(), atol=1e-6)
    assert float(result.heads["previous_token"][0, 0]) > 0.9  # L0H0: the previous-token head
    by_ref = cy.scan("builtin:attn-only-2l", "repeated:seq_len=10,batch=8,seed=3", ["previous_token"])
    assert torch.equal(by_ref.heads["previous_token"], result.heads["previous_token"])


def test_verify_from_path_text_and_dict(model):
    report = cy.verify(str(SPEC), model)
    assert report.passed and len(report.checks) == 10
    from_dict = cy.verify(yaml.safe_load(SPEC.read_text()), model)
    from_text = cy.Spec.from_yaml(SPEC.read_text()).verify(model)
    for a, b, c in zip(report.checks, from_dict.checks, from_text.checks):
        assert a.id == b.id == c.id and a.value == pytest.approx(b.value) == pytest.approx(c.value)
    # the report's model is the one given; a model reference loads it
    assert cy.verify(SPEC, "builtin:attn-only-2l").checks[0].value == pytest.approx(report.checks[0].value)


def _loss_at_reads(logits: torch.Tensor, batch) -> torch.Tensor:
    """Cross-entropy of the answers at the read positions, written out (independent of the metric plugin)."""
    rows = torch.arange(logits.shape[0])[:, None]
    lg = logits[rows, batch.read].reshape(-1, logits.shape[-1]).float()
    return F.cross_entropy(lg, batch.answer.reshape(-1))


def test_task_batch_patch_and_one_metric_signature(model):
    batch = cy.task_batch(model, "induction", data="repeated:seq_len=8,batch=8,seed=5")
    assert tuple(batch.corrupted.shape) == tuple(batch.tokens.shape) == (8, 17)
    by_name = cy.patch(model, batch, "heads", metric="loss")
    with torch.inference_mode():
        clean = _loss_at_reads(model(batch.tokens), batch)
        corrupted = _loss_at_reads(model(batch.corrupted), batch)
    assert by_name.clean == pytest.approx(float(clean), rel=1e-5)
    assert by_name.corrupted == pytest.approx(float(corrupted), rel=1e-5)
    # a function with the plugins' signature (logits, batch, clean_logits) gives the same sweep
    by_function = cy.patch(model, batch, "heads", metric=lambda logits, b, clean_logits=None: _loss_at_reads(logits, b))
    assert torch.allclose(by_function.values, by_name.values, atol=1e-5)
    assert by_name.values.shape == (2, 4)
    with pytest.raises(cy.UsageError, match=r"metrics take \(logits \[batch, pos, d_vocab\], batch, clean_logits"):
        cy.patch(model, batch, "heads", metric=lambda logits: logits.mean())
    with pytest.raises(cy.UsageError, match="did you mean 'logit_diff'"):
        cy.patch(model, batch, "heads", metric="logit_dif")


def test_attribute_and_discover(model):
    result = cy.attribute(model, "induction", method="eap", data="repeated:seq_len=8,batch=8,seed=5")
    batch = cy.task_batch(model, "induction", data="repeated:seq_len=8,batch=8,seed=5")
    with torch.inference_mode():
        assert result.clean == pytest.approx(float(_loss_at_reads(model(batch.tokens), batch)), rel=1e-5)
    assert result.metric == "loss" and result.edge_scores is not None
    assert len(result.edge_scores) == cy.ResidualGraph(model).number_of_edges()
    with pytest.raises(cy.UsageError, match="metric plugin's name"):
        cy.attribute(model, batch, metric=lambda logits, b, c=None: 0.0)
    circuit = cy.discover(model, "induction")
    heads = {n.name for n in circuit.nodes}
    assert {"L0H0", "L1H3"} <= heads and circuit.recovered >= circuit.target
    assert cy.Spec.from_yaml(circuit.spec_text).verify(model).passed


def test_graph_and_decompose(model):
    tokens = cy.make_batch(model, "repeated:seq_len=6,batch=2,seed=1").tokens
    d = cy.decompose(model, tokens)
    with torch.inference_mode():
        logits = model(tokens)
    assert torch.allclose(d.total(), logits, atol=1e-4)
    g = cy.ResidualGraph(model)
    assert g.number_of_nodes() == 2 + 8 + 1 and isinstance(model, cy.HookedTransformer)
    assert isinstance(model.cfg, cy.ModelConfig)


def test_model_errors_say_how_to_convert():
    class FakeHF:
        class config:  # noqa: N801
            model_type = "gpt2"

    with pytest.raises(cy.UsageError, match=r"circuitry.from_hf\(model\)"):
        cy.scan(FakeHF())
    with pytest.raises(cy.ModelLoadError, match="unknown model source 'nope'"):
        cy.load_model("nope:x")


# ------------------------------------------------------------------ Spec
def _spec_dict() -> dict:
    return yaml.safe_load(SPEC.read_text())


def test_spec_from_dict_errors_name_the_key_path():
    d = _spec_dict()
    d["checks"][2]["expect"] = "about 3"
    d["checks"][0]["detector"] = "previus_token"
    d["data"]["seq_len"] = "ten"
    with pytest.raises(cy.SpecError) as info:
        cy.Spec.from_dict(d)
    lines = str(info.value).splitlines()
    assert any(line.startswith("checks[2].expect: cannot read expectation 'about 3'") for line in lines)
    assert any(line.startswith("checks[0].detector: unknown detector 'previus_token' (did you mean "
                               "'previous_token'?)") for line in lines)
    assert any(line.startswith("data.seq_len: parameter 'seq_len' of dataset 'repeated' must be an integer")
               for line in lines)
    assert not any(re.match(r"\S+:\d+:\d+", line) for line in lines)  # no file:line:col for a mapping


def test_spec_from_dict_plain_values_only():
    d = _spec_dict()
    d["checks"][0]["nodes"] = ("L0H0", "L0H2")  # a tuple is a list
    d["data"]["seed"] = torch.tensor(1).item()
    spec = cy.Spec.from_dict(d)
    assert spec.checks[0].options["nodes"] == ["L0H0", "L0H2"]
    assert isinstance(spec, cy.Spec) and spec.name == "induction-attn-only-2l"
    d["checks"][1]["expect"] = object()
    with pytest.raises(cy.SpecError, match=r"^checks\[1\]\.expect: a value of type object"):
        cy.Spec.from_dict(d)
    with pytest.raises(cy.SpecError, match=r"^metadata: mapping keys must be strings, got int 3"):
        cy.Spec.from_dict({**_spec_dict(), "metadata": {"name": "x", 3: "y"}})
    with pytest.raises(cy.SpecError, match="a spec is a mapping"):
        cy.Spec.from_dict(["apiVersion"])  # type: ignore[arg-type]


def test_spec_from_yaml_errors_keep_file_line_col(tmp_path):
    text = SPEC.read_text().replace('expect: ">= 0.9"', 'expect: "about 3"', 1)
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "about 3" in t)
    with pytest.raises(cy.SpecError, match=rf"^{re.escape(str(bad))}:{line}:\d+: checks\[0\]\.expect: "):
        cy.Spec.from_yaml(bad)
    with pytest.raises(cy.SpecError, match=rf"^<string>:{line}:\d+: checks\[0\]\.expect"):
        cy.Spec.from_yaml(text)
    with pytest.raises(cy.SpecError, match="no such spec file: missing.yaml"):
        cy.Spec.from_yaml("missing.yaml")
    round_trip = cy.Spec.from_yaml(cy.Spec.from_yaml(SPEC).to_yaml())
    assert round_trip == cy.Spec.from_yaml(SPEC)


# ------------------------------------------------------------------ models in memory
class _FakeTL:
    """What from_transformer_lens reads of a TransformerLens HookedTransformer: cfg.to_dict(), state_dict()."""

    def __init__(self, cfg: dict, state: dict) -> None:
        self.cfg = type("Cfg", (), {"to_dict": lambda _self: dict(cfg)})()
        self._state = state
        self.tokenizer = None

    def state_dict(self) -> dict:
        return dict(self._state)


def _tl_attn_only_state(model) -> dict[str, torch.Tensor]:
    """An attention-only model's state dict as TransformerLens stores it: every bias (zeros where the model has
    none) and the attention buffers (mask, IGNORE)."""
    cfg = model.cfg
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["unembed.b_U"] = torch.zeros(cfg.d_vocab)
    for l in range(cfg.n_layers):
        p = f"blocks.{l}.attn."
        for m in "QKV":
            sd[p + f"b_{m}"] = torch.zeros(cfg.n_heads, cfg.d_head)
        sd[p + "b_O"] = torch.zeros(cfg.d_model)
        sd[p + "mask"] = torch.ones(cfg.n_ctx, cfg.n_ctx, dtype=torch.bool).tril()
        sd[p + "IGNORE"] = torch.tensor(-1e5)
    return sd


def test_from_transformer_lens_state_dict_in_tl_layout(model):
    from test_tl import _tl_config

    fake = _FakeTL(_tl_config(model.cfg, attn_only=True, d_mlp=None, normalization_type=None,
                              model_name="attn-only-2l"), _tl_attn_only_state(model))
    converted = cy.from_transformer_lens(fake)
    tokens = cy.make_batch(model, "repeated:seq_len=10,batch=4,seed=2").tokens
    with torch.inference_mode():
        assert torch.allclose(converted(tokens), model(tokens), atol=1e-5)
    with pytest.raises(cy.UsageError, match="takes a TransformerLens HookedTransformer"):
        cy.from_transformer_lens(object())


def test_from_hf_matches_transformers():
    pytest.importorskip("transformers")
    from hf_models import hf_configs
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(hf_configs()["gpt2"]).eval()
    converted = cy.from_hf(hf)
    tokens = torch.randint(0, 100, (2, 12))
    with torch.inference_mode():
        assert (converted(tokens) - hf(tokens).logits).abs().max() < 1e-4
    with pytest.raises(cy.UsageError, match="from_hf takes a transformers model"):
        cy.from_hf(object())


# ------------------------------------------------------------------ inline HTML
def test_report_html_has_every_check_and_value(model):
    report = cy.verify(SPEC, model)
    html = report._repr_html_()
    _self_contained(html)
    assert html.startswith('<div class="circuitry-nb"')
    for c in report.checks:
        row = re.search(rf'<tr class="claim[^"]*" data-check-id="{re.escape(c.id)}"[^>]*data-value="([^"]+)"', html)
        assert row is not None, c.id
        assert float(row.group(1)) == pytest.approx(c.value, rel=1e-12)
    assert "10 of 10 checks passed" in html
    for node in ("L0H0", "L0H2", "L1H0", "L1H1", "L1H3"):
        assert f'data-name="{node}"' in html  # the circuit graph
    # the stylesheet applies inside the fragment only
    style = re.search(r"<style>(.*?)</style>", html, flags=re.S).group(1)
    selectors = [s.strip() for rule in re.findall(r"([^{}]+)\{", style) for s in rule.split(",")]
    assert selectors and all(s.startswith(".circuitry-nb") for s in selectors)


def test_scan_html_lists_the_strongest_heads(model):
    result = cy.scan(model, "repeated:seq_len=10,batch=8,seed=3")
    html = result._repr_html_()
    _self_contained(html)
    scores = result.heads["previous_token"]
    best = int(torch.argmax(scores.reshape(-1)))
    row = re.search(r'data-table="heads:previous_token".*?<tbody><tr><td>(\w+)</td><td data-value="([^"]+)"', html,
                    flags=re.S)
    assert row.group(1) == f"L{best // 4}H{best % 4}" == "L0H0"
    assert float(row.group(2)) == pytest.approx(float(scores.reshape(-1)[best]))
    assert 'data-table="pairs:composition:K"' in html and "K-composition" in html


def test_graph_html_draws_a_circuit_and_ranks_composition(model):
    comp = {k: torch.rand(2, 4, 2, 4, generator=torch.Generator().manual_seed(i)) for i, k in enumerate("QKV")}
    g = cy.ResidualGraph(model, composition=comp)
    html = g._repr_html_()
    _self_contained(html)
    assert "too many to draw" in html  # 106 edges
    best = max(((u, v, k, d["composition"]) for u, v, k, d in g.edges(keys=True, data=True)
                if d.get("composition") is not None), key=lambda e: e[3])
    assert f"<td>{best[0]} -&gt; {best[1]} ({best[2]})</td><td data-value=\"{best[3]!r}\"" in html
    circuit = g.circuit({"L0H0": "previous_token", "L1H3": "induction"}, [("L0H0", "L1H3", "K")])
    drawn = circuit._repr_html_()
    _self_contained(drawn)
    assert 'data-from="L0H0" data-to="L1H3" data-kind="K"' in drawn
    assert f'data-score="{float(comp["K"][0, 0, 1, 3])!r}"' in drawn


def test_attention_html_holds_the_patterns(model, tmp_path):
    batch = cy.make_batch(model, "repeated:seq_len=6,batch=1,seed=4")  # BOS + 6 tokens, repeated
    view = cy.attention(model, batch, ["L0H0", "L1H3"])
    html = view._repr_html_()
    _self_contained(html)
    pat = _patterns(model, batch.tokens)[1][0, 3]  # L1H3 [q, k]
    table = re.search(r'<table class="hm[^>]*data-grid="pattern-L1H3".*?</table>', html, flags=re.S).group(0)
    cell = re.search(r'<td[^>]*data-q="10" data-k="5" data-value="([^"]+)"', table)
    assert float(cell.group(1)) == pytest.approx(float(pat[10, 5]), abs=1e-6)
    assert float(pat[10, 5]) > 0.5  # the induction head: from the second 5 to the token after the first
    two = cy.html(cy.scan(model, "repeated:seq_len=6,batch=2"))._repr_html_()
    ids = set(re.findall(r'\bid="([^"]+)"', html)) & set(re.findall(r'\bid="([^"]+)"', two))
    assert not ids  # fragments on one notebook page do not share element ids
    page = view.save(tmp_path / "attention.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and 'data-grid="pattern-L1H3"' in page


# ------------------------------------------------------------------ the documentation's tour
def test_python_api_tour_runs(monkeypatch, capsys):
    from doc_pages import blocks, run_python_blocks

    doc = REPO / "docs" / "python-api.md"
    monkeypatch.chdir(REPO)
    namespace = run_python_blocks(doc, "python_api_tour")
    out = capsys.readouterr().out
    assert "strongest previous-token head: L0H0" in out
    assert "prev: " in out and "ablate: " in out and "FAIL" not in out
    assert "checks[0].detector: unknown detector 'previus_token'" in out and "checks[0].expect:" in out
    assert "terms sum to the logits: True" in out and "Html with 3 claims" in out
    assert namespace["report"].passed
    shown = "\n".join(blocks(doc, "text"))
    for line in shown.splitlines():  # the printed errors the page shows are the real ones
        assert line.removesuffix("...").rstrip(" .") in out
    # a function with the plugins' signature and the plugin of the same number agree
    by_name = cy.patch(namespace["model"], namespace["task"], "heads", metric="correct_logit")
    assert torch.allclose(namespace["by_hand"].values, by_name.values, atol=1e-5)
