"""Local models need no network: with every socket connection refused, an hf: directory
loads, its tokenizer works and scan runs; a hub name that is not cached fails fast."""

from __future__ import annotations

import json
import socket

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is not installed (pip install 'circuitry[hf]')")

from hf_models import D_VOCAB, build, word_ids  # noqa: E402

from circuitry.cli import main  # noqa: E402
from circuitry.datasets import make_batch  # noqa: E402
from circuitry.errors import ModelLoadError  # noqa: E402
from circuitry.scan import scan  # noqa: E402
from circuitry.sources import load_model  # noqa: E402


@pytest.fixture
def no_network(monkeypatch):
    """Refuse every connection; the list records each attempt."""
    attempts: list[tuple] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access is blocked in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    return attempts


@pytest.fixture(scope="module")
def local_llama(tmp_path_factory):
    directory = tmp_path_factory.mktemp("offline") / "llama"
    return directory, build("llama-gqa", directory, seed=11, tokenizer=True)


def test_local_model_loads_and_scans_with_sockets_blocked(local_llama, no_network, capsys):
    directory, hf_model = local_llama
    model = load_model(f"hf:{directory}")
    assert model.tokenizer is not None
    tokens = torch.randint(0, D_VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float((model(tokens) - hf_model(tokens).logits).abs().max()) < 1e-4
    batch = make_batch(model, {"name": "text", "text": "w1 w2 w3 w4 w5", "repeat": 2})
    assert batch.tokens.tolist() == [[0] + word_ids("w1 w2 w3 w4 w5") * 2]
    result = scan(model, batch, ["previous_token", "induction"])
    assert result.heads["induction"].shape == (2, 4)
    assert main(["scan", f"hf:{directory}", "--json", "--data", "text:text=w7 w8 w9 w10,repeat=3"]) == 0
    assert len(json.loads(capsys.readouterr().out)["heads"]) == 8
    assert no_network == []  # not even an attempt


def test_uncached_hub_name_fails_fast_without_network(no_network, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelLoadError, match=r"^hf:circuitry-tests/not-cached: not in the local Hugging Face "
                                             r"cache and huggingface.co cannot be reached"):
        load_model("hf:circuitry-tests/not-cached")
    assert len(no_network) == 1  # one probe, no retry loop (what made it fail fast)
