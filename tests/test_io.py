"""Saving and loading models; bad files and bad tokens give one-line UsageErrors (exit 2 in the CLI)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import random_model

from circuitry.cli import main
from circuitry.errors import InputError, ModelLoadError, UsageError
from circuitry.model import load_model_file, save_model
from circuitry.model.io import read_metadata

MODELS = {
    "LN-mlp-biases": dict(normalization="LN", d_mlp=48, attn_bias=True, mlp_bias=True, unembed_bias=True),
    "RMS-rotary-gated-gqa-tied": dict(normalization="RMS", positional="rotary", rotary_dim=4, d_mlp=48,
                                      gated_mlp=True, act_fn="silu", n_kv_heads=2, tied_embeddings=True),
}


def _tokens(model, n: int = 12) -> torch.Tensor:
    return torch.randint(0, model.cfg.d_vocab, (3, n), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("form", ["directory", "file"])
@pytest.mark.parametrize("overrides", list(MODELS.values()), ids=list(MODELS))
def test_round_trip_gives_identical_logits(form, overrides, tmp_path):
    model = random_model(seed=2, **overrides)
    path = tmp_path / ("saved" if form == "directory" else "saved.safetensors")
    save_model(model, path, metadata={"note": "hello"})
    if form == "directory":
        assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
        assert json.loads((path / "config.json").read_text()) == model.cfg.to_dict()
    else:
        assert [p.name for p in tmp_path.iterdir()] == ["saved.safetensors"]  # config in the metadata only
    loaded = load_model_file(path)
    assert loaded.cfg == model.cfg
    assert loaded.source == str(path)
    assert read_metadata(path)["note"] == "hello"
    tokens = _tokens(model)
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))


def test_single_file_uses_its_own_config_over_a_config_json_beside_it(tmp_path):
    model = random_model(seed=2, **MODELS["LN-mlp-biases"])
    save_model(model, tmp_path / "a.safetensors")
    save_model(random_model(seed=1), tmp_path / "other")  # a different model's config.json ...
    (tmp_path / "other" / "config.json").replace(tmp_path / "config.json")  # ... beside a.safetensors
    loaded = load_model_file(tmp_path / "a.safetensors")
    assert loaded.cfg == model.cfg


def test_round_trip_keeps_weights_that_differ_from_init(tmp_path, shipped):
    save_model(shipped, tmp_path / "m.safetensors")
    loaded = load_model_file(tmp_path / "m.safetensors")
    a, b = shipped.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -------------------------------------------------------------------- bad files
def _dir_with_config(tmp_path, edit) -> str:
    model = random_model(seed=1)
    path = tmp_path / "m"
    save_model(model, path)
    cfg = json.loads((path / "config.json").read_text())
    edit(cfg)
    (path / "config.json").write_text(json.dumps(cfg))
    return str(path)


def _pt_file(tmp_path, suffix: str) -> str:
    path = tmp_path / f"model{suffix}"
    torch.save(random_model(seed=1).state_dict(), path)
    return str(path)


def _garbage(tmp_path) -> str:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"this is not a safetensors file at all, just some bytes" * 3)
    return str(path)


def _empty_dir(tmp_path) -> str:
    (tmp_path / "empty").mkdir()
    return str(tmp_path / "empty")


def _bad_json(tmp_path) -> str:
    path = tmp_path / "m"
    save_model(random_model(seed=1), path)
    (path / "config.json").write_text('{"n_layers": 2,,}')
    return str(path)


def _wrong_shapes(tmp_path) -> str:
    return _dir_with_config(tmp_path, lambda c: c.update(d_vocab=51))


def _rename(cfg):
    cfg["n_head"] = cfg.pop("n_heads")


BAD_FILES = {
    "missing": (lambda t: str(t / "nowhere" / "model.safetensors"), ["no such model file", "nowhere"]),
    "pickle .pt": (lambda t: _pt_file(t, ".pt"), ["model.pt", "only safetensors"]),
    "pickle .bin": (lambda t: _pt_file(t, ".bin"), ["model.bin", "only safetensors"]),
    "garbage .safetensors": (_garbage, ["model.safetensors", "not a readable safetensors file"]),
    "directory without weights": (_empty_dir, ["empty", "has no model.safetensors"]),
    "unknown config key": (lambda t: _dir_with_config(t, _rename),
                           ["config.json", "unknown config key", "'n_head'", "did you mean 'n_heads'"]),
    "config not JSON": (_bad_json, ["config.json", "not valid JSON", "line 1"]),
    "config/weights mismatch": (_wrong_shapes, ["embed.W_E", "shape (50, 32)", "(51, 32)"]),
}


@pytest.mark.parametrize("make, words", list(BAD_FILES.values()), ids=list(BAD_FILES))
def test_bad_model_files(make, words, tmp_path, capsys):
    path = make(tmp_path)
    with pytest.raises(ModelLoadError) as info:
        load_model_file(path)
    msg = str(info.value)
    assert isinstance(info.value, UsageError)
    for w in words:
        assert w in msg, (w, msg)
    assert "\n" not in msg
    # the CLI: exit 2, one line on stderr, no traceback, nothing on stdout
    rc = main(["info", path])
    cap = capsys.readouterr()
    assert rc == 2
    assert cap.out == ""
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in cap.err
    assert words[-1] in lines[0]


def test_cli_process_exit_code_for_garbage_file(tmp_path):
    """The installed entry point, in its own process: exit 2, one line, no traceback."""
    path = _garbage(tmp_path)
    exe = [sys.executable, "-c", "import sys; from circuitry.cli import entry; sys.argv[0] = 'circuitry'; entry()"]
    proc = subprocess.run([*exe, "info", path], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "not a readable safetensors file" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------- bad tokens
@pytest.mark.parametrize("tokens, words", [
    (torch.tensor([[1, 2, 50]]), ["token id 50", "outside the vocabulary (0..49)"]),
    (torch.tensor([[1, -1, 3]]), ["token id -1", "outside the vocabulary"]),
    (torch.zeros(2, 33, dtype=torch.long), ["33 tokens", "longer than the context (32)"]),
    (torch.tensor([[0.5, 1.0]]), ["integer ids", "float32"]),
    (torch.zeros(2, 0, dtype=torch.long), ["[batch, pos]", "(2, 0)"]),
])
def test_bad_tokens(tokens, words):
    model = random_model(seed=1)
    for run in (model, model.run_with_cache, model.loss):
        with pytest.raises(InputError) as info:
            run(tokens)
        assert isinstance(info.value, UsageError)
        for w in words:
            assert w in str(info.value), (w, str(info.value))


def test_tokens_at_the_limits_are_accepted():
    model = random_model(seed=1)
    tokens = torch.full((1, 32), 49)  # the last vocabulary id, the full context
    assert model(tokens).shape == (1, 32, 50)
    assert model([3, 4, 5]).shape == (1, 3, 50)  # lists and 1-d input become [1, pos]
