"""The shipped Hugging Face example circuitry/builtin/neox-induction (GPT-NeoX with LayerNorm and
MLPs): it loads with transformers, and its own attention patterns (output_attentions) show a
previous-token head and induction heads at the documented thresholds; the training script
reproduces such a model (slow)."""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import circuitry
from circuitry.data import repeated_tokens

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install 'circuitry[hf]')")

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = Path(circuitry.__file__).parent / "builtin" / "neox-induction"
SCRIPT = ROOT / "scripts" / "train_gpt2_example.py"
CARD = json.loads((MODEL_DIR / "card.json").read_text())
N_RANDOM = 64  # random token ids 0..63; BOS is 64

# the documented thresholds (card.json, docs/models-gpt2-example.md): measured values minus a margin
TH = CARD["thresholds"]
PREV_HEAD = CARD["heads"]["previous_token"]  # "L0H0"
INDUCTION_HEADS = CARD["heads"]["induction"]  # the four layer-1 heads


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _head(name: str) -> tuple[int, int]:
    layer, head = name[1:].split("H")
    return int(layer), int(head)


def load(path: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


def measure(model, seq_len: int, batch: int = 64) -> dict:
    """Scores from the model's own output_attentions on BOS + r + r (repeated_tokens, seed 1), each
    computed by explicit indexing [layer, head]:
    previous_token = mean over queries q >= 1 of A[q, q-1];
    induction = mean over second-copy queries q = L+1..2L of A[q, q-L+1];
    prefix_matching = attention mass on the positions right after earlier occurrences of the query's
    token, averaged over queries whose token occurred before (loop over queries)."""
    tokens = repeated_tokens(N_RANDOM + 1, N_RANDOM, batch=batch, seq_len=seq_len, n_repeats=2, seed=1).tokens
    with torch.no_grad():
        out = model(tokens, output_attentions=True)
    pat = torch.stack(out.attentions)  # [layer, batch, head, q, k]
    n, L = tokens.shape[1], seq_len
    q = torch.arange(1, n)
    prev = pat[..., q, q - 1].mean((1, 3))
    q2 = torch.arange(L + 1, n)
    ind = pat[..., q2, q2 - L + 1].mean((1, 3))
    total, count = torch.zeros(pat.shape[0], pat.shape[2]), 0
    for b in range(tokens.shape[0]):
        for i in range(n):
            keys = [k for k in range(1, i + 1) if tokens[b, k - 1] == tokens[b, i] and k - 1 < i]
            if keys:
                total += pat[:, b, :, i, keys].sum(-1)
                count += 1
    logp = out.logits.log_softmax(-1)[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]  # [batch, n-1]
    return {"previous_token": prev, "induction": ind, "prefix_matching": total / count,
            "loss_first_half": float(-logp[:, 1:L].mean()), "loss_repeat": float(-logp[:, L + 1:].mean())}


@pytest.fixture(scope="module")
def shipped():
    return load(MODEL_DIR)


@pytest.fixture(scope="module")
def shipped_scores(shipped):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {L: measure(shipped, L) for L in (10, 20)}
    finally:
        torch.set_num_threads(n)


def test_shipped_files_and_config(shipped):
    assert CARD["format"] == "hf"
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "card.json", "train.json"} <= \
        {p.name for p in MODEL_DIR.iterdir()}
    assert (MODEL_DIR / "model.safetensors").stat().st_size < 500_000
    cfg = shipped.config
    assert cfg.model_type == "gpt_neox" and cfg.use_parallel_residual and not cfg.tie_word_embeddings
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (2, 64, 4, 256)
    assert cfg.vocab_size == N_RANDOM + 1 and cfg.bos_token_id == N_RANDOM
    assert all(p.dtype == torch.float32 for p in shipped.parameters())
    layer = shipped.gpt_neox.layers[0]  # LayerNorm and an MLP, with trained (not default) weights
    assert isinstance(layer.input_layernorm, torch.nn.LayerNorm)
    assert not torch.allclose(layer.input_layernorm.weight, torch.ones(64))
    assert layer.mlp.dense_h_to_4h.weight.shape == (256, 64)


@pytest.mark.parametrize("seq_len", [10, 20])
def test_shipped_heads_at_thresholds(shipped_scores, seq_len):
    m = shipped_scores[seq_len]
    assert float(m["previous_token"][_head(PREV_HEAD)]) >= TH["previous_token"]
    for h in INDUCTION_HEADS:
        assert float(m["prefix_matching"][_head(h)]) >= TH["prefix_matching"], h
        assert float(m["induction"][_head(h)]) >= TH["induction"], h
    # the other heads are not previous-token or induction heads of this strength
    assert float(m["previous_token"][1].max()) < 0.2 and float(m["prefix_matching"][0].max()) < 0.1
    assert m["loss_repeat"] <= TH["loss_repeat_max"]
    assert m["loss_first_half"] >= math.log(N_RANDOM) - 0.1  # first occurrences cannot be predicted


@pytest.mark.parametrize("seq_len", [10, 20])
def test_card_numbers_are_the_models(shipped_scores, seq_len):
    """The per-head numbers in card.json (written from the training script's evaluation) equal the
    ones computed here by independent indexing."""
    m, doc = shipped_scores[seq_len], CARD["evaluation"][str(seq_len)]
    for name in ("previous_token", "induction", "prefix_matching"):
        assert torch.allclose(m[name], torch.tensor(doc[name]), atol=1e-3), name
    assert m["loss_repeat"] == pytest.approx(doc["loss_repeat"], abs=1e-3)
    assert m["loss_first_half"] == pytest.approx(doc["loss_first_half"], abs=1e-3)


def test_tokenizer_text_prompts(shipped):
    tok = transformers.AutoTokenizer.from_pretrained(MODEL_DIR)
    ids = tok("t3 t7 t1 t5 t3 t7")["input_ids"]
    assert ids == [N_RANDOM, 3, 7, 1, 5, 3, 7]  # <bos> is prepended
    assert tok.decode(ids[1:]) == "t3 t7 t1 t5 t3 t7"
    with torch.no_grad():
        logits = shipped(torch.tensor([ids])).logits
    assert tok.decode([int(logits[0, -1].argmax())]) == "t1"  # t7 was followed by t1 earlier


@pytest.mark.slow
def test_training_script_reproduces_the_circuit(tmp_path):
    """The documented command (with another --out) trains a model with the same circuit: one
    layer-0 previous-token head and layer-1 induction heads at the documented thresholds."""
    args = shlex.split(CARD["command"])[2:]  # drop "python scripts/train_gpt2_example.py"
    args[args.index("--out") + 1] = str(tmp_path / "model")
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = load(tmp_path / "model")
    for L in (10, 20):
        m = measure(model, L)
        assert float(m["previous_token"][0].max()) >= TH["previous_token"]
        assert int((m["prefix_matching"][1] >= TH["prefix_matching"]).sum()) >= 2
        assert m["loss_repeat"] <= TH["loss_repeat_max"]
