"""Model references -> canonical models, through the model-source plugins.

A reference is `SCHEME:REST` (`builtin:attn-only-2l`, `hf:gpt2`) or a path,
which goes to the source with scheme "file".
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from circuitry.errors import ModelLoadError, UsageError, did_you_mean, unknown_name
from circuitry.heap import bound_heap
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


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}


def check_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """The torch dtype a name stands for (float32, bfloat16, float16), or a UsageError with the choices."""
    if dtype is None or isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    name = str(dtype).removeprefix("torch.")
    name = _DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise UsageError(unknown_name("dtype", str(dtype), DTYPES))
    return DTYPES[name]


def _accepts_dtype(load: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(load).parameters
    except (TypeError, ValueError):
        return False
    return "dtype" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _bare_name_hint(ref: str, sources: Any) -> str:
    """' (did you mean 'builtin:attn-only-2l'?); a model reference is ...' for a reference with no scheme that
    names no file: the models the sources list (`ModelSource.names`) and the valid schemes."""
    named: dict[str, str] = {}  # name -> SCHEME:name
    for source in sources.values():
        try:
            names = list(source.names())
        except Exception:  # noqa: BLE001 - a listing that fails only loses its suggestions
            names = []
        for name in names:
            named.setdefault(str(name), f"{source.scheme}:{name}")
    hint = f" (did you mean {named[ref]!r}?)" if ref in named else did_you_mean(ref, named.values())
    return (f"{hint}; a model reference is a path or SCHEME:NAME, SCHEME one of {', '.join(sorted(sources))} "
            f"(`circuitry models` lists the shipped models)")


def load_model(ref: str, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None, device_map: str | dict | None = None) -> HookedTransformer:
    """Load a model through the source plugin named by the reference's scheme (after checking
    that the device exists here and the dtype is one circuitry runs in: float32, the default,
    bfloat16 or float16). A source that takes no `dtype` loads in its own and is converted after.
    device_map: "auto" or layer ranges ("cuda:0=0-11,cuda:1=12-23"): the blocks spread over several
    devices (`circuitry.model.placement`, needs accelerate)."""
    from circuitry.plugins import get_manager

    check_device(device)
    torch_dtype = check_dtype(dtype)
    bound_heap()  # freed buffers of the load go back to the system
    if device_map is not None and device is not None:
        raise UsageError("give --device or --device-map, not both")
    scheme, rest = split_ref(ref)
    sources = get_manager().model_sources()
    if scheme not in sources:
        if "file" in sources and _is_path(ref):
            scheme, rest = "file", ref
        else:
            raise ModelLoadError(unknown_name("model source", scheme, sources)
                                 + " (is the plugin that provides it installed?)")
    load = sources[scheme].load
    try:
        if _accepts_dtype(load):
            model = load(rest, device, dtype=torch_dtype)
        else:
            model = load(rest, device)
            if torch_dtype is not None:
                model.to(torch_dtype)
    except ModelLoadError as exc:
        if scheme == "file" and rest == ref and not _is_path(ref):  # a bare name, not a path: say what refs are
            raise ModelLoadError(f"{exc}{_bare_name_hint(ref, sources)}") from None
        raise
    if model.source is None or scheme != "file":
        model.source = ref
    if device_map is not None:
        from circuitry.model.placement import place

        model = place(model, device_map)
    return model
