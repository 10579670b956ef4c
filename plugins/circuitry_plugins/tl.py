"""The `tl:` model source: TransformerLens HookedTransformer checkpoints.

`tl:PATH` reads a state dict saved from a TransformerLens 2.x/3.x
HookedTransformer (`model.safetensors`, or a `.pt`/`.pth` file read with
`torch.load(weights_only=True)`) and the model's config as JSON
(`config.json` or `cfg.json`, the fields of HookedTransformerConfig). PATH is
the directory holding them, or the weights file with the config beside it.
transformer-lens itself is not needed.

TransformerLens parameter names are circuitry's: only the grouped-query names
(`attn._W_K`, `_W_V`, `_b_K`, `_b_V`) are renamed and the buffers (`attn.mask`,
`attn.IGNORE`, `attn.rotary_sin/cos`) dropped. Three reparametrisations keep
the logits exact: GPT-J style rotary (`rotary_adjacent_pairs`) permutes the
rotary dims of W_Q / W_K into the rotate-half layout; a per-layer
`scale_attn_by_inverse_layer_idx` factor is folded into W_Q / b_Q; the gated
MLP's b_in (added after the gate product in TransformerLens) is folded into
b_out. Config fields that change the forward pass in ways the canonical model
does not have (shortformer positions, local attention, soft caps, QK norm,
scaled rotary ...) are refused by name.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from circuitry import hookimpl
from circuitry.errors import ModelLoadError
from circuitry.model import HookedTransformer, ModelConfig
from circuitry.model.io import load_state
from circuitry.records import ModelSource

CONFIG_NAMES = ("config.json", "cfg.json")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
BUFFERS = (".attn.mask", ".attn.IGNORE", ".attn.rotary_sin", ".attn.rotary_cos")
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_new", "gelu_fast": "gelu_new", "gelu_pytorch_tanh": "gelu_new",
               "relu": "relu", "silu": "silu"}
POSITIONAL = {"standard": "learned", "rotary": "rotary"}
NORMALIZATIONS = ("LN", "LNPre", "RMS", "RMSPre", None)

# fields read by the conversion
MAPPED = {"n_layers", "d_model", "n_ctx", "d_head", "n_heads", "d_mlp", "d_vocab", "d_vocab_out", "act_fn",
          "eps", "normalization_type", "final_rms", "positional_embedding_type", "rotary_dim", "rotary_base",
          "rotary_adjacent_pairs", "n_key_value_heads", "parallel_attn_mlp", "gated_mlp", "attn_only",
          "use_attn_scale", "attn_scale", "scale_attn_by_inverse_layer_idx", "model_name", "tokenizer_name"}
# fields that do not change what the state dict computes (bookkeeping, hooks, initialisation, or
# settings that only matter together with a refused feature)
IGNORED = {"device", "dtype", "n_devices", "seed", "init_mode", "init_weights", "initializer_range", "n_params",
           "use_attn_result", "use_split_qkv_input", "use_hook_mlp_in", "use_attn_in", "use_hook_tokens",
           "uses_rms_norm", "layer_norm_folding", "default_prepend_bos", "tokenizer_prepends_bos",
           "original_architecture", "from_checkpoint", "checkpoint_index", "checkpoint_label_type",
           "checkpoint_value", "trust_remote_code", "window_size", "rotary_base_local", "train_seq_length",
           "ungroup_grouped_query_attention", "tie_word_embeddings", "decoder_start_token_id",
           "relative_attention_max_distance", "relative_attention_num_buckets", "experts_per_token",
           "norm_topk_prob", "NTK_by_parts_low_freq_factor", "NTK_by_parts_high_freq_factor",
           "NTK_by_parts_factor", "NTK_original_ctx_len", "yarn_factor", "yarn_attention_factor",
           "yarn_beta_fast", "yarn_beta_slow", "yarn_original_max_position_embeddings", "yarn_truncate",
           "yarn_global_attn_only", "quantization_method"}
# features the canonical model does not have: refused unless off (off = the predicate holds)
REFUSED = {
    "use_qk_norm": lambda v: not v,
    "clip_qkv": lambda v: v is None,
    "use_logn_attn": lambda v: not v,
    "use_dynamic_ntk_rope": lambda v: not v,
    "use_local_attn": lambda v: not v,
    "attn_types": lambda v: v is None or all(t == "global" for t in v),
    "attention_dir": lambda v: v in (None, "causal"),
    "num_experts": lambda v: not v,
    "post_embedding_ln": lambda v: not v,
    "use_normalization_before_and_after": lambda v: not v,
    "attn_scores_soft_cap": lambda v: v is None or v <= 0,
    "output_logits_soft_cap": lambda v: v is None or v <= 0,
    "use_NTK_by_parts_rope": lambda v: not v,
    "use_yarn_rope": lambda v: not v,
    "use_attention_sinks": lambda v: not v,
    "load_in_4bit": lambda v: not v,
    "rotary_scaling_factor": lambda v: v is None or float(v) == 1.0,
}


def _off(value: Any) -> bool:
    return value in (None, False, 0, "", [], {})


def tl_config(raw: dict[str, Any], where: str) -> tuple[ModelConfig, dict[str, Any]]:
    """A TransformerLens config dict -> (ModelConfig, options for the state conversion)."""
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{where}: expected a JSON object (a TransformerLens config)")
    if "n_layers" not in raw and "model_type" in raw:
        raise ModelLoadError(f"{where}: this is a Hugging Face config; load the directory with hf:PATH")
    for key, is_off in REFUSED.items():
        if key in raw and not is_off(raw[key]):
            raise ModelLoadError(f"{where}: TransformerLens feature {key}={raw[key]!r} is not supported by "
                                 f"circuitry's model")
    unknown = [k for k in raw if k not in MAPPED | IGNORED | set(REFUSED) and not _off(raw[k])]
    if unknown:
        raise ModelLoadError(f"{where}: unknown TransformerLens config field(s) "
                             f"{', '.join(f'{k}={raw[k]!r}' for k in unknown[:3])}; circuitry cannot tell "
                             f"whether they change the model")
    missing = [k for k in ("n_layers", "d_model", "n_ctx", "d_head", "d_vocab") if raw.get(k) is None]
    if missing:
        raise ModelLoadError(f"{where}: missing TransformerLens config field(s) {', '.join(missing)}")
    get = raw.get
    d_model, d_head, d_vocab = get("d_model"), get("d_head"), get("d_vocab")
    n_heads = get("n_heads", -1)
    n_heads = d_model // d_head if n_heads in (None, -1) else n_heads
    if get("d_vocab_out") not in (None, -1, d_vocab):
        raise ModelLoadError(f"{where}: d_vocab_out {get('d_vocab_out')} differs from d_vocab {d_vocab}; "
                             f"not supported")
    attn_only = bool(get("attn_only", False))
    act = get("act_fn")
    if not attn_only and act not in ACTIVATIONS:
        raise ModelLoadError(f"{where}: act_fn {act!r} is not supported; supported: {', '.join(ACTIVATIONS)}")
    norm = get("normalization_type", "LN")
    if norm not in NORMALIZATIONS:
        raise ModelLoadError(f"{where}: normalization_type {norm!r} is not supported; supported: "
                             f"{', '.join(map(str, NORMALIZATIONS))}")
    if get("final_rms") and norm not in ("RMS", "RMSPre"):
        raise ModelLoadError(f"{where}: final_rms with normalization_type {norm!r} (an RMSNorm only at the end) "
                             f"is not supported")
    pos = get("positional_embedding_type", "standard")
    if pos not in POSITIONAL:
        what = " (positions added to queries and keys only)" if pos == "shortformer" else ""
        raise ModelLoadError(f"{where}: positional_embedding_type {pos!r}{what} is not supported; supported: "
                             f"{', '.join(POSITIONAL)}")
    use_scale = get("use_attn_scale", True)
    scale = float(get("attn_scale") or math.sqrt(d_head)) if use_scale in (None, True) else 1.0
    n_kv = get("n_key_value_heads")
    cfg = ModelConfig(
        n_layers=get("n_layers"), d_model=d_model, n_heads=n_heads, d_head=d_head, d_vocab=d_vocab,
        n_ctx=get("n_ctx"), d_mlp=None if attn_only else (get("d_mlp") or 4 * d_model),
        act_fn=ACTIVATIONS.get(act, "gelu"), gated_mlp=bool(get("gated_mlp", False)) and not attn_only,
        normalization=norm, norm_eps=float(get("eps", 1e-5)), positional=POSITIONAL[pos],
        rotary_dim=(get("rotary_dim") or d_head) if pos == "rotary" else None,
        rotary_base=float(get("rotary_base") or 10000.0),
        n_kv_heads=n_kv if n_kv and n_kv != n_heads else None,
        parallel_attn_mlp=bool(get("parallel_attn_mlp", False)) and not attn_only,
        attn_scale=None if abs(scale - math.sqrt(d_head)) < 1e-9 else scale,
        name=str(get("model_name") or "tl-model"),
    )
    options = {"adjacent_pairs": bool(get("rotary_adjacent_pairs")) and pos == "rotary",
               "inverse_layer_scale": bool(get("scale_attn_by_inverse_layer_idx"))}
    return cfg, options


def tl_state(cfg: ModelConfig, state: dict[str, torch.Tensor], options: dict[str, Any],
             where: str) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Rename, drop buffers and reparametrise a TransformerLens state dict; the config gains
    the bias flags of the biases present."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ModelLoadError(f"{where}: entry {key!r} is a {type(value).__name__}, not a tensor")
        if key.endswith(BUFFERS):
            continue
        for old in ("_W_K", "_W_V", "_b_K", "_b_V"):
            if key.endswith(".attn." + old):
                key = key[: -len(old)] + old[1:]
        out[key] = value.detach().to(torch.float32)
    for l in range(cfg.n_layers):
        p = f"blocks.{l}."
        if options["adjacent_pairs"]:  # GPT-J pairs (2i, 2i+1) -> rotate-half pairs (i, i + rd/2)
            rd = cfg.n_rotary
            perm = torch.cat([torch.arange(0, rd, 2), torch.arange(1, rd, 2), torch.arange(rd, cfg.d_head)])
            for m in ("W_Q", "W_K", "b_Q", "b_K"):
                if p + "attn." + m in out:
                    out[p + "attn." + m] = out[p + "attn." + m][..., perm].contiguous()
        if options["inverse_layer_scale"]:
            for m in ("W_Q", "b_Q"):
                if p + "attn." + m in out:
                    out[p + "attn." + m] = out[p + "attn." + m] / (l + 1)
        if cfg.gated_mlp and p + "mlp.b_in" in out:  # act(x W_gate) * (x W_in) + b_in, then @ W_out + b_out
            b_in = out.pop(p + "mlp.b_in")
            b_out = out.get(p + "mlp.b_out", torch.zeros(cfg.d_model))
            out[p + "mlp.b_out"] = b_out + b_in @ out[p + "mlp.W_out"]
            out[p + "mlp.b_in"] = torch.zeros_like(b_in)
    flags = dict(attn_bias="blocks.0.attn.b_Q" in out, attn_out_bias="blocks.0.attn.b_O" in out,
                 mlp_bias="blocks.0.mlp.b_in" in out, unembed_bias="unembed.b_U" in out)
    return ModelConfig(**{**cfg.to_dict(), **flags}), out


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(file))
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types
            raise ModelLoadError(f"{file}: not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickles with code, truncated files ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{file}: not loadable with torch.load(weights_only=True) ({first})") from None
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model_state_dict"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{file}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    return obj


def find_files(rest: str) -> tuple[Path, Path]:
    """(weights file, config file) for `tl:rest`."""
    path = Path(rest).expanduser()
    if not rest or not path.exists():
        raise ModelLoadError(f"tl:{rest}: no such file or directory (expected a directory with a TransformerLens "
                             f"state dict and its config.json)")
    folder = path if path.is_dir() else path.parent
    configs = [folder / n for n in CONFIG_NAMES if (folder / n).exists()]
    if not configs:
        raise ModelLoadError(f"tl:{rest}: no {' or '.join(CONFIG_NAMES)} (the TransformerLens config) in {folder}")
    if path.is_file():
        if path.suffix not in WEIGHT_SUFFIXES:
            raise ModelLoadError(f"tl:{rest}: weights must be {', '.join(WEIGHT_SUFFIXES)} files")
        return path, configs[0]
    if (path / "model.safetensors").exists():
        return path / "model.safetensors", configs[0]
    for suffixes in ((".safetensors",), (".pt", ".pth")):
        found = sorted(f for f in path.iterdir() if f.suffix in suffixes)
        if len(found) == 1:
            return found[0], configs[0]
        if len(found) > 1:
            raise ModelLoadError(f"tl:{rest}: several weight files ({', '.join(f.name for f in found[:4])}); "
                                 f"name one: tl:{path / found[0].name}")
    raise ModelLoadError(f"tl:{rest}: no weights (model.safetensors, *.pt or *.pth) in {path}")


def _tokenizer(folder: Path, name: str | None) -> tuple[Any, str]:
    """The tokenizer saved beside the checkpoint, or the tokenizer_name from the local Hugging Face
    cache (never downloaded); None with the reason otherwise."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return None, "transformers is not installed (pip install 'circuitry[hf]')"
    from circuitry_plugins.hf.source import TOKENIZER_FILES, load_tokenizer

    if any((folder / f).exists() for f in TOKENIZER_FILES):
        return load_tokenizer(folder)
    if not name:
        return None, f"{folder} has no tokenizer files and the config names no tokenizer_name"
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True, trust_remote_code=False), ""
    except Exception:  # noqa: BLE001 - not cached
        return None, f"tokenizer {name!r} is not in the local Hugging Face cache"


def load_tl(rest: str, device: Any = None) -> HookedTransformer:
    weights, config_file = find_files(rest)
    try:
        raw = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{config_file}: not valid JSON ({exc})") from None
    cfg, options = tl_config(raw, str(config_file))
    cfg, state = tl_state(cfg, _read_weights(weights), options, str(weights))
    tokenizer, why = _tokenizer(config_file.parent, raw.get("tokenizer_name"))
    bos = getattr(tokenizer, "bos_token_id", None)
    if isinstance(bos, int) and 0 <= bos < cfg.d_vocab:
        cfg = ModelConfig(**{**cfg.to_dict(), "bos_token_id": bos})
    model = HookedTransformer(cfg, seed=None)
    load_state(model, state, where=f"tl:{rest}")
    model.tokenizer, model.tokenizer_note = tokenizer, why
    model.eval()
    return model.to(device) if device else model


@hookimpl
def circuitry_model_sources():
    return [ModelSource("tl", "TransformerLens HookedTransformer checkpoints: a directory with the state dict "
                              "(model.safetensors, *.pt or *.pth) and its config.json (tl:PATH)", load_tl)]
