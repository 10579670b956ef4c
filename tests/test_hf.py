"""The hf: model source: every architecture's conversion against transformers itself.

Tiny random Hugging Face models (tests/hf_models.py) are saved with
save_pretrained and loaded through `hf:PATH`; their logits must equal the
Hugging Face model's (fp32, eager attention) within 1e-4, and the detector
scores must equal scores computed here from the model's own output_attentions.
Also: the `text` dataset through a saved tokenizer, the CLI, the install hint
without transformers, and the errors for unsupported or incomplete models.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

from hf_models import D_VOCAB, build, hf_configs, reference_scores, word_ids  # noqa: E402

from circuitry.cli import main  # noqa: E402
from circuitry.datasets import make_batch  # noqa: E402
from circuitry.errors import ModelLoadError, UsageError  # noqa: E402
from circuitry.model import HookedTransformer  # noqa: E402
from circuitry.scan import scan  # noqa: E402
from circuitry.sources import load_model  # noqa: E402

ARCHS = list(hf_configs())
# what each variant must turn into: the conversion really exercised the feature it is named after
EXPECTED = {
    "gpt2": dict(normalization="LN", positional="learned", tied_embeddings=True, act_fn="gelu_new"),
    "gpt2-untied-layer-scaled": dict(tied_embeddings=False, act_fn="relu", d_mlp=80),
    "neox-parallel": dict(positional="rotary", rotary_dim=4, parallel_attn_mlp=True, attn_bias=True),
    "neox-sequential": dict(positional="rotary", rotary_dim=8, parallel_attn_mlp=False, act_fn="gelu_new"),
    "llama-gqa": dict(normalization="RMS", gated_mlp=True, n_kv_heads=2, rotary_dim=16, attn_bias=False),
    "mistral-window": dict(n_kv_heads=1, attn_window=6, gated_mlp=True),
    "qwen2-tied": dict(attn_bias=True, attn_out_bias=False, n_kv_heads=2, tied_embeddings=True),
}


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """name -> (directory, Hugging Face model) for every architecture variant."""
    root = tmp_path_factory.mktemp("hf")
    return {name: (root / name, build(name, root / name, seed=i, tokenizer=name == "gpt2"))
            for i, name in enumerate(ARCHS)}


def hf_patterns(hf_model, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = hf_model(tokens, output_attentions=True)
    return out.logits, torch.stack(out.attentions)  # [batch, pos, vocab], [layer, batch, head, q, k]


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_equal_transformers(hf_models, arch):
    directory, hf_model = hf_models[arch]
    model = load_model(f"hf:{directory}")
    for field, value in EXPECTED[arch].items():
        assert getattr(model.cfg, field) == value, field
    tokens = torch.randint(0, D_VOCAB, (3, 24), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = hf_model(tokens).logits
        got = model(tokens)
    assert ref.std() > 0.5  # logits far from zero: a wrong conversion could not hide
    err = float((got - ref).abs().max())
    assert err < 1e-4, f"{arch}: max |logit error| {err}"
    # the conversion is sensitive: a model converted with rotary/head layout off by one differs a lot
    if model.cfg.positional == "rotary":
        wrong = HookedTransformer(model.replace_config(rotary_dim=model.cfg.n_rotary - 2), seed=None)
        wrong.load_state_dict(model.state_dict())
        with torch.no_grad():
            assert float((wrong(tokens) - ref).abs().max()) > 1e-2


@pytest.mark.parametrize("arch", ["gpt2", "neox-parallel", "llama-gqa", "mistral-window", "qwen2-tied"])
def test_detector_scores_equal_scores_from_hf_attentions(hf_models, arch):
    directory, hf_model = hf_models[arch]
    model = load_model(f"hf:{directory}")
    batch = make_batch(model, "repeated:batch=4,seq_len=8,seed=1")
    result = scan(model, batch, ["previous_token", "induction"])
    _, att = hf_patterns(hf_model, batch.tokens)
    prev, ind = reference_scores(att, batch.tokens)
    assert torch.allclose(result.heads["previous_token"].double(), prev, atol=1e-5)
    assert torch.allclose(result.heads["induction"].double(), ind, atol=1e-5)
    assert float(prev.max() - prev.min()) > 0.05  # heads differ: the comparison is per head, not trivial


def test_scan_cli_json(hf_models, capsys):
    directory, hf_model = hf_models["llama-gqa"]
    assert main(["scan", f"hf:{directory}", "--json", "--data", "repeated:batch=4,seq_len=8,seed=2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model"] == f"hf:{directory}"
    assert [h["head"] for h in doc["heads"]] == [f"L{l}H{h}" for l in range(2) for h in range(4)]
    assert set(doc["composition"]) == {"Q", "K", "V"}
    model = load_model(f"hf:{directory}")
    batch = make_batch(model, "repeated:batch=4,seq_len=8,seed=2")
    prev, ind = reference_scores(hf_patterns(hf_model, batch.tokens)[1], batch.tokens)
    for row in doc["heads"]:
        l, h = (int(x) for x in row["head"][1:].split("H"))
        assert abs(row["previous_token"] - float(prev[l, h])) < 1e-5
        assert abs(row["induction"] - float(ind[l, h])) < 1e-5


def test_text_dataset_tokenizes_with_the_models_tokenizer(hf_models, tmp_path):
    directory, hf_model = hf_models["gpt2"]
    model = load_model(f"hf:{directory}")
    assert model.tokenizer is not None and model.cfg.bos_token_id == 0
    batch = make_batch(model, {"name": "text", "text": ["w1 w2 w3 w1 w2 w3", "w4 w5 w6 w7 w4 w5"]})
    expected = [[0] + word_ids("w1 w2 w3 w1 w2 w3"), [0] + word_ids("w4 w5 w6 w7 w4 w5")]
    assert batch.tokens.tolist() == expected
    # row 0: bigrams (w1 w2), (w2 w3) repeat at positions 4, 5; row 1: (w4 w5) at position 5
    assert batch.predictable.tolist() == [[False] * 4 + [True, True, False], [False] * 5 + [True, False]]
    # fresh: the next token has not occurred yet
    assert batch.fresh.tolist() == [[True, True, True, False, False, False, False],
                                    [True, True, True, True, False, False, False]]
    # one prompt repeated, from the command line, and scanned: the scores follow the HF attentions
    ref = make_batch(model, "text:text=w9 w8 w7 w6 w5,repeat=2")
    assert ref.tokens.tolist() == [[0] + word_ids("w9 w8 w7 w6 w5") * 2] and ref.repeat_len == 5
    assert ref.predictable[0].tolist() == [False] * 6 + [True] * 4 + [False]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("w1 w2 w3\n\nw3 w2 w1\n")
    assert make_batch(model, f"text:path={prompts}").tokens.tolist() == [[0, 3, 4, 5], [0, 5, 4, 3]]
    assert make_batch(model, "text:text=w1 w2|w3 w4,separator=|,prepend_bos=false").tokens.tolist() == [[3, 4],
                                                                                                        [5, 6]]


def test_text_dataset_errors(hf_models, shipped):
    directory, _ = hf_models["gpt2"]
    model = load_model(f"hf:{directory}")
    with pytest.raises(UsageError, match=r"different lengths \[3, 4\].*truncate=true"):
        make_batch(model, {"name": "text", "text": ["w1 w2", "w1 w2 w3"]})
    cut = make_batch(model, {"name": "text", "text": ["w1 w2", "w1 w2 w3"], "truncate": True})
    assert cut.tokens.tolist() == [[0, 3, 4], [0, 3, 4]]
    with pytest.raises(UsageError, match="needs prompts"):
        make_batch(model, "text")
    no_tok = load_model(f"hf:{hf_models['llama-gqa'][0]}")
    assert no_tok.tokenizer is None
    with pytest.raises(UsageError, match="needs a model with a tokenizer.*has no tokenizer files"):
        make_batch(no_tok, "text:text=hello")
    with pytest.raises(UsageError, match="needs a model with a tokenizer"):
        make_batch(shipped, "text:text=hello")


def test_scan_with_text_data_from_the_cli(hf_models, capsys):
    directory, hf_model = hf_models["gpt2"]
    text = "w10 w11 w12 w13 w14 w15"
    assert main(["scan", f"hf:{directory}", "--json", "--detectors", "induction",
                 "--data", f"text:text={text},repeat=2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert "text (1 prompt x 13 tokens, repeated 2x)" == doc["data"]
    tokens = torch.tensor([[0] + word_ids(text) * 2])
    _, ind = reference_scores(hf_patterns(hf_model, tokens)[1], tokens)
    assert [round(r["induction"], 5) for r in doc["heads"]] == [round(float(v), 5) for v in ind.flatten()]


def test_unsupported_architecture(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(ModelLoadError, match="unsupported Hugging Face architecture 'bert'; supported: "
                                             "gemma, gemma2, gemma3_text, gpt2, gpt_neox, gptj, llama, mistral, "
                                             "olmo2, phi3, qwen2, qwen3"):
        load_model(f"hf:{tmp_path}")
    assert main(["scan", f"hf:{tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "unsupported Hugging Face architecture 'bert'" in err and "Traceback" not in err


def test_incomplete_or_unsupported_checkpoints(hf_models, tmp_path):
    from transformers import GPTNeoXConfig, GPTNeoXModel

    base = tmp_path / "base"
    GPTNeoXModel(GPTNeoXConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                               vocab_size=50, max_position_embeddings=32)).save_pretrained(base)
    with pytest.raises(ModelLoadError, match="missing weight.*language-model head"):
        load_model(f"hf:{base}")
    scaled = tmp_path / "scaled"
    shutil.copytree(hf_models["llama-gqa"][0], scaled)
    cfg = json.loads((scaled / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 2.0}
    (scaled / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="rotary scaling 'yarn' is not supported"):
        load_model(f"hf:{scaled}")
    with pytest.raises(ModelLoadError, match="no such directory"):
        load_model(f"hf:{tmp_path / 'nope'}")
    (tmp_path / "file.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="expected a directory"):
        load_model(f"hf:{tmp_path / 'file.json'}")


def test_hub_name_offline_fails_fast(monkeypatch):
    """Offline, a hub name that is not cached fails at once: no connection is even attempted."""
    import socket

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network use in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"hf:circuitry-tests/no-such-model: not in the local Hugging Face "
                                             r"cache and HF_HUB_OFFLINE is set"):
        load_model("hf:circuitry-tests/no-such-model")
    assert attempts == []


BLOCK_TRANSFORMERS = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "transformers" or name.startswith("transformers."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
from circuitry.cli import main
code = main(sys.argv[1:])
assert "transformers" not in sys.modules
sys.exit(code)
"""


def _run_without_transformers(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CIRCUITRY_STRICT_PLUGINS": "1"}  # a plugin failing to import would be fatal
    return subprocess.run([sys.executable, "-c", BLOCK_TRANSFORMERS, *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_without_transformers_hf_gives_the_install_hint(hf_models):
    directory, _ = hf_models["gpt2"]
    run = _run_without_transformers("scan", f"hf:{directory}")
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'circuitry[hf]'" in lines[0], run.stderr
    run = _run_without_transformers("scan", "builtin:attn-only-2l", "--detectors", "previous_token", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["heads"][0]["head"] == "L0H0"


def test_cached_hub_name_loads_without_network(hf_models, tmp_path, monkeypatch):
    """A model in the Hugging Face cache layout (models--ORG--NAME/snapshots/REV, refs/main)
    loads by its hub name, offline."""
    directory, hf_model = hf_models["neox-parallel"]
    repo = tmp_path / "hub" / "models--circuitry-tests--tiny-neox"
    rev = "0" * 40
    shutil.copytree(directory, repo / "snapshots" / rev)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model("hf:circuitry-tests/tiny-neox")
    tokens = torch.randint(0, D_VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert float((model(tokens) - hf_model(tokens).logits).abs().max()) < 1e-4
    assert model.source == "hf:circuitry-tests/tiny-neox"


def test_fold_layer_norm_keeps_converted_logits(hf_models):
    directory, hf_model = hf_models["neox-sequential"]
    model = load_model(f"hf:{directory}").fold_layer_norm()
    assert model.cfg.normalization == "LNPre"
    tokens = torch.randint(0, D_VOCAB, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert float((model(tokens) - hf_model(tokens).logits).abs().max()) < 1e-4


def test_plugins_register_the_sources_and_the_text_dataset():
    from circuitry.plugins import PluginManager

    pm = PluginManager()
    assert pm.owner("circuitry_model_sources", "hf") == "hf" and pm.owner("circuitry_model_sources", "tl") == "tl"
    assert pm.owner("circuitry_datasets", "text") == "hf"
    assert ("gemma, gemma2, gemma3_text, gpt2, gpt_neox, gptj, llama, mistral, olmo2, phi3, qwen2, qwen3"
            in pm.model_sources()["hf"].description)


def test_conversion_registry_rejects_a_second_conversion():
    from circuitry_plugins.hf import register_conversion
    from circuitry_plugins.hf.conversions import CONVERSIONS

    with pytest.raises(ModelLoadError, match="already registered"):
        register_conversion("gpt2", lambda config, params: None)
    assert CONVERSIONS["gpt2"].__name__ == "convert_gpt2"


SPEC = """apiVersion: circuitry/v1
kind: CircuitSpec
metadata:
  name: text-data
model: hf:{model}
data:
  name: text
  text: "w1 w2 w3 w4 w1 w2 w3 w4 | w5 w6 w7 w8 w5 w6 w7 w8 | w9 w10 w11 w12 w9 w10 w11 w12"
  separator: "|"
circuit:
  nodes:
    L0H1: previous_token
checks:
  - id: prev
    kind: detector
    detector: previous_token
    expect: ">= 0.0"
  - id: resample
    kind: intervention
    intervention: resample
    target: L0H1
    metric: loss
    expect: ">= -100"
"""


def test_spec_with_text_data_verifies(hf_models, tmp_path, capsys):
    """Text data in a spec; the default reference data (seed 1) is the same prompts shuffled."""
    directory, hf_model = hf_models["gpt2"]
    spec = tmp_path / "text.yaml"
    spec.write_text(SPEC.format(model=directory))
    assert main(["verify", str(spec), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["data"] == "text (3 prompts x 9 tokens)"
    tokens = torch.tensor([[0] + word_ids(f"w{a} w{a + 1} w{a + 2} w{a + 3}") * 2 for a in (1, 5, 9)])
    prev, _ = reference_scores(hf_patterns(hf_model, tokens)[1], tokens)
    assert abs(doc["checks"][0]["value"] - float(prev[0, 1])) < 1e-5
    model = load_model(f"hf:{directory}")
    shuffled = make_batch(model, {"name": "text", "text": SPEC.split('"')[1], "separator": "|", "seed": 1})
    assert sorted(shuffled.tokens.tolist()) == sorted(tokens.tolist())
    assert shuffled.tokens.tolist() != tokens.tolist()


def test_hub_download_flow(hf_models, tmp_path, monkeypatch):
    """Not cached and the hub reachable: one download of the safetensors/config/tokenizer files,
    then the same conversion; hub errors become one-line messages. (The hub is simulated.)"""
    import huggingface_hub

    directory, hf_model = hf_models["qwen2-tied"]
    calls = []

    class RepositoryNotFoundError(Exception):
        pass

    def fake_snapshot(repo_id, revision=None, local_files_only=False, allow_patterns=None, **kwargs):
        calls.append((repo_id, revision, local_files_only))
        if local_files_only:
            raise FileNotFoundError("not in the cache")
        if repo_id == "org/missing":
            raise RepositoryNotFoundError("404 Client Error")
        assert "*.safetensors" in allow_patterns and "*.bin" not in " ".join(allow_patterns)
        shutil.copytree(directory, tmp_path / repo_id, dirs_exist_ok=True)
        return str(tmp_path / repo_id)

    class Connection:
        def close(self):
            pass

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: Connection())
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    model = load_model("hf:org/tiny-qwen@v1")
    assert calls == [("org/tiny-qwen", "v1", True), ("org/tiny-qwen", "v1", False)]
    tokens = torch.randint(0, D_VOCAB, (2, 10), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert float((model(tokens) - hf_model(tokens).logits).abs().max()) < 1e-4
    with pytest.raises(ModelLoadError, match=r"^hf:org/missing: no such model or revision on the hub"):
        load_model("hf:org/missing")


def test_spec_with_a_list_of_prompts_and_no_dataset_name(hf_models, tmp_path, capsys):
    """`data: {text: [...]}`: a YAML list of prompts; the dataset name `text` is implied."""
    directory, hf_model = hf_models["gpt2"]
    listed = SPEC.replace('''  name: text
  text: "w1 w2 w3 w4 w1 w2 w3 w4 | w5 w6 w7 w8 w5 w6 w7 w8 | w9 w10 w11 w12 w9 w10 w11 w12"
  separator: "|"''', '''  text:
    - w1 w2 w3 w4 w1 w2 w3 w4
    - w5 w6 w7 w8 w5 w6 w7 w8''')
    assert listed != SPEC
    spec = tmp_path / "list.yaml"
    spec.write_text(listed.format(model=directory))
    assert main(["verify", str(spec), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["data"] == "text (2 prompts x 9 tokens)"
    tokens = torch.tensor([[0] + word_ids(f"w{a} w{a + 1} w{a + 2} w{a + 3}") * 2 for a in (1, 5)])
    prev, _ = reference_scores(hf_patterns(hf_model, tokens)[1], tokens)
    assert abs(doc["checks"][0]["value"] - float(prev[0, 1])) < 1e-5
