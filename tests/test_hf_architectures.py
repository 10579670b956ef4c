"""The newer Hugging Face architectures against transformers itself.

Scaled rotary positions (Llama 3.x `llama3`, `linear`, dynamic NTK), Qwen3,
GPT-J, Phi-3 (with LongRoPE), OLMo-2 and Gemma 1/2/3: each tiny random model
(tests/hf_models.py `architecture_configs`) is saved with save_pretrained and
loaded through `hf:PATH`. Its fp32 logits must equal the Hugging Face model's
within 1e-4, `blocks.0.attn.hook_pattern` must equal transformers'
`output_attentions`, and the previous-token and induction scores must equal
scores computed here, by their definitions, from transformers' attention
weights. Each feature is also shown to matter (switching it off changes the
logits), and the converted models keep their parameter count, fold their
norms, save and load, and give every head its own input exactly.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("transformers")

from hf_models import D_VOCAB, architecture_configs, build, reference_scores  # noqa: E402

from circuitry.datasets import make_batch  # noqa: E402
from circuitry.errors import ModelLoadError  # noqa: E402
from circuitry.model import HookedTransformer  # noqa: E402
from circuitry.model.io import save_model  # noqa: E402
from circuitry.scan import scan  # noqa: E402
from circuitry.sources import load_model  # noqa: E402

ARCHS = list(architecture_configs())
# what each variant must turn into (the conversion really exercised the feature it is named after), and
# the config change that switches that feature off (the logits must then move by more than 1e-2)
EXPECTED = {
    "llama3-rope": (dict(n_kv_heads=2, rotary_base=500.0),
                    dict(rope_scaling=None)),
    "llama-linear-rope": (dict(rotary_dim=16), dict(rope_scaling=None)),
    "llama-dynamic-rope": (dict(n_ctx=16), dict(rope_scaling=None)),
    "qwen3": (dict(qk_norm="head", n_kv_heads=2, gated_mlp=True), dict(qk_norm=None)),
    "gptj": (dict(parallel_attn_mlp=True, rotary_dim=8, normalization="LN", unembed_bias=True, tied_embeddings=False),
             dict(rotary_dim=6)),
    "phi3-longrope": (dict(rotary_dim=12, attn_window=10, n_kv_heads=2), dict(rope_scaling=None)),
    "olmo2": (dict(qk_norm="projection", pre_norms=False, post_norms=True, n_kv_heads=2), dict(qk_norm=None)),
    "gemma": (dict(embed_scale=8.0, act_fn="gelu_new", tied_embeddings=True, n_kv_heads=1), dict(embed_scale=None)),
    "gemma2": (dict(attn_types=("local", "global"), attn_window=6, attn_scores_soft_cap=3.0, post_norms=True,
                    output_logits_soft_cap=5.0, attn_scale=24 ** 0.5), dict(attn_scores_soft_cap=None)),
    "gemma3": (dict(qk_norm="head", attn_types=("local", "global"), rotary_base=1000.0, rotary_base_local=50.0,
                    post_norms=True, output_logits_soft_cap=None), dict(rotary_base_local=None)),
}
SCALING = {"llama3-rope": ("llama3", 8.0), "llama-linear-rope": ("linear", 4.0), "llama-dynamic-rope": ("dynamic", 3.0),
           "phi3-longrope": ("longrope", 4.0), "gemma3": ("linear", 4.0)}
# longer than the original context (so dynamic and long factors are in effect) and than the attention windows
N_POS = {"llama-dynamic-rope": 40}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """arch -> (directory, Hugging Face model), built on first use."""
    root = tmp_path_factory.mktemp("arch")
    made: dict = {}

    def get(arch: str):
        if arch not in made:
            made[arch] = (root / arch, build(arch, root / arch, seed=ARCHS.index(arch) + 11))
        return made[arch]

    return get


def _tokens(n: int, batch: int = 3, seed: int = 5) -> torch.Tensor:
    return torch.randint(0, D_VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))


def _variant(model: HookedTransformer, **changes) -> HookedTransformer:
    """The model with a changed config and every weight the new config still has."""
    other = HookedTransformer(model.replace_config(**changes), seed=None)
    own = other.state_dict()
    other.load_state_dict({k: v for k, v in model.state_dict().items() if k in own}, strict=False)
    return other.eval()


def _hf_run(hf_model, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = hf_model(tokens, output_attentions=True)
    return out.logits, torch.stack(out.attentions)  # [batch, pos, vocab], [layer, batch, head, q, k]


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_equal_transformers(built, arch):
    directory, hf_model = built(arch)
    model = load_model(f"hf:{directory}")
    fields, off = EXPECTED[arch]
    for field, value in fields.items():
        assert getattr(model.cfg, field) == value, field
    if arch in SCALING:
        assert (model.cfg.rope_scaling.kind, model.cfg.rope_scaling.factor) == SCALING[arch]
    tokens = _tokens(N_POS.get(arch, 24))
    with torch.no_grad():
        ref = hf_model(tokens).logits
        got = model(tokens)
        moved = float((_variant(model, **off)(tokens) - ref).abs().max())
    assert ref.std() > 0.5  # logits far from zero: a wrong conversion could not hide
    err = float((got - ref).abs().max())
    assert err < 1e-4, f"{arch}: max |logit error| {err}"
    assert moved > 1e-2, f"{arch}: switching {off} off changes the logits by only {moved}"
    assert model.cfg.n_params_estimate() == model.n_params()


@pytest.mark.parametrize("arch", ARCHS)
def test_detector_scores_and_patterns_equal_transformers(built, arch):
    directory, hf_model = built(arch)
    model = load_model(f"hf:{directory}")
    seq_len = min(9, (model.cfg.n_ctx - 1) // 2)
    batch = make_batch(model, f"repeated:batch=4,seq_len={seq_len},seed=1")  # BOS + random tokens repeated
    result = scan(model, batch, ["previous_token", "induction"])
    _, att = _hf_run(hf_model, batch.tokens)
    prev, ind = reference_scores(att, batch.tokens)
    assert torch.allclose(result.heads["previous_token"].double(), prev, atol=1e-5)
    assert torch.allclose(result.heads["induction"].double(), ind, atol=1e-5)
    # heads differ: the comparison is per head, not trivial
    assert max(float(prev.max() - prev.min()), float(ind.max() - ind.min())) > 0.02
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.tokens, names=["blocks.0.attn.hook_pattern"])
    torch.testing.assert_close(cache["blocks.0.attn.hook_pattern"], att[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["llama3-rope", "phi3-longrope", "olmo2", "gemma3"])
def test_bfloat16_is_as_close_as_transformers_own_bfloat16(built, arch):
    """Loaded in bfloat16, the logits are as far from the fp32 logits as transformers' own bfloat16 model's are.
    Stated tolerance: mean |error| at most 1.25 times transformers' + 0.005 (measured: 0.98-1.21 times);
    bfloat16 rounding differs between the two, and sharp random attention amplifies it, so no bound on the
    difference of the two models holds."""
    import copy

    directory, hf_model = built(arch)
    model = load_model(f"hf:{directory}", dtype="bfloat16")
    assert model.embed.W_E.dtype == torch.bfloat16
    tokens = _tokens(N_POS.get(arch, 20), batch=2, seed=4)
    with torch.no_grad():
        ref = hf_model(tokens).logits
        theirs = float((copy.deepcopy(hf_model).to(torch.bfloat16)(tokens).logits.float() - ref).abs().mean())
        ours = float((model(tokens).float() - ref).abs().mean())
    assert ours <= 1.25 * theirs + 0.005, f"{arch}: bfloat16 mean |error| {ours} vs transformers' {theirs}"


def test_new_config_fields_are_validated():
    from circuitry.model import ModelConfig

    base = dict(n_layers=2, d_model=8, n_heads=2, d_head=4, d_vocab=10, n_ctx=8, positional="rotary")
    bad = {
        "attn_types must list": dict(attn_types=("local",), attn_window=2),
        "attn_types has local layers but attn_window is not set": dict(attn_types=("local", "global")),
        "rotary_base_local needs rotary positions and local layers": dict(rotary_base_local=10.0),
        "qk_norm must be one of": dict(qk_norm="all"),
        "post_norms needs a normalization": dict(post_norms=True),
        "embed_scale must be a finite number > 0": dict(embed_scale=-1.0),
        "output_logits_soft_cap must be a finite number > 0": dict(output_logits_soft_cap=float("inf")),
        "rope_scaling.kind must be one of": dict(rope_scaling={"kind": "yarn"}),
        "llama3 needs low_freq_factor and high_freq_factor": dict(
            rope_scaling={"kind": "llama3", "factor": 8.0, "original_context": 4}),
        "long_factor must be 2 finite numbers": dict(
            rope_scaling={"kind": "longrope", "original_context": 4, "long_factor": [1.0], "short_factor": [1, 1]}),
        "rope_scaling must be null or a mapping": dict(rope_scaling={"kind": "linear", "typo": 1}),
        "pre_norms must be true or false": dict(pre_norms="no"),
    }
    for message, change in bad.items():
        with pytest.raises(ModelLoadError, match=message):
            ModelConfig(**{**base, **change})


def test_dynamic_ntk_follows_the_run_length(built):
    """Dynamic NTK: unscaled up to max_position_embeddings (16), then a base that grows with the length.
    transformers recomputes its frequencies whenever a run is longer than every run before, so runs of
    growing length compare like for like."""
    directory, hf_model = built("llama-dynamic-rope")
    model = load_model(f"hf:{directory}")
    plain = _variant(model, rope_scaling=None)
    for n in (12, 16, 24, 40):
        tokens = _tokens(n, batch=2, seed=n)
        with torch.no_grad():
            ref, got, unscaled = hf_model(tokens).logits, model(tokens), plain(tokens)
        assert float((got - ref).abs().max()) < 1e-4, n
        if n <= 16:
            torch.testing.assert_close(got, unscaled, atol=0, rtol=0)
        else:
            assert float((got - unscaled).abs().max()) > 1e-2, n


def test_new_config_fields_round_trip_and_fold(built, tmp_path):
    """Saved with circuitry's own format and loaded back: the same config (scaling, QK-norm ...) and logits;
    folding the norms keeps the logits."""
    for arch in ("phi3-longrope", "olmo2", "gemma2", "gemma3", "gptj"):  # every new field, every new kind of norm
        directory, hf_model = built(arch)
        model = load_model(f"hf:{directory}")
        save_model(model, tmp_path / arch)
        again = load_model(str(tmp_path / arch))
        assert again.cfg == model.cfg
        json.loads((tmp_path / arch / "config.json").read_text())  # plain JSON
        tokens = _tokens(N_POS.get(arch, 20), batch=2, seed=9)
        with torch.no_grad():
            ref = hf_model(tokens).logits
            torch.testing.assert_close(again(tokens), model(tokens), atol=0, rtol=0)
            folded = model.fold_layer_norm()
            assert folded.cfg.normalization in ("RMSPre", "LNPre")
            assert float((folded(tokens) - ref).abs().max()) < 1e-4, arch


def test_longrope_switches_factors_with_the_run_length(built):
    """Phi-3 LongRoPE: short factors up to original_max_position_embeddings (16), long factors beyond, and the
    attention factor sqrt(1 + ln(64 / 16) / ln(16)) on cos and sin."""
    directory, hf_model = built("phi3-longrope")
    model = load_model(f"hf:{directory}")
    assert model.cfg.rope_scaling.attention_factor == pytest.approx((1 + math.log(4) / math.log(16)) ** 0.5)
    for n in (12, 16, 17, 30):
        tokens = _tokens(n, batch=2, seed=n)
        with torch.no_grad():
            assert float((model(tokens) - hf_model(tokens).logits).abs().max()) < 1e-4, n


@pytest.mark.parametrize("arch", ["olmo2", "gemma3", "phi3-longrope"])
def test_each_head_reads_its_own_input(built, arch):
    """Per-head inputs through hook_q_input / hook_k_input: the same input for every head gives the same
    logits; another input for head 0 only changes head 0's pattern, to exactly the pattern all heads get
    from that input (for OLMo-2 the whole-projection QK-norm is taken over the projection of head 0's input)."""
    directory, _ = built(arch)
    model = load_model(f"hf:{directory}")
    tokens, other = _tokens(14, batch=2, seed=1), _tokens(14, batch=2, seed=2)
    names = ["blocks.1.attn.hook_pattern", "blocks.1.hook_resid_pre"]
    with torch.no_grad():
        logits, clean = model.run_with_cache(tokens, names=names)
        _, alt = model.run_with_cache(other, names=names)
        same = model.run_with_hooks(tokens, [(f"blocks.1.attn.hook_{m}_input", lambda x, hook: x) for m in "qk"])
        torch.testing.assert_close(same, logits, atol=1e-5, rtol=0)

        def head0(x, hook):  # x [batch, pos, head, d_model]
            x = x.clone()
            x[:, :, 0] = alt["blocks.1.hook_resid_pre"]
            return x

        hooks = [(f"blocks.1.attn.hook_{m}_input", head0) for m in "qk"]
        _, patched = model.run_with_cache(tokens, names=names[:1], hooks=hooks)
    got, want = patched["blocks.1.attn.hook_pattern"], clean["blocks.1.attn.hook_pattern"]
    torch.testing.assert_close(got[:, 1:], want[:, 1:], atol=1e-6, rtol=0)
    torch.testing.assert_close(got[:, 0], alt["blocks.1.attn.hook_pattern"][:, 0], atol=1e-5, rtol=0)
    assert float((got[:, 0] - want[:, 0]).abs().max()) > 1e-2


def test_hook_names_of_the_new_parts(built):
    """TransformerLens's names: attn.q_norm / attn.k_norm (QK-norm), ln1_post / ln2_post (post-norms)."""
    olmo = load_model(f"hf:{built('olmo2')[0]}")
    gemma = load_model(f"hf:{built('gemma3')[0]}")
    tokens = _tokens(10, batch=1)
    names = ["blocks.0.attn.q_norm.hook_scale", "blocks.0.attn.k_norm.hook_scale", "blocks.0.ln1_post.hook_scale",
             "blocks.0.ln2_post.hook_scale", "blocks.0.attn.hook_q", "blocks.0.attn.hook_rot_q"]
    for model in (olmo, gemma):
        assert set(names) <= set(model.hook_names())
    assert "blocks.0.ln1.hook_scale" not in olmo.hook_names()  # no pre-norms
    with torch.no_grad():
        _, cache = olmo.run_with_cache(tokens, names=names)
        _, gcache = gemma.run_with_cache(tokens, names=names)
    assert cache["blocks.0.attn.q_norm.hook_scale"].shape == (1, 10, 1, 1)  # one scale per position
    assert gcache["blocks.0.attn.q_norm.hook_scale"].shape == (1, 10, 4, 1)  # one per head
    q = cache["blocks.0.attn.hook_q"]  # before the norm: its RMS over all heads is the scale
    eps = olmo.cfg.norm_eps
    torch.testing.assert_close(cache["blocks.0.attn.q_norm.hook_scale"][..., 0, 0],
                               (q.pow(2).flatten(-2).mean(-1) + eps).sqrt(), atol=1e-6, rtol=1e-6)


def test_decomposition_exact_with_qk_norm_refused_with_post_norms_or_capped_logits(built):
    """Frozen patterns make QK-norm irrelevant to the path decomposition (Qwen3: the terms add up to the logits);
    post-norms (OLMo-2) and soft-capped logits (Gemma 2) are refused with the reason."""
    from circuitry.errors import UsageError
    from circuitry.graph.decomposition import decompose

    tokens = _tokens(12, batch=2)
    qwen = load_model(f"hf:{built('qwen3')[0]}")
    with torch.no_grad():
        d = decompose(qwen, tokens)
        torch.testing.assert_close(d.total(), qwen(tokens), atol=1e-4, rtol=0)
    with pytest.raises(UsageError, match="post-norms ln1_post / ln2_post.*decompose refuses"):
        decompose(load_model(f"hf:{built('olmo2')[0]}"), tokens)
    with pytest.raises(UsageError, match=r"soft-caps its logits \(5 \* tanh\(logits / 5\)\)"):
        decompose(load_model(f"hf:{built('gemma2')[0]}"), tokens)


@pytest.mark.parametrize("model_type", ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe"])
def test_mixture_of_experts_is_refused(tmp_path, model_type):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(ModelLoadError, match=f"'{model_type}': a mixture-of-experts model.*one dense MLP per block"):
        load_model(f"hf:{tmp_path}")


def test_yarn_is_refused(built, tmp_path):
    directory, _ = built("llama3-rope")
    cfg = json.loads((directory / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 500.0, "factor": 2.0,
                              "original_max_position_embeddings": 16}
    for f in directory.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="rotary scaling 'yarn' is not supported"):
        load_model(f"hf:{tmp_path}")
