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

import json
import os
import re
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from circuitry.errors import ModelLoadError
from circuitry.model import HookedTransformer
from circuitry.model.io import load_state
from circuitry_plugins.hf import conversions

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
    path = Path(rest).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"hf:{rest}: expected a directory written by save_pretrained, got a file")
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
        yield
    finally:
        log.set_verbosity(level)
        if bars:
            log.enable_progress_bar()


def _dtype_kwarg(transformers: Any) -> str:
    major, minor = (int(x) for x in re.findall(r"\d+", transformers.__version__)[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def read_model_type(directory: Path, ref: str) -> str:
    config_file = directory / "config.json"
    if not config_file.exists():
        raise ModelLoadError(f"{ref}: {directory} has no config.json (not a save_pretrained directory)")
    try:
        raw = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{config_file}: not valid JSON ({exc})") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if not model_type:
        raise ModelLoadError(f"{config_file}: no model_type")
    if model_type not in conversions.CONVERSIONS:  # before transformers sees it
        conversions.convert(model_type, None, {})
    return model_type


def load_hf(rest: str, device: Any = None) -> HookedTransformer:
    """Load `hf:rest` into the canonical model (on `device` when given)."""
    import torch

    transformers = require_transformers()
    ref = f"hf:{rest}"
    directory = resolve(rest)
    model_type = read_model_type(directory, ref)
    kwargs = {_dtype_kwarg(transformers): torch.float32}
    try:
        with _quiet(transformers):
            hf_model, info = transformers.AutoModelForCausalLM.from_pretrained(
                str(directory), local_files_only=True, trust_remote_code=False, attn_implementation="eager",
                output_loading_info=True, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"{ref}: transformers could not load {directory} ({type(exc).__name__}: "
                             f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from None
    params = dict(hf_model.named_parameters(remove_duplicate=False))
    tied_out = {k for k, v in params.items() if v is hf_model.get_input_embeddings().weight}
    missing = [k for k in info.get("missing_keys", ()) if k not in tied_out]
    if missing:
        raise ModelLoadError(f"{ref}: the checkpoint lacks weights {sorted(missing)[:4]} (a base model without "
                             f"its language-model head?)")
    cfg, state = conversions.convert(model_type, hf_model.config, params)
    del hf_model, params
    tokenizer, why = load_tokenizer(directory)
    bos = getattr(tokenizer, "bos_token_id", None)
    changes: dict[str, Any] = {"name": rest}
    if isinstance(bos, int) and 0 <= bos < cfg.d_vocab:
        changes["bos_token_id"] = bos
    cfg = type(cfg)(**{**cfg.to_dict(), **changes})
    model = HookedTransformer(cfg, seed=None)
    load_state(model, state, where=ref)
    model.tokenizer = tokenizer
    model.tokenizer_note = why
    model.eval()
    return model.to(device) if device else model
