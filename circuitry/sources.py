"""Model references -> canonical models, through the model-source plugins.

A reference is `SCHEME:REST` (`builtin:attn-only-2l`, `hf:gpt2`) or a path,
which goes to the source with scheme "file".
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from circuitry.errors import ModelLoadError, UsageError, unknown_name
from circuitry.model import HookedTransformer
from circuitry.model.io import probe

BUILTIN_DIR = Path(__file__).parent / "builtin"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9_+.-]*):(?!//)(.*)$")


def builtin_models() -> dict[str, Path]:
    """Models shipped inside the package, by name (directories with model.safetensors)."""
    return {p.name: p for p in sorted(BUILTIN_DIR.iterdir()) if (p / "model.safetensors").exists()}


def split_ref(ref: str) -> tuple[str, str]:
    """('builtin', 'attn-only-2l') for 'builtin:attn-only-2l'; ('file', ref) for a path."""
    m = _SCHEME.match(ref)
    if m and not (len(m.group(1)) == 1 and _is_path(ref)):  # not a Windows drive letter
        return m.group(1), m.group(2)
    return "file", ref


def _is_path(ref: str) -> bool:
    """Whether a file or directory of that name exists (False for names no path can have)."""
    try:
        return probe(Path(ref)) is not None
    except ModelLoadError:
        return False


def check_device(device: str | torch.device | None) -> None:
    """A UsageError for a device torch does not know or this machine lacks."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, mps ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {device!r}: CUDA is not available here (use cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"device {device!r}: MPS is not available here (use cpu)")
    elif dev.type != "cpu":
        backend = getattr(torch, dev.type, None)
        available = getattr(backend, "is_available", None)
        if dev.type == "meta" or not (callable(available) and available()):
            raise UsageError(f"device {device!r}: not available here (use cpu)")


def load_model(ref: str, device: str | torch.device | None = None) -> HookedTransformer:
    """Load a model through the source plugin named by the reference's scheme (after checking
    that the device exists here)."""
    from circuitry.plugins import get_manager

    check_device(device)
    scheme, rest = split_ref(ref)
    sources = get_manager().model_sources()
    if scheme not in sources:
        if "file" in sources and _is_path(ref):
            scheme, rest = "file", ref
        else:
            raise ModelLoadError(unknown_name("model source", scheme, sources)
                                 + " (is the plugin that provides it installed?)")
    model = sources[scheme].load(rest, device)
    if model.source is None or scheme != "file":
        model.source = ref
    return model
