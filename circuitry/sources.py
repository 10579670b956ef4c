"""Model references -> canonical models: `builtin:NAME` and paths to safetensors checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch

from circuitry.errors import ModelLoadError, unknown_name
from circuitry.model import HookedTransformer, load_model_file

BUILTIN_DIR = Path(__file__).parent / "builtin"


def builtin_models() -> dict[str, Path]:
    """Shipped models by name (each a directory with model.safetensors and config.json)."""
    return {p.name: p for p in sorted(BUILTIN_DIR.iterdir()) if (p / "model.safetensors").exists()}


def load_model(ref: str, device: str | torch.device | None = None) -> HookedTransformer:
    """Load `builtin:NAME` or a path (directory or .safetensors file)."""
    if ref.startswith("builtin:"):
        name = ref.split(":", 1)[1]
        models = builtin_models()
        if name not in models:
            raise ModelLoadError(unknown_name("builtin model", name, models))
        model = load_model_file(models[name], device=device)
        model.source = ref
        return model
    if ":" in ref.split("/")[0] and not Path(ref).exists():
        scheme = ref.split(":", 1)[0]
        raise ModelLoadError(unknown_name("model source", scheme, ["builtin"]) + " (or give a path)")
    return load_model_file(ref, device=device)
