"""Model references -> canonical models, through the model-source plugins.

A reference is `SCHEME:REST` (`builtin:attn-only-2l`, `hf:gpt2`) or a path,
which goes to the source with scheme "file".
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from circuitry.errors import ModelLoadError, unknown_name
from circuitry.model import HookedTransformer

BUILTIN_DIR = Path(__file__).parent / "builtin"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9_+.-]*):(?!//)(.*)$")


def builtin_models() -> dict[str, Path]:
    """Models shipped inside the package, by name (directories with model.safetensors)."""
    return {p.name: p for p in sorted(BUILTIN_DIR.iterdir()) if (p / "model.safetensors").exists()}


def split_ref(ref: str) -> tuple[str, str]:
    """('builtin', 'attn-only-2l') for 'builtin:attn-only-2l'; ('file', ref) for a path."""
    m = _SCHEME.match(ref)
    if m and not (len(m.group(1)) == 1 and Path(ref).exists()):  # not a Windows drive letter
        return m.group(1), m.group(2)
    return "file", ref


def load_model(ref: str, device: str | torch.device | None = None) -> HookedTransformer:
    """Load a model through the source plugin named by the reference's scheme."""
    from circuitry.plugins import get_manager

    scheme, rest = split_ref(ref)
    sources = get_manager().model_sources()
    if scheme not in sources:
        if Path(ref).exists() and "file" in sources:
            scheme, rest = "file", ref
        else:
            raise ModelLoadError(unknown_name("model source", scheme, sources)
                                 + " (is the plugin that provides it installed?)")
    model = sources[scheme].load(rest, device)
    if model.source is None or scheme != "file":
        model.source = ref
    return model
