"""TransformerLens HookedTransformer checkpoints -> the canonical model (the `tl:` source).

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

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from circuitry.errors import ModelLoadError
from circuitry.model import HookedTransformer, ModelConfig
from circuitry.model.config import finite_number, show
from circuitry.model.io import (
    build_model,
    check_shapes,
    check_weights,
    expand,
    expected_shapes,
    probe,
    read_json,
    read_safetensors,
    read_torch_file,
    require_memory,
)

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


# fields whose values must have a type before anything is computed from them
SIZES = ("n_layers", "d_model", "n_ctx", "d_head", "d_vocab")
OPTIONAL_SIZES = ("n_heads", "d_mlp", "n_key_value_heads", "rotary_dim", "d_vocab_out")  # null or -1: unset
NUMBERS = ("eps", "attn_scale", "rotary_base")
FLAGS = ("attn_only", "gated_mlp", "parallel_attn_mlp", "use_attn_scale", "rotary_adjacent_pairs",
         "scale_attn_by_inverse_layer_idx", "final_rms")


def _off(value: Any) -> bool:
    try:
        return value in (None, False, 0, "", [], {})
    except TypeError:  # a value that cannot be compared
        return False


def _is_off(key: str, value: Any) -> bool:
    """Whether a refused feature is switched off; a value of the wrong type counts as on."""
    try:
        return bool(REFUSED[key](value))
    except (TypeError, ValueError, OverflowError):
        return False


def _int(value: Any) -> bool:
    """An int that fits int64 (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63


def _type_problem(raw: dict[str, Any]) -> str | None:
    """The first field whose value has the wrong type or range, or None."""
    for key in SIZES:
        if key in raw and raw[key] is not None and not (_int(raw[key]) and raw[key] > 0):
            return f"{key} must be a positive integer, got {show(raw[key])}"
    for key in OPTIONAL_SIZES:
        v = raw.get(key)
        if v not in (None, -1) and not (_int(v) and v > 0):
            return f"{key} must be a positive integer (or null), got {show(v)}"
    for key in NUMBERS:
        v = raw.get(key)
        if v is not None and not finite_number(v):
            return f"{key} must be a finite number, got {show(v)}"
    for key in FLAGS:
        if raw.get(key) not in (None, True, False):
            return f"{key} must be true or false, got {show(raw[key])}"
    return None


def tl_config(raw: dict[str, Any], where: str) -> tuple[ModelConfig, dict[str, Any]]:
    """A TransformerLens config dict -> (ModelConfig, options for the state conversion).

    Every field is checked (types, ranges, divisibility) before anything is computed from it."""
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{where}: expected a JSON object (a TransformerLens config)")
    if "n_layers" not in raw and "model_type" in raw:
        raise ModelLoadError(f"{where}: this is a Hugging Face config; load the directory with hf:PATH")
    problem = _feature_problem(raw) or _type_problem(raw) or _choice_problem(raw)
    if problem:
        raise ModelLoadError(f"{where}: {problem}")
    try:
        cfg = ModelConfig(**_model_fields(raw))
    except ModelLoadError as exc:
        raise ModelLoadError(f"{where}: {exc}") from None
    pos = raw.get("positional_embedding_type", "standard")
    options = {"adjacent_pairs": bool(raw.get("rotary_adjacent_pairs")) and pos == "rotary",
               "inverse_layer_scale": bool(raw.get("scale_attn_by_inverse_layer_idx"))}
    return cfg, options


def _feature_problem(raw: dict[str, Any]) -> str | None:
    """A refused feature that is on, an unknown field that is on, or a missing field."""
    for key in REFUSED:
        if key in raw and not _is_off(key, raw[key]):
            return f"TransformerLens feature {key}={show(raw[key])} is not supported by circuitry's model"
    unknown = [k for k in raw if k not in MAPPED | IGNORED | set(REFUSED) and not _off(raw[k])]
    if unknown:
        fields = ", ".join(f"{_label(k)}={show(raw[k])}" for k in unknown[:3])
        return (f"unknown TransformerLens config field(s) {fields}; "
                f"circuitry cannot tell whether they change the model")
    missing = [k for k in SIZES if raw.get(k) is None]
    if missing:
        return f"missing TransformerLens config field(s) {', '.join(missing)}"
    return None


def _choice_problem(raw: dict[str, Any]) -> str | None:
    """An activation, normalisation or positional embedding the canonical model does not have."""
    get: Callable[..., Any] = raw.get
    d_model, d_head, d_vocab = get("d_model"), get("d_head"), get("d_vocab")
    if get("n_heads") in (None, -1) and d_model % d_head:
        return f"d_model {d_model} is not a multiple of d_head {d_head} (and n_heads is not given)"
    if get("d_vocab_out") not in (None, -1, d_vocab):
        return f"d_vocab_out {get('d_vocab_out')} differs from d_vocab {d_vocab}; not supported"
    act = get("act_fn")
    if not get("attn_only") and not (isinstance(act, str) and act in ACTIVATIONS):
        return f"act_fn {act!r} is not supported; supported: {', '.join(ACTIVATIONS)}"
    norm = get("normalization_type", "LN")
    if not (norm is None or isinstance(norm, str)) or norm not in NORMALIZATIONS:
        return f"normalization_type {norm!r} is not supported; supported: {', '.join(map(str, NORMALIZATIONS))}"
    if get("final_rms") and norm not in ("RMS", "RMSPre"):
        return f"final_rms with normalization_type {norm!r} (an RMSNorm only at the end) is not supported"
    pos = get("positional_embedding_type", "standard")
    if not isinstance(pos, str) or pos not in POSITIONAL:
        what = " (positions added to queries and keys only)" if pos == "shortformer" else ""
        return f"positional_embedding_type {pos!r}{what} is not supported; supported: {', '.join(POSITIONAL)}"
    return None


def _label(key: str) -> str:
    """A field name for a message: escaped (no line breaks) and at most 60 characters."""
    text = key.encode("unicode_escape").decode("ascii")
    return text if len(text) <= 60 else text[:60] + "..."


def _set(value: Any, default: Any) -> Any:
    """`value`, or `default` when TransformerLens leaves it unset (null or -1)."""
    return default if value is None or value == -1 else value


def _model_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """ModelConfig fields from checked TransformerLens fields (ModelConfig checks the ranges)."""
    get: Callable[..., Any] = raw.get
    d_model, d_head = get("d_model"), get("d_head")
    attn_only = bool(get("attn_only"))
    n_heads = _set(get("n_heads"), d_model // d_head)
    n_kv = _set(get("n_key_value_heads"), n_heads)
    pos = get("positional_embedding_type", "standard")
    scale = _set(get("attn_scale"), math.sqrt(d_head)) if get("use_attn_scale") in (None, True) else 1.0
    return {
        "n_layers": get("n_layers"), "d_model": d_model, "n_heads": n_heads, "d_head": d_head,
        "d_vocab": get("d_vocab"), "n_ctx": get("n_ctx"),
        "d_mlp": None if attn_only else _set(get("d_mlp"), 4 * d_model),
        "act_fn": ACTIVATIONS.get(get("act_fn"), "gelu") if isinstance(get("act_fn"), str) else "gelu",
        "gated_mlp": bool(get("gated_mlp")) and not attn_only,
        "normalization": get("normalization_type", "LN"),
        "norm_eps": 1e-5 if get("eps") is None else get("eps"),
        "positional": POSITIONAL[pos],
        "rotary_dim": _set(get("rotary_dim"), d_head) if pos == "rotary" else None,
        "rotary_base": 10000.0 if get("rotary_base") is None else get("rotary_base"),
        "n_kv_heads": None if n_kv == n_heads else n_kv,
        "parallel_attn_mlp": bool(get("parallel_attn_mlp")) and not attn_only,
        "attn_scale": None if abs(scale - math.sqrt(d_head)) < 1e-9 else scale,
        "name": str(get("model_name") or "tl-model"),
    }


def tl_state(cfg: ModelConfig, state: dict[str, torch.Tensor], options: dict[str, Any],
             where: str) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Rename, drop buffers and reparametrise a TransformerLens state dict; the config gains
    the bias flags of the biases present."""
    out = _renamed(state, where)
    flags = {"attn_bias": "blocks.0.attn.b_Q" in out, "attn_out_bias": "blocks.0.attn.b_O" in out,
             "mlp_bias": "blocks.0.mlp.b_in" in out, "unembed_bias": "unembed.b_U" in out}
    cfg = ModelConfig(**{**cfg.to_dict(), **flags})
    check_shapes(expected_shapes(cfg), out, where, complete=False)
    check_weights(out, where)
    _reparametrise(cfg, out, options)
    return cfg, out


def _renamed(state: dict[Any, Any], where: str) -> dict[str, torch.Tensor]:
    """The tensors of a TransformerLens state dict under circuitry's names, buffers dropped."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ModelLoadError(f"{where}: entry {key!r} is a {type(value).__name__}, not a named tensor")
        if key.endswith(BUFFERS):
            continue
        for old in ("_W_K", "_W_V", "_b_K", "_b_V"):
            if key.endswith(".attn." + old):
                key = key[: -len(old)] + old[1:]
        if not value.is_floating_point():
            raise ModelLoadError(f"{where}: tensor {key} has dtype {str(value.dtype).removeprefix('torch.')}; "
                                 f"weights must be real floating-point numbers")
        out[key] = value.detach().to(torch.float32)
    return out


def _reparametrise(cfg: ModelConfig, out: dict[str, torch.Tensor], options: dict[str, Any]) -> None:
    """GPT-J rotary pairs, layer-scaled attention and the gated MLP's b_in, in place."""
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


def _read_weights(file: Path) -> dict[Any, Any]:
    """The state dict in a safetensors or torch file (torch files without code: weights_only)."""
    if file.suffix == ".safetensors":
        return read_safetensors(file)
    obj = read_torch_file(file)
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
    path = expand(rest) if rest else None
    kind = probe(path) if path else None
    if path is None or kind is None:
        raise ModelLoadError(f"tl:{rest}: no such file or directory (expected a directory with a TransformerLens "
                             f"state dict and its config.json)")
    folder = path if kind == "dir" else path.parent
    configs = [folder / n for n in CONFIG_NAMES if probe(folder / n)]
    if not configs:
        raise ModelLoadError(f"tl:{rest}: no {' or '.join(CONFIG_NAMES)} (the TransformerLens config) in {folder}")
    if kind == "file":
        if path.suffix not in WEIGHT_SUFFIXES:
            raise ModelLoadError(f"tl:{rest}: weights must be {', '.join(WEIGHT_SUFFIXES)} files")
        return path, configs[0]
    if probe(path / "model.safetensors"):
        return path / "model.safetensors", configs[0]
    return _only_weights(path, rest), configs[0]


def _only_weights(path: Path, rest: str) -> Path:
    """The one *.safetensors (else the one *.pt / *.pth) file of a directory."""
    try:
        names = sorted(path.iterdir())
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot be listed ({exc.strerror or exc})") from None
    for suffixes in ((".safetensors",), (".pt", ".pth")):
        found = [f for f in names if f.suffix in suffixes]
        if len(found) == 1:
            return found[0]
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
    if not name or not isinstance(name, str):
        return None, f"{folder} has no tokenizer files and the config names no tokenizer_name"
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True, trust_remote_code=False), ""
    except Exception:  # noqa: BLE001 - not cached
        return None, f"tokenizer {name!r} is not in the local Hugging Face cache"


def load_tl(rest: str, device: Any = None, dtype: Any = None) -> HookedTransformer:
    """Load `tl:rest`: the config is checked and the memory the model needs compared with the
    budget before the weights are read."""
    weights, config_file = find_files(rest)
    raw = read_json(config_file)
    cfg, options = tl_config(raw, str(config_file))
    require_memory(cfg, str(config_file), copies=2, extra=weights.stat().st_size)
    cfg, state = tl_state(cfg, _read_weights(weights), options, str(weights))
    tokenizer, why = _tokenizer(config_file.parent, raw.get("tokenizer_name"))
    return finish(cfg, state, str(weights), tokenizer, why, dtype, device)


def finish(cfg: ModelConfig, state: dict[str, torch.Tensor], where: str, tokenizer: Any, why: str,
           dtype: Any = None, device: Any = None) -> HookedTransformer:
    """The canonical model of a converted (config, state) (checked already), carrying its tokenizer, whose
    BOS token becomes the model's."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if isinstance(bos, int) and 0 <= bos < cfg.d_vocab:
        cfg = ModelConfig(**{**cfg.to_dict(), "bos_token_id": bos})
    model = build_model(cfg, state, where, dtype, device, checked=True)
    model.tokenizer, model.tokenizer_note = tokenizer, why
    model.eval()
    return model
