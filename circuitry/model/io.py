"""Saving and loading models: safetensors weights plus a JSON config.

A model is stored either as a directory (`config.json` + `model.safetensors`)
or as a single `.safetensors` file whose metadata holds the config (with a
`config.json` beside it as a fallback). Nothing else is loaded: pickles and
other formats are refused with a clear message. A directory may also hold
the model's word tokenizer (`tokenizer.json` in circuitry's own format,
`circuitry.wordtok`): it is loaded as `model.tokenizer`, and `save_model`
writes it when the model carries one.

Files come from anywhere, so the readers here are shared by every model
source: paths are probed without exceptions escaping, configs are read as
small UTF-8 JSON files, safetensors headers are checked before any tensor is
read, torch files are read with `weights_only` (a pickle that would import
anything is refused, naming the import), the memory a model needs is compared
with the budget before it is built, and weights must be finite floats. Every
problem is one line that names the file.
"""

from __future__ import annotations

import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from circuitry.budget import require
from circuitry.errors import ModelLoadError, UsageError
from circuitry.fileio import atomic_write, atomic_write_text, path_kind
from circuitry.model.config import ModelConfig, parse_json
from circuitry.model.transformer import HookedTransformer
from circuitry.wordtok import WordTokenizer, is_word_tokenizer

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
META_KEY = "circuitry_config"
MAX_CONFIG_BYTES = 16 * 2**20
SAFE_GLOBALS = {"collections.OrderedDict", "_codecs.encode", "builtins.set", "builtins.frozenset",
                "builtins.bytearray", "builtins.slice", "builtins.complex"}
PICKLES = "torch files are read with weights_only=True: plain tensors and containers only, never code"


def _state(model: HookedTransformer) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def save_model(model: HookedTransformer, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Save to a directory, or to one `.safetensors` file when the path ends so."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {META_KEY: model.cfg.to_json(), **(metadata or {})}
    if path.suffix == ".safetensors":
        atomic_write(path, lambda tmp: save_file(_state(model), tmp, metadata=meta))
        return path
    atomic_write(path / WEIGHTS, lambda tmp: save_file(_state(model), tmp, metadata=meta))
    atomic_write_text(path / CONFIG, model.cfg.to_json() + "\n")
    if isinstance(model.tokenizer, WordTokenizer):
        atomic_write_text(path / TOKENIZER, model.tokenizer.to_json())
    return path


def probe(path: Path) -> str | None:
    """`circuitry.fileio.path_kind`, with its error as a ModelLoadError."""
    try:
        return path_kind(path)
    except UsageError as exc:
        raise ModelLoadError(str(exc)) from None


def _short(path: Path | str, limit: int = 120) -> str:
    text = str(path)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def expand(ref: str) -> Path:
    """`ref` as a path with ~ expanded; a ModelLoadError when the home directory is unknown."""
    try:
        return Path(ref).expanduser()
    except RuntimeError as exc:
        raise ModelLoadError(f"{_short(ref)}: not a usable path ({exc})") from None


def read_text_file(path: Path, max_bytes: int = MAX_CONFIG_BYTES) -> str:
    """The UTF-8 text of a small file (a config), or a one-line ModelLoadError naming it."""
    kind = probe(path)
    if kind is None:
        raise ModelLoadError(f"{path}: no such file")
    if kind == "dir":
        raise ModelLoadError(f"{path}: is a directory, expected a file")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ModelLoadError(f"{path}: {size:,} bytes is too large for a config file (at most {max_bytes:,})")
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def read_json(path: Path) -> Any:
    """The JSON value of a small file, or a one-line ModelLoadError naming it."""
    return parse_json(read_text_file(path), str(path))


def _open_safetensors(file: Path, read: Callable[[Any], Any]) -> Any:
    from safetensors import SafetensorError, safe_open

    kind = probe(file)
    if kind != "file":
        raise ModelLoadError(f"{file}: {'is a directory' if kind else 'no such file'}, expected a safetensors file")
    try:
        with safe_open(str(file), framework="pt") as f:
            return read(f)
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{file}: not a readable safetensors file ({first})") from None


def safetensors_metadata(file: Path) -> dict[str, str]:
    """The metadata of a safetensors file, from its header alone (the header is checked:
    offsets, shapes and dtypes must describe the file exactly)."""
    return _open_safetensors(file, lambda f: f.metadata() or {})


def read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, or a one-line ModelLoadError naming it."""
    return _open_safetensors(file, _all_tensors)


def _all_tensors(f: Any) -> dict[str, torch.Tensor]:
    names = list(f.keys())
    return {k: f.get_tensor(k) for k in names}


def _pickle_bytes(file: Path) -> bytes:
    """The pickle of a torch file: the data.pkl of a zip archive, else the whole file."""
    if zipfile.is_zipfile(file):
        with zipfile.ZipFile(file) as z:
            names = [n for n in z.namelist() if n.endswith("data.pkl")]
            return z.read(names[0]) if names else b""
    return file.read_bytes()


def foreign_import(file: Path) -> str | None:
    """The first import of a pickle that is not torch's own (`posix.system`), found by reading
    its opcodes (nothing is executed); None when there is none or the file cannot be read."""
    try:
        ops = list(pickletools.genops(_pickle_bytes(file)))
    except Exception:  # noqa: BLE001 - a truncated or malformed pickle: no name to report
        return None
    pushed: list[str | None] = []  # what each op pushed: a string, or None for anything else
    memo: dict[Any, str | None] = {}
    for op, arg, _ in ops:
        if op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
            memo[len(memo) if op.name == "MEMOIZE" else arg] = pushed[-1] if pushed else None
            continue
        name = None
        if op.name == "GLOBAL":
            name = str(arg).replace(" ", ".", 1)
        elif op.name == "STACK_GLOBAL" and len(pushed) >= 2 and None not in pushed[-2:]:
            name = f"{pushed[-2]}.{pushed[-1]}"
        if name and not (name.startswith("torch.") or name in SAFE_GLOBALS):
            return name
        is_string = "UNICODE" in op.name or "STRING" in op.name
        pushed.append(arg if is_string else memo.get(arg) if op.name.endswith("GET") else None)
    return None


def _pickle_problem(exc: Exception, file: Path) -> str:
    """A short reason from torch's weights_only error (without its advice text)."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    name = found.group(1) if found else None
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        name = name or foreign_import(file)
        if name:
            return f"refused: the pickle would import {name} ({PICKLES})"
        return f"refused: the pickle holds more than tensors ({PICKLES})"
    first = text.strip().splitlines()[0] if text.strip() else "the file ends early"
    return f"not a readable torch checkpoint ({type(exc).__name__}: {first})"


def read_torch_file(file: Path) -> Any:
    """A torch checkpoint read with `torch.load(weights_only=True)` (never code), memory-mapped
    when it is a zip archive; a one-line ModelLoadError otherwise."""
    kind = probe(file)
    if kind != "file":
        raise ModelLoadError(f"{file}: {'is a directory' if kind else 'no such file'}, expected a torch checkpoint")
    try:
        mapped = zipfile.is_zipfile(file)
        if not mapped:
            require(2 * file.stat().st_size, f"{file}: reading this checkpoint")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(file, map_location="cpu", weights_only=True, mmap=mapped)
    except ModelLoadError:
        raise
    except UsageError as exc:
        raise ModelLoadError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad pickles
        raise ModelLoadError(f"{file}: {_pickle_problem(exc, file)}") from None


def require_memory(cfg: ModelConfig, where: str, copies: int = 2, extra: int = 0, bytes_per_param: int = 4) -> None:
    """A ModelLoadError (exit 2) before anything is allocated when loading the model of `cfg`
    (`copies` copies of its weights, plus `extra` bytes) would exceed the memory budget."""
    try:
        require(cfg.memory_estimate(copies, bytes_per_param) + extra,
                f"{where}: a model of {cfg.n_params_estimate():,} parameters")
    except UsageError as exc:
        raise ModelLoadError(str(exc)) from None


def _config_of(weights: Path, config_file: Path, single: bool) -> tuple[ModelConfig, str]:
    """(config, where it came from) of a checkpoint: a single file's metadata first, else the
    config.json beside it."""
    meta = safetensors_metadata(weights)
    in_meta = f"{weights} (metadata)"
    if META_KEY in meta and single:
        return ModelConfig.from_json(meta[META_KEY], where=in_meta), in_meta
    if probe(config_file):
        raw = read_json(config_file)
        if isinstance(raw, dict) and "model_type" in raw:
            raise ModelLoadError(f"{config_file}: this is a Hugging Face config; load the directory with hf:PATH")
        return ModelConfig.from_dict(raw, where=str(config_file)), str(config_file)
    if META_KEY in meta:
        return ModelConfig.from_json(meta[META_KEY], where=in_meta), in_meta
    raise ModelLoadError(f"{weights}: no {CONFIG} beside it and no config in its metadata")


def load_model_file(path: str | Path, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None) -> HookedTransformer:
    """Load a model saved by `save_model` (a directory or a .safetensors file).

    The config is read and checked, and the memory the model needs is compared with the
    budget, before any weight is read or any tensor allocated."""
    path = Path(path)
    kind = probe(path)
    if kind is None:
        raise ModelLoadError(f"no such model file or directory: {_short(path)}")
    if kind == "dir":
        weights, config_file = path / WEIGHTS, path / CONFIG
        if probe(weights) is None:
            raise ModelLoadError(f"{path}: directory has no {WEIGHTS}")
    else:
        if path.suffix != ".safetensors":
            raise ModelLoadError(
                f"{path}: only safetensors checkpoints are loaded (a .safetensors file or a directory "
                f"with {WEIGHTS} and {CONFIG}); convert other formats first")
        weights, config_file = path, path.parent / CONFIG
    cfg, origin = _config_of(weights, config_file, single=kind == "file")
    require_memory(cfg, origin, copies=1, extra=weights.stat().st_size)
    model = build_model(cfg, read_safetensors(weights), str(weights), dtype, device)
    model.source = str(path)
    if kind == "dir":
        tokenizer: Any = word_tokenizer(path / TOKENIZER, cfg)  # the model's attribute is typed for HF's too
        model.tokenizer = tokenizer
        if tokenizer is None:
            model.tokenizer_note = f"{path} has no {TOKENIZER} in circuitry's word-tokenizer format"
    return model


def word_tokenizer(file: Path, cfg: ModelConfig) -> WordTokenizer | None:
    """The word tokenizer in `file` (None when there is no such file, or it is another format, such
    as a Hugging Face tokenizer.json); a ModelLoadError when its ids do not fit the model."""
    if probe(file) != "file":
        return None
    raw = read_json(file)
    if not is_word_tokenizer(raw):
        return None
    tok = WordTokenizer.from_dict(raw, str(file))
    if tok.vocab_size > cfg.d_vocab:
        raise ModelLoadError(f"{file}: the tokenizer has {tok.vocab_size} tokens, more than the model's "
                             f"vocabulary of {cfg.d_vocab}")
    if cfg.bos_token_id is not None and cfg.bos_token_id != tok.bos_token_id:
        raise ModelLoadError(f"{file}: the tokenizer's BOS token is id {tok.bos_token_id}, the model's config "
                             f"says {cfg.bos_token_id}")
    return tok


def check_weights(state: dict[str, torch.Tensor], where: str) -> None:
    """A ModelLoadError naming the first tensor that is not real floating point or holds NaN or inf."""
    for k, v in state.items():
        if not v.is_floating_point():
            raise ModelLoadError(f"{where}: tensor {k} has dtype {str(v.dtype).removeprefix('torch.')}; "
                                 f"weights must be real floating-point numbers")
        # NaN and inf show in the minimum or the maximum (one fast pass, no temporary the size of the tensor)
        if v.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(v))).all()):
            bad = "NaN" if bool(torch.isnan(v).any()) else "infinite"
            raise ModelLoadError(f"{where}: tensor {k} holds {bad} values")


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of a model of `cfg`, from a model built on the meta device
    (no memory is allocated)."""
    with torch.device("meta"):
        model = HookedTransformer(cfg, seed=None)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_shapes(expected: dict[str, tuple[int, ...]], state: dict[str, torch.Tensor], where: str,
                 complete: bool = True) -> None:
    """A one-line ModelLoadError for misshapen tensors, and (when `complete`) for missing or
    unexpected ones."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if complete and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:4]}{' ...' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}")
        raise ModelLoadError(f"{where}: weights do not match the config: {'; '.join(parts)}")
    for k, v in state.items():
        if k in expected and tuple(v.shape) != expected[k]:
            raise ModelLoadError(f"{where}: tensor {k} has shape {tuple(v.shape)}, config expects {expected[k]}")


def build_model(cfg: ModelConfig, state: dict[str, torch.Tensor], where: str, dtype: torch.dtype | None = None,
                device: str | torch.device | None = None, checked: bool = False) -> HookedTransformer:
    """A model of `cfg` whose parameters are the tensors of `state`, each converted to `dtype` (float32 by
    default) and moved to `device` one at a time, so the weights are never held twice; a one-line error for
    missing, unexpected or misshapen tensors, and (unless the caller `checked` them already) for non-float
    or non-finite ones. `state` is emptied."""
    model = HookedTransformer(cfg, seed=None, device="meta")
    check_shapes({k: tuple(v.shape) for k, v in model.state_dict().items()}, state, where)
    if not checked:
        check_weights(state, where)
    dtype, device = dtype or torch.float32, torch.device(device or "cpu")
    params: dict[str, torch.Tensor] = {}
    for k in list(state):
        params[k] = state.pop(k).to(device=device, dtype=dtype)
    model.load_state_dict(params, strict=True, assign=True)
    return model


def read_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors metadata of a model file or directory (from the header alone)."""
    path = Path(path)
    weights = path / WEIGHTS if probe(path) == "dir" else path
    return safetensors_metadata(weights) if probe(weights) else {}


def metadata_json(path: str | Path, key: str) -> dict | None:
    raw = read_metadata(path).get(key)
    return parse_json(raw, f"{path} (metadata {key})") if raw else None
