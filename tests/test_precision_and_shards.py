"""Models in bfloat16 / float16 (`dtype=`, `--dtype`, a spec's `model: {ref, dtype}`), and Hugging Face
checkpoints read tensor by tensor from their safetensors shards without building the transformers model."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from conftest import REPO, needs

from circuitry.cli import main
from circuitry.errors import UsageError
from circuitry.model import HookedTransformer, ModelConfig
from circuitry.model.io import build_model
from circuitry.sources import check_dtype, load_model
from circuitry.spec import SpecError, load_spec
from circuitry.verify import verify

CFG = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_vocab=50, n_ctx=16, d_mlp=64,
                  normalization="RMS", positional="rotary", n_kv_heads=2, gated_mlp=True, act_fn="silu")


def test_a_model_is_allocated_in_its_dtype_with_the_same_draws():
    full = HookedTransformer(CFG, seed=3)
    half = HookedTransformer(CFG, seed=3, dtype=torch.bfloat16)
    for (name, a), (_, b) in zip(full.named_parameters(), half.named_parameters()):
        assert b.dtype == torch.bfloat16 and b.requires_grad, name
        assert torch.equal(a.to(torch.bfloat16), b), name
    assert half.dtype == torch.bfloat16
    tokens = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = full(tokens), half(tokens)
    assert got.dtype == torch.bfloat16
    # bfloat16 keeps 8 bits of mantissa: logits of this size agree to a few hundredths
    assert float((got.float() - want).abs().max()) < 0.05 * float(want.abs().max())
    assert float(torch.nn.functional.cosine_similarity(got.float().flatten(), want.flatten(), dim=0)) > 0.999


def test_norm_and_softmax_statistics_are_float32_in_half_models():
    model = HookedTransformer(CFG, seed=0, dtype=torch.bfloat16)
    _, cache = model.run_with_cache(torch.arange(10)[None])
    assert cache["blocks.0.ln1.hook_scale"].dtype == torch.float32
    pattern = cache["blocks.1.attn.hook_pattern"]
    assert pattern.dtype == torch.bfloat16
    assert torch.allclose(pattern.float().sum(-1), torch.ones(1, 4, 10), atol=1e-2)


def test_build_model_takes_the_tensors_without_a_copy():
    source = HookedTransformer(CFG, seed=1)
    state = {k: v.detach().clone() for k, v in source.state_dict().items()}
    pointers = {k: v.data_ptr() for k, v in state.items()}
    model = build_model(CFG, state, "test")
    assert state == {}  # handed over
    assert all(p.data_ptr() == pointers[k] for k, p in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_dtype_names():
    assert check_dtype("bf16") == torch.bfloat16 and check_dtype("float16") == torch.float16
    assert check_dtype(None) is None and check_dtype(torch.float32) == torch.float32
    with pytest.raises(UsageError, match="did you mean 'bfloat16'.*valid choices: bfloat16, float16, float32"):
        check_dtype("bfloat15")
    with pytest.raises(UsageError, match="unknown dtype"):
        check_dtype(torch.int64)


def test_shipped_spec_verifies_in_bfloat16_with_float32_scores():
    spec = load_spec(REPO / "specs/induction.yaml")
    full = verify(spec)
    half = verify(spec, dtype="bfloat16")
    assert half.passed and full.passed
    for a, b in zip(full.checks, half.checks):
        assert b.value == pytest.approx(a.value, abs=0.05, rel=0.05), a.id
    # detector scores are sums taken in float32: not rounded to bfloat16's 8-bit mantissa
    prev = next(c for c in half.checks if c.id == "previous-token-heads").value
    assert float(torch.tensor(prev).to(torch.bfloat16)) != prev


def test_spec_model_section_with_a_dtype(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    body = textwrap.dedent("""\
        apiVersion: circuitry/v1
        kind: CircuitSpec
        metadata: {name: dt}
        model: {ref: builtin:attn-only-2l, dtype: DTYPE}
        circuit:
          nodes: {L0H0: previous_token}
        checks:
          - {id: prev, kind: detector, detector: previous_token, expect: ">= 0.9"}
        """)
    spec.write_text(body.replace("DTYPE", "float16"))
    loaded = load_spec(spec)
    assert loaded.dtype == "float16" and loaded.model == "builtin:attn-only-2l"
    report = verify(loaded)
    assert report.passed and report.model == "builtin:attn-only-2l"
    spec.write_text(body.replace("DTYPE", "fp8"))
    with pytest.raises(SpecError, match=r"s.yaml:4:\d+: model.dtype: unknown value 'fp8'.*float32, bfloat16"):
        load_spec(spec)


def test_cli_dtype_and_memory_budget(capsys):
    assert main(["info", "builtin:attn-only-2l", "--dtype", "bfloat16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_params"] == 45184
    assert main(["scan", "builtin:attn-only-2l", "--dtype", "half32"]) == 2
    err = capsys.readouterr().err
    assert "unknown dtype 'half32'" in err and "bfloat16, float16, float32" in err
    assert main(["info", "builtin:attn-only-2l", "--memory-budget", "lots"]) == 2
    assert "--memory-budget 'lots'" in capsys.readouterr().err
    assert main(["info", "builtin:attn-only-2l", "--memory-budget", "1KB"]) == 2
    assert "over the memory budget of 1000 B (raise it with --memory-budget" in capsys.readouterr().err


# ------------------------------------------------------------------ shards
@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A tiny Llama saved in several safetensors shards (float32), and the transformers model."""
    needs("transformers")
    from hf_models import hf_configs, randomize_
    from transformers import AutoModelForCausalLM

    directory = tmp_path_factory.mktemp("sharded")
    hf = AutoModelForCausalLM.from_config(hf_configs()["llama-gqa"], attn_implementation="eager").float().eval()
    randomize_(hf, 0)
    hf.save_pretrained(directory, max_shard_size="60KB")
    return directory, hf


def test_sharded_checkpoint_loads_without_the_transformers_model(sharded, monkeypatch):
    directory, hf = sharded
    assert len(list(directory.glob("*.safetensors"))) >= 3
    assert (directory / "model.safetensors.index.json").exists()
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("the transformers model was built")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.LlamaForCausalLM, "__init__", refuse)
    model = load_model(f"hf:{directory}")
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = hf(tokens).logits
    torch.testing.assert_close(model(tokens), want, atol=1e-4, rtol=0)


def test_sharded_checkpoint_in_bfloat16_matches_transformers_in_bfloat16(sharded):
    directory, hf = sharded
    model = load_model(f"hf:{directory}", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 20), generator=torch.Generator().manual_seed(2))
    import copy

    hf16 = copy.deepcopy(hf).to(torch.bfloat16)
    with torch.no_grad():
        want, want32 = hf16(tokens).logits.float(), hf(tokens).logits
    with torch.no_grad():
        got = model(tokens).float()
    scale = float(want32.abs().max())
    # stated tolerance: 5% of the largest logit between the two bfloat16 runs (random weights scaled up so
    # that patterns are sharp: transformers' own bfloat16 logits are that far from its float32 ones) ...
    assert float((got - want).abs().max()) <= 0.05 * scale
    # ... and circuitry's bfloat16 run is no further from float32 than transformers' own bfloat16 run
    assert float((got - want32).abs().max()) <= 1.5 * float((want - want32).abs().max())


def test_tensors_are_read_without_mapping_the_files_and_equal_safetensors_own(sharded, monkeypatch):
    directory, _ = sharded
    import safetensors
    from safetensors.torch import load_file

    from circuitry_plugins.hf import shards

    tensors = shards.CheckpointTensors(directory, "llama", torch.bfloat16)
    names = list(tensors)
    assert "model.layers.1.self_attn.q_proj.weight" in names and "lm_head.weight" in names

    def refuse(*args, **kwargs):
        raise AssertionError("a file was mapped")

    monkeypatch.setattr(safetensors, "safe_open", refuse)
    got = {name: tensors[name] for name in names}
    monkeypatch.undo()
    want: dict[str, torch.Tensor] = {}
    for f in directory.glob("*.safetensors"):
        want.update(load_file(str(f)))
    assert sorted(got) == sorted(want)
    for name, tensor in got.items():
        assert tensor.dtype == want[name].dtype and torch.equal(tensor, want[name]), name


def test_base_model_names_and_buffers_in_a_checkpoint_are_understood(tmp_path):
    """A GPT-2 checkpoint written by the base model class (names without `transformer.`, causal-mask buffers
    `attn.bias`) loads, with the tied head."""
    needs("transformers")
    from hf_models import build
    from safetensors.torch import save_file

    directory = tmp_path / "gpt2"
    hf = build("gpt2", directory)
    state = {k.removeprefix("transformer."): v.contiguous() for k, v in hf.state_dict().items()
             if k != "lm_head.weight"}
    for l in range(hf.config.n_layer):
        state[f"h.{l}.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
    for f in directory.glob("*.safetensors"):
        f.unlink()
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    model = load_model(f"hf:{directory}")
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = hf(tokens).logits
    torch.testing.assert_close(model(tokens), want, atol=1e-4, rtol=0)
    assert model.cfg.tied_embeddings
