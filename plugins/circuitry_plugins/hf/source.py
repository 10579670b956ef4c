"""The `hf:` model source: a `save_pretrained` directory or a hub name -> canonical model.

`hf:PATH` loads a local directory; `hf:NAME` (or `hf:NAME@REVISION`) a hub
model, from the local Hugging Face cache first. Only when the model is not
cached, HF_HUB_OFFLINE is unset and the hub answers within a few seconds is it
downloaded (safetensors weights, config and tokenizer files only). The model
is loaded by transformers in float32 with eager attention, never with
`trust_remote_code`, converted by `conversions`, and carries its tokenizer as
`model.tokenizer` (None when the directory has none). transformers is imported
here, lazily: without it, loading fails with a one-line install hint.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from circuitry.errors import ModelLoadError
from circuitry.model import HookedTransformer
from circuitry.model.config import show
from circuitry.model.io import (
    build_model,
    check_weights,
    expand,
    probe,
    read_json,
    read_torch_file,
    require_memory,
    safetensors_metadata,
)
from circuitry_plugins.hf import conversions
from circuitry_plugins.hf.shards import CheckpointTensors

INSTALL_HINT = "hf: models need the transformers package: pip install 'circuitry[hf]'"
DOWNLOAD_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
                     "tokenizer*", "vocab*", "merges.txt", "special_tokens_map.json", "added_tokens.json",
                     "*.model", "*.tiktoken"]
TORCH_WEIGHT_PATTERNS = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "vocab.txt")
PROBE_TIMEOUT_S = 3.0
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def require_transformers() -> Any:
    """The transformers module, or a ModelLoadError with the install hint."""
    try:
        import transformers
    except ImportError as exc:
        if getattr(exc, "name", "transformers") in (None, "transformers"):
            raise ModelLoadError(INSTALL_HINT) from None
        raise ModelLoadError(f"hf: transformers failed to import ({exc}); reinstall it: "
                             f"pip install 'circuitry[hf]'") from None
    return transformers


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _endpoint() -> tuple[str, int]:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def _cached(name: str, revision: str | None) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(name, revision=revision, local_files_only=True,
                                      allow_patterns=DOWNLOAD_PATTERNS + TORCH_WEIGHT_PATTERNS))
    except Exception:  # noqa: BLE001 - not cached (the error types differ across huggingface_hub versions)
        return None
    return path if (path / "config.json").exists() else None


def _download(name: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    ref = f"hf:{name}" + (f"@{revision}" if revision else "")
    if _offline():
        raise ModelLoadError(f"{ref}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; download "
                             f"it where the network is available, or pass a save_pretrained directory")
    host, port = _endpoint()
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise ModelLoadError(f"{ref}: not in the local Hugging Face cache and {host} cannot be reached "
                             f"({exc.strerror or exc}); download it where the network is available, or pass "
                             f"a save_pretrained directory") from None
    try:
        path = Path(snapshot_download(name, revision=revision, allow_patterns=DOWNLOAD_PATTERNS, etag_timeout=10))
        if not any(path.glob("*.safetensors")):
            path = Path(snapshot_download(name, revision=revision, allow_patterns=TORCH_WEIGHT_PATTERNS,
                                          etag_timeout=10))
    except Exception as exc:  # noqa: BLE001 - hub errors vary: not found, gated, network
        kind = type(exc).__name__
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if "RepositoryNotFound" in kind or "RevisionNotFound" in kind:
            raise ModelLoadError(f"{ref}: no such model or revision on the hub (private or gated models need "
                                 f"`hf auth login`)") from None
        raise ModelLoadError(f"{ref}: download failed ({kind}: {first})") from None
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{ref}: the hub repository has no config.json (not a transformers model)")
    return path


def resolve(rest: str) -> Path:
    """The local directory that `hf:rest` names: a path, a cached hub model or a download."""
    if not rest:
        raise ModelLoadError("hf: needs a directory written by save_pretrained or a hub name (hf:PATH, hf:NAME)")
    path = expand(rest)
    kind = probe(path)
    if kind == "file":
        raise ModelLoadError(f"hf:{rest}: expected a directory written by save_pretrained, got a file")
    if kind == "dir":
        return path
    name, _, revision = rest.partition("@")
    if rest.startswith((".", "/", "~")) or not _REPO_ID.match(name):
        raise ModelLoadError(f"hf:{rest}: no such directory (and not a hub name such as gpt2 or "
                             f"EleutherAI/pythia-70m)")
    require_transformers()
    return _cached(name, revision or None) or _download(name, revision or None)


def load_tokenizer(directory: Path) -> tuple[Any, str]:
    """(tokenizer or None, why there is none) from the files of a directory."""
    if not any((directory / f).exists() for f in TOKENIZER_FILES):
        return None, f"{directory} has no tokenizer files"
    from transformers import AutoTokenizer

    try:
        with _quiet(sys.modules["transformers"]):
            return AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False), ""
    except Exception as exc:  # noqa: BLE001 - missing optional packages, malformed files ...
        return None, f"the tokenizer in {directory} could not be loaded ({type(exc).__name__}: {exc})"


@contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """No progress bars or warnings from transformers while loading (the CLI owns the terminal)."""
    log = transformers.utils.logging
    bars, level = log.is_progress_bar_enabled(), log.get_verbosity()
    log.disable_progress_bar()
    log.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.set_verbosity(level)
        if bars:
            log.enable_progress_bar()


def read_model_type(directory: Path, ref: str) -> str:
    """The model_type of a save_pretrained directory, after its config.json and weight files
    are checked (before transformers reads any of them)."""
    config_file = directory / "config.json"
    if probe(config_file) is None:
        raise ModelLoadError(f"{ref}: {directory} has no config.json (not a save_pretrained directory)")
    raw = read_json(config_file)
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{config_file}: expected a JSON object, got {type(raw).__name__}")
    if "auto_map" in raw:
        raise ModelLoadError(f"{config_file}: auto_map names custom model code ({show(raw['auto_map'])}); "
                             f"circuitry never runs code from a model directory (trust_remote_code is always off)")
    model_type = raw.get("model_type")
    if not model_type or not isinstance(model_type, str):
        raise ModelLoadError(f"{config_file}: no model_type")
    if model_type not in conversions.CONVERSIONS:  # before transformers sees it
        conversions.convert(model_type, None, {})
    problem = conversions.raw_config_problem(raw)
    if problem:
        raise ModelLoadError(f"{config_file}: {problem}")
    check_weight_files(directory)
    return model_type


def _files(directory: Path, pattern: str) -> list[Path]:
    try:
        return sorted(directory.glob(pattern))
    except OSError as exc:
        raise ModelLoadError(f"{directory}: cannot be listed ({exc.strerror or exc})") from None


def check_weight_files(directory: Path) -> None:
    """Read the headers of the safetensors files, the index files and the generation config;
    with no safetensors, read the torch files with weights_only (a pickle that imports
    anything is refused)."""
    if probe(directory / "generation_config.json"):
        read_json(directory / "generation_config.json")
    safetensors = _files(directory, "*.safetensors")
    for file in safetensors:
        safetensors_metadata(file)
    for file in _files(directory, "*.index.json"):
        index = read_json(file)
        if not isinstance(index, dict) or not isinstance(index.get("weight_map", {}), dict):
            raise ModelLoadError(f"{file}: expected a JSON object with a weight_map")
    if not safetensors:
        for file in _files(directory, "pytorch_model*.bin"):
            read_torch_file(file)


def weights_label(directory: Path) -> str:
    """The weights file of a directory when there is one, else the directory (for messages)."""
    files = _files(directory, "*.safetensors") or _files(directory, "pytorch_model*.bin")
    return str(files[0]) if len(files) == 1 else str(directory)


def load_config(transformers: Any, directory: Path, model_type: str, bytes_per_param: int = 4,
                file_bytes: int = 0) -> Any:
    """The transformers config of a checked directory; the memory the converted model will
    need (one copy, plus the largest weight file while it is read) is compared with the budget
    before any weight is read."""
    config_file = directory / "config.json"
    try:
        with _quiet(transformers):
            config = transformers.AutoConfig.from_pretrained(str(directory), local_files_only=True,
                                                             trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - transformers validates fields with several error types
        raise ModelLoadError(f"{config_file}: transformers refused the config ({_first_line(exc)})") from None
    try:
        planned = conversions.planned_config(model_type, config)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{config_file}: {exc}") from None
    if planned is not None:
        require_memory(planned, str(config_file), copies=1, extra=file_bytes, bytes_per_param=bytes_per_param)
    return config


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = lines[-1] if lines and "Validation error" in lines[0] else (lines[0] if lines else "")
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def load_hf(rest: str, device: Any = None, dtype: Any = None) -> HookedTransformer:
    """Load `hf:rest` into the canonical model, in `dtype` (float32 by default) on `device`. The
    directory's config and weight files are checked, and the memory the model needs compared with the
    budget, before any weight is read; the weights are then read tensor by tensor from the files
    (`shards.CheckpointTensors`) straight into the canonical layout. transformers parses the config
    (its defaults) and the tokenizer; it never builds the model."""
    import torch

    transformers = require_transformers()
    ref = f"hf:{rest}"
    directory = resolve(rest)
    model_type = read_model_type(directory, ref)
    dtype = dtype or torch.float32
    tensors = CheckpointTensors(directory, model_type, dtype)
    config = load_config(transformers, directory, model_type, dtype.itemsize, tensors.largest_file())
    label = weights_label(directory)
    try:
        cfg, state = _convert(model_type, config, tensors, label)
    finally:
        tensors.close()
    return _finish(cfg, state, rest, label, dtype, device, *load_tokenizer(directory))


def convert_hf_model(hf_model: Any, tokenizer: Any = None, dtype: Any = None, device: Any = None) -> HookedTransformer:
    """A transformers causal-LM model already in memory -> the canonical model. Tensors whose layout is
    the same are shared with it, not copied, when the dtype and device agree."""
    model_type = getattr(hf_model.config, "model_type", None)
    if not isinstance(model_type, str):
        raise ModelLoadError("the transformers model's config has no model_type")
    params = dict(hf_model.named_parameters(remove_duplicate=False))
    label = str(getattr(hf_model, "name_or_path", "") or model_type)
    check_weights(params, label)
    cfg, state = _convert(model_type, hf_model.config, params, label)
    why = "" if tokenizer is not None else "no tokenizer was given with the transformers model"
    return _finish(cfg, state, label, label, dtype, device, tokenizer, why)


def _finish(cfg: Any, state: dict, name: str, label: str, dtype: Any, device: Any, tokenizer: Any,
            why: str) -> HookedTransformer:
    """The canonical model of a conversion's (config, state), carrying its tokenizer."""
    bos = getattr(tokenizer, "bos_token_id", None)
    changes: dict[str, Any] = {"name": name}
    if isinstance(bos, int) and 0 <= bos < cfg.d_vocab:
        changes["bos_token_id"] = bos
    cfg = type(cfg)(**{**cfg.to_dict(), **changes})
    model = build_model(cfg, state, label, dtype, device, checked=True)  # checked as the checkpoint was read
    model.tokenizer = tokenizer
    model.tokenizer_note = why
    model.eval()
    return model


def _convert(model_type: str, config: Any, params: Mapping[str, Any], label: str) -> Any:
    """The conversion's (ModelConfig, state); a tensor that does not fit it is a load error."""
    try:
        return conversions.convert(model_type, config, params)
    except ModelLoadError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise ModelLoadError(f"{label}: the weights do not fit the {model_type} conversion "
                             f"({_first_line(exc)})") from None
