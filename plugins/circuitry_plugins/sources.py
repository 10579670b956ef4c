"""Standard model sources: `builtin:NAME` (models shipped in the package) and paths
to safetensors checkpoints (a directory with model.safetensors + config.json,
or a single .safetensors file).

A shipped model saved in Hugging Face format (its config.json has a
`model_type`) is converted through the `hf:` source, which needs the `hf` extra.
"""

from __future__ import annotations

import json

from circuitry import hookimpl
from circuitry.errors import ModelLoadError, unknown_name
from circuitry.model import load_model_file
from circuitry.model.io import probe, read_json
from circuitry.records import ModelSource
from circuitry.sources import builtin_models


def _is_hf_dir(path) -> bool:
    """True when the directory's config.json is a Hugging Face config (has a model_type)."""
    config = path / "config.json"
    if probe(config) != "file":
        return False
    raw = read_json(config)
    return isinstance(raw, dict) and "model_type" in raw


def _load_builtin(name: str, device=None, dtype=None):
    models = builtin_models()
    if name not in models:
        raise ModelLoadError(unknown_name("builtin model", name, models))
    if _is_hf_dir(models[name]):
        from circuitry.sources import load_model

        model = load_model(f"hf:{models[name]}", device=device, dtype=dtype)
    else:
        model = load_model_file(models[name], device=device, dtype=dtype)
    model.trained_positions = _reliable_positions(models[name])
    return model


def _reliable_positions(folder) -> int | None:
    """The positions a shipped model's circuits work in, from its model card (`reliable_positions`)."""
    try:
        value = json.loads((folder / "card.json").read_text(encoding="utf-8")).get("reliable_positions")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _load_file(path: str, device=None, dtype=None):
    return load_model_file(path, device=device, dtype=dtype)


@hookimpl
def circuitry_model_sources():
    return [
        ModelSource("builtin", "models shipped inside circuitry (builtin:NAME)", _load_builtin,
                    names=lambda: list(builtin_models())),
        ModelSource("file", "a safetensors checkpoint: a directory with model.safetensors and config.json, "
                            "or one .safetensors file (PATH or file:PATH)", _load_file),
    ]
