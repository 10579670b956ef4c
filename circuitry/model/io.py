"""Saving and loading models: safetensors weights plus a JSON config.

A model is stored either as a directory (`config.json` + `model.safetensors`)
or as a single `.safetensors` file whose metadata holds the config (with a
`config.json` beside it as a fallback). Nothing else is loaded: pickles and
other formats are refused with a clear message.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from circuitry.errors import ModelLoadError
from circuitry.fileio import atomic_write, atomic_write_text
from circuitry.model.config import ModelConfig
from circuitry.model.transformer import HookedTransformer

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
META_KEY = "circuitry_config"


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
    return path


def _read_safetensors(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{file}: not a readable safetensors file ({exc})") from None


def load_model_file(path: str | Path, device: str | torch.device | None = None) -> HookedTransformer:
    """Load a model saved by `save_model` (a directory or a .safetensors file)."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"no such model file or directory: {path}")
    if path.is_dir():
        weights, config_file = path / WEIGHTS, path / CONFIG
        if not weights.exists():
            raise ModelLoadError(f"{path}: directory has no {WEIGHTS}")
    else:
        if path.suffix != ".safetensors":
            raise ModelLoadError(
                f"{path}: only safetensors checkpoints are loaded (a .safetensors file or a directory "
                f"with {WEIGHTS} and {CONFIG}); convert other formats first")
        weights, config_file = path, path.parent / CONFIG
    state, meta = _read_safetensors(weights)
    if META_KEY in meta and not path.is_dir():
        cfg = ModelConfig.from_json(meta[META_KEY], where=f"{weights} (metadata)")
    elif config_file.exists():
        cfg = ModelConfig.from_json(config_file.read_text(), where=str(config_file))
    elif META_KEY in meta:
        cfg = ModelConfig.from_json(meta[META_KEY], where=f"{weights} (metadata)")
    else:
        raise ModelLoadError(f"{weights}: no {CONFIG} beside it and no config in its metadata")
    model = HookedTransformer(cfg, seed=None)
    load_state(model, state, where=str(weights))
    model.source = str(path)
    return model.to(device) if device else model


def load_state(model: HookedTransformer, state: dict[str, torch.Tensor], where: str) -> None:
    """Load a state dict with a one-line error for missing, unexpected or misshapen tensors."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:4]}{' ...' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}")
        raise ModelLoadError(f"{where}: weights do not match the config: {'; '.join(parts)}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ModelLoadError(f"{where}: tensor {k} has shape {tuple(v.shape)}, config expects {tuple(own[k].shape)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors metadata of a model file or directory."""
    path = Path(path)
    weights = path / WEIGHTS if path.is_dir() else path
    return _read_safetensors(weights)[1] if weights.exists() else {}


def metadata_json(path: str | Path, key: str) -> dict | None:
    raw = read_metadata(path).get(key)
    return json.loads(raw) if raw else None
