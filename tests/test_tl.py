"""The tl: model source: TransformerLens checkpoints (state dict + config JSON).

Without transformer-lens: TL-format checkpoints are written here from tiny
Hugging Face models (the canonical state dict renamed to TransformerLens
conventions, with the biases and buffers TransformerLens always stores, and a
config JSON with TransformerLens field names), in the layouts TransformerLens
uses for GPT-J rotary, per-layer attention scaling and the gated MLP bias;
loaded through `tl:` their logits must equal the Hugging Face model's.
With transformer-lens installed, real HookedTransformer checkpoints are also
checked against TransformerLens's own forward pass.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from circuitry.cli import main
from circuitry.errors import ModelLoadError
from circuitry.model import HookedTransformer, ModelConfig
from circuitry.sources import load_model


def _tl_config(cfg, **extra) -> dict:
    """A TransformerLens config dict (as HookedTransformerConfig.to_dict() writes it) for a circuitry config."""
    doc = {
        "n_layers": cfg.n_layers, "d_model": cfg.d_model, "n_heads": cfg.n_heads, "d_head": cfg.d_head,
        "d_mlp": cfg.d_mlp, "d_vocab": cfg.d_vocab, "d_vocab_out": cfg.d_vocab, "n_ctx": cfg.n_ctx,
        "act_fn": cfg.act_fn, "normalization_type": cfg.normalization, "eps": cfg.norm_eps,
        "positional_embedding_type": "rotary" if cfg.positional == "rotary" else "standard",
        "rotary_dim": cfg.rotary_dim if cfg.positional == "rotary" else None, "rotary_base": cfg.rotary_base,
        "rotary_adjacent_pairs": False, "n_key_value_heads": cfg.n_kv_heads,
        "parallel_attn_mlp": cfg.parallel_attn_mlp, "gated_mlp": cfg.gated_mlp, "attn_only": False,
        "use_attn_scale": True, "attn_scale": math.sqrt(cfg.d_head), "scale_attn_by_inverse_layer_idx": False,
        "final_rms": False, "model_name": "custom", "original_architecture": None, "tokenizer_name": None,
        "default_prepend_bos": True, "dtype": "torch.float32", "device": "cpu", "n_devices": 1, "seed": None,
        "init_mode": "gpt2", "initializer_range": 0.02, "init_weights": True, "use_attn_result": False,
        "use_split_qkv_input": False, "use_hook_mlp_in": False, "use_attn_in": False, "use_local_attn": False,
        "attn_types": None, "attention_dir": "causal", "use_qk_norm": False, "attn_scores_soft_cap": -1.0,
        "output_logits_soft_cap": -1.0, "rotary_scaling_factor": 1.0, "use_NTK_by_parts_rope": False,
        "NTK_by_parts_factor": 8.0, "NTK_original_ctx_len": 8192, "use_yarn_rope": False, "yarn_factor": 1.0,
        "n_params": 12345,
    }
    doc.update(extra)
    return doc


def _tl_state(model) -> dict[str, torch.Tensor]:
    """The canonical state dict in TransformerLens's naming, with every bias TransformerLens
    stores (zeros where the model has none) and its buffers."""
    cfg = model.cfg
    gqa = cfg.n_kv_heads is not None
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    if cfg.tied_embeddings:
        sd["unembed.W_U"] = sd["embed.W_E"].T.contiguous()
    sd.setdefault("unembed.b_U", torch.zeros(cfg.d_vocab))
    for l in range(cfg.n_layers):
        p = f"blocks.{l}."
        sd.setdefault(p + "attn.b_Q", torch.zeros(cfg.n_heads, cfg.d_head))
        for m in ("K", "V"):
            sd.setdefault(p + f"attn.b_{m}", torch.zeros(cfg.kv_heads, cfg.d_head))
            if gqa:
                sd[p + f"attn._W_{m}"] = sd.pop(p + f"attn.W_{m}")
                sd[p + f"attn._b_{m}"] = sd.pop(p + f"attn.b_{m}")
        sd.setdefault(p + "attn.b_O", torch.zeros(cfg.d_model))
        sd.setdefault(p + "mlp.b_in", torch.zeros(cfg.d_mlp))
        sd.setdefault(p + "mlp.b_out", torch.zeros(cfg.d_model))
        sd[p + "attn.mask"] = torch.ones(cfg.n_ctx, cfg.n_ctx, dtype=torch.bool).tril()
        sd[p + "attn.IGNORE"] = torch.tensor(-1e5)
        if cfg.positional == "rotary":
            sd[p + "attn.rotary_sin"] = torch.zeros(cfg.n_ctx, cfg.n_rotary)
            sd[p + "attn.rotary_cos"] = torch.zeros(cfg.n_ctx, cfg.n_rotary)
    return sd


@pytest.fixture(scope="module")
def hf_built(tmp_path_factory):
    pytest.importorskip("transformers")
    from hf_models import build

    root = tmp_path_factory.mktemp("tl-from-hf")
    out = {}
    for i, name in enumerate(["gpt2", "neox-parallel", "llama-gqa"]):
        hf_model = build(name, root / name, seed=20 + i)
        out[name] = (load_model(f"hf:{root / name}"), hf_model)
    return out


def _tokens(seed: int = 0, n: int = 20) -> torch.Tensor:
    return torch.randint(0, 100, (3, n), generator=torch.Generator().manual_seed(seed))


def _max_err(model, hf_model, tokens) -> float:
    with torch.no_grad():
        return float((model(tokens) - hf_model(tokens).logits).abs().max())


def test_tl_checkpoints_from_hf_models_match_transformers(hf_built, tmp_path):
    from safetensors.torch import save_file

    # GPT-2 (LN, learned positions; TransformerLens unties W_U): safetensors + config.json
    model, hf_model = hf_built["gpt2"]
    d = tmp_path / "gpt2"
    d.mkdir()
    save_file(_tl_state(model), str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(_tl_config(model.cfg, act_fn="gelu_new")))
    tl = load_model(f"tl:{d}")
    assert not tl.cfg.tied_embeddings and tl.cfg.unembed_bias and tl.cfg.positional == "learned"
    assert _max_err(tl, hf_model, _tokens(1)) < 1e-4
    # GPT-NeoX (partial rotary, parallel): a .pt state dict with cfg.json
    model, hf_model = hf_built["neox-parallel"]
    d = tmp_path / "neox"
    d.mkdir()
    torch.save(_tl_state(model), d / "weights.pt")
    (d / "cfg.json").write_text(json.dumps(_tl_config(model.cfg)))
    tl = load_model(f"tl:{d}")
    assert tl.cfg.rotary_dim == 4 and tl.cfg.parallel_attn_mlp
    assert _max_err(tl, hf_model, _tokens(2)) < 1e-4
    # Llama (RMS, GQA with _W_K/_W_V, gated MLP): the .pth file named directly
    model, hf_model = hf_built["llama-gqa"]
    d = tmp_path / "llama"
    d.mkdir()
    torch.save(_tl_state(model), d / "model.pth")
    (d / "config.json").write_text(json.dumps(_tl_config(model.cfg, original_architecture="LlamaForCausalLM")))
    tl = load_model(f"tl:{d / 'model.pth'}")
    assert tl.cfg.n_kv_heads == 2 and tl.cfg.gated_mlp and tl.cfg.normalization == "RMS"
    assert _max_err(tl, hf_model, _tokens(3)) < 1e-4
    assert main(["scan", f"tl:{d}", "--json", "--detectors", "previous_token"]) == 0


def test_tl_layout_variants_are_reparametrised_exactly(hf_built, tmp_path):
    """GPT-J rotary pairs, per-layer 1/(l+1) attention scaling and TransformerLens's gated-MLP b_in
    (added after the gate product), each written here in TransformerLens's layout."""
    model, hf_model = hf_built["llama-gqa"]
    cfg = model.cfg
    sd = _tl_state(model)
    rd = cfg.n_rotary
    gen = torch.Generator().manual_seed(7)
    for l in range(cfg.n_layers):
        p = f"blocks.{l}."
        for key in ("attn.W_Q", "attn._W_K", "attn.b_Q", "attn._b_K"):
            half = sd[p + key]
            adjacent = half.clone()
            for i in range(rd // 2):  # rotate-half pair (i, i + rd/2) -> GPT-J pair (2i, 2i + 1)
                adjacent[..., 2 * i], adjacent[..., 2 * i + 1] = half[..., i], half[..., i + rd // 2]
            sd[p + key] = adjacent
        sd[p + "attn.W_Q"] = sd[p + "attn.W_Q"] * (l + 1)  # TransformerLens divides the scores by l + 1
        sd[p + "attn.b_Q"] = sd[p + "attn.b_Q"] * (l + 1)
        b_in = torch.randn(cfg.d_mlp, generator=gen)
        sd[p + "mlp.b_in"] = b_in  # act(x W_gate) * (x W_in) + b_in, then @ W_out + b_out
        sd[p + "mlp.b_out"] = sd[p + "mlp.b_out"] - b_in @ sd[p + "mlp.W_out"]
    d = tmp_path / "variants"
    d.mkdir()
    torch.save(sd, d / "model.pt")
    (d / "config.json").write_text(json.dumps(_tl_config(cfg, rotary_adjacent_pairs=True,
                                                         scale_attn_by_inverse_layer_idx=True)))
    tl = load_model(f"tl:{d}")
    assert _max_err(tl, hf_model, _tokens(4)) < 1e-4


def test_tl_errors(tmp_path, capsys):
    model = HookedTransformer(ModelConfig(n_layers=2, d_model=64, n_heads=4, d_head=16, d_vocab=100, n_ctx=32,
                                          d_mlp=96, normalization="LN", act_fn="gelu_new"), seed=0)
    d = tmp_path / "m"
    d.mkdir()
    torch.save(_tl_state(model), d / "model.pt")

    def load_with(**extra):
        (d / "config.json").write_text(json.dumps(_tl_config(model.cfg, **extra)))
        return load_model(f"tl:{d}")

    assert load_with().cfg.normalization == "LN"  # the checkpoint itself is fine
    with pytest.raises(ModelLoadError, match="positional_embedding_type 'shortformer' .*queries and keys only"):
        load_with(positional_embedding_type="shortformer")
    with pytest.raises(ModelLoadError, match=r"use_local_attn=True is not supported"):
        load_with(use_local_attn=True, attn_types=["global", "local"])
    with pytest.raises(ModelLoadError, match=r"output_logits_soft_cap=30.0 is not supported"):
        load_with(output_logits_soft_cap=30.0)
    with pytest.raises(ModelLoadError, match=r"unknown TransformerLens config field\(s\) use_magic=True"):
        load_with(use_magic=True)
    assert load_with(use_magic=False).cfg.d_model == 64  # an unknown field that is off is harmless
    with pytest.raises(ModelLoadError, match="d_vocab_out 50 differs"):
        load_with(d_vocab_out=50)
    with pytest.raises(ModelLoadError, match="act_fn 'solu_ln' is not supported"):
        load_with(act_fn="solu_ln")
    with pytest.raises(ModelLoadError, match="final_rms with normalization_type 'LN'"):
        load_with(final_rms=True)
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64}))
    with pytest.raises(ModelLoadError, match="Hugging Face config; load the directory with hf:PATH"):
        load_model(f"tl:{d}")
    (d / "config.json").write_text(json.dumps(_tl_config(model.cfg, n_layers=3)))
    with pytest.raises(ModelLoadError, match=r"missing tensors \['blocks.2"):
        load_model(f"tl:{d}")
    # a pickle that is not plain tensors is refused by weights_only loading
    (d / "config.json").write_text(json.dumps(_tl_config(model.cfg)))
    torch.save({"state_dict": _tl_state(model), "opt": _Opaque()}, d / "model.pt")
    with pytest.raises(ModelLoadError, match=r"model.pt: refused: the pickle would import test_tl._Opaque"):
        load_model(f"tl:{d}")
    torch.save(_tl_state(model), d / "other.pth")
    with pytest.raises(ModelLoadError, match="several weight files"):
        load_model(f"tl:{d}")
    (d / "config.json").unlink()
    assert main(["scan", f"tl:{d / 'other.pth'}"]) == 2
    assert "no config.json or cfg.json" in capsys.readouterr().err
    assert main(["scan", f"tl:{tmp_path / 'nope'}"]) == 2
    assert "no such file or directory" in capsys.readouterr().err


class _Opaque:
    """An object torch.load(weights_only=True) must refuse to unpickle."""


# ---------------------------------------------------------------- real TransformerLens (optional)
TL_VARIANTS = {
    "ln-learned-gelu_new": dict(normalization_type="LN", act_fn="gelu_new"),
    "gptj-rotary-parallel": dict(normalization_type="LN", act_fn="gelu", positional_embedding_type="rotary",
                                 rotary_dim=8, rotary_adjacent_pairs=True, parallel_attn_mlp=True),
    "rms-gqa-gated-layer-scaled": dict(normalization_type="RMS", act_fn="silu", positional_embedding_type="rotary",
                                       rotary_dim=16, n_key_value_heads=2, gated_mlp=True,
                                       scale_attn_by_inverse_layer_idx=True),
    "attn-only-lnpre-scale": dict(normalization_type="LNPre", attn_only=True, attn_scale=5.0),
    "no-norm-unscaled": dict(normalization_type=None, act_fn="relu", use_attn_scale=False),
}
GAIN = {"no-norm-unscaled": 0.6}  # smaller matrices where no norm keeps the residual stream in range


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TransformerLens 3.x announces 4.0
@pytest.mark.parametrize("variant", list(TL_VARIANTS))
def test_real_transformer_lens_checkpoints(variant, tmp_path):
    tl_lib = pytest.importorskip("transformer_lens")
    cfg = tl_lib.HookedTransformerConfig(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=96, d_vocab=100,
                                         n_ctx=64, seed=0, **TL_VARIANTS[variant])
    ref_model = tl_lib.HookedTransformer(cfg).eval()
    gen = torch.Generator().manual_seed(len(variant))
    with torch.no_grad():
        for name, p in ref_model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith(("ln1.w", "ln2.w", "ln_final.w")):
                p.copy_(1 + 0.3 * noise)
            elif p.ndim == 1 or ".b_" in name or "._b_" in name:
                p.copy_(0.3 * noise)
            else:
                is_embedding = name.startswith("embed") or "pos_embed" in name
                fan_in = 1 if is_embedding else p.shape[-2]
                p.copy_(noise * (0.5 if is_embedding else GAIN.get(variant, 2.0)) / fan_in ** 0.5)
    if variant.startswith("ln"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in ref_model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    else:
        torch.save(ref_model.state_dict(), tmp_path / "model.pt")
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict(), default=str))
    model = load_model(f"tl:{tmp_path}")
    tokens = _tokens(5, n=24)
    with torch.no_grad():
        ref_logits, ref_cache = ref_model.run_with_cache(tokens)
        logits, cache = model.run_with_cache(tokens)
    assert float(ref_logits.std()) > 0.5
    assert float((logits - ref_logits).abs().max()) < 1e-4
    for l in range(2):
        key = f"blocks.{l}.attn.hook_pattern"
        assert float((cache[key] - ref_cache[key]).abs().max()) < 1e-5
