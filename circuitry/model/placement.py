"""Spreading a model's blocks over several devices, through Hugging Face accelerate's device-map machinery.

`place(model, device_map)` takes "auto" (accelerate's `infer_auto_device_map`
over the accelerators present, whole blocks kept together) or explicit layer
ranges, "cuda:0=0-11,cuda:1=12-21": the embeddings go with the first range,
the final norm and the unembedding with the last. `dispatch_model` then moves
each block to its device and attaches hooks that move a block's inputs to it,
so forward passes, hook points, caches and interventions see each layer's
activations on that layer's device. The weights stay where they are placed:
offloading to the CPU or to disk (weights loaded at every forward pass) is
refused, because detectors, composition scores and the decomposition read the
weights directly. accelerate is an optional extra (`pip install
'circuitry[devices]'`), imported only here.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch

from circuitry.errors import UsageError

INSTALL_HINT = "--device-map needs accelerate: pip install 'circuitry[devices]'"
_RANGE = re.compile(r"^\s*([^=\s]+)\s*=\s*(\d+)\s*(?:-\s*(\d+))?\s*$")
OFFLOAD = ("disk",)


def _accelerate() -> Any:
    try:
        import accelerate
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return accelerate


def layer_ranges(text: str, n_layers: int) -> dict[str, str]:
    """'cuda:0=0-11,cuda:1=12-21' -> the device map of every module (each layer named exactly once)."""
    owner: dict[int, str] = {}
    for part in text.split(","):
        m = _RANGE.match(part)
        if not m:
            raise UsageError(f"--device-map {text!r}: expected 'auto' or DEVICE=FIRST-LAST ranges separated by "
                             f"commas (e.g. cuda:0=0-11,cuda:1=12-{max(12, n_layers - 1)})")
        device, first = m.group(1), int(m.group(2))
        last = int(m.group(3)) if m.group(3) is not None else first
        if not first <= last < n_layers:
            raise UsageError(f"--device-map: layers {first}-{last} are not within 0-{n_layers - 1}")
        for layer in range(first, last + 1):
            if layer in owner:
                raise UsageError(f"--device-map: layer {layer} is given to {owner[layer]} and to {device}")
            owner[layer] = device
    missing = [l for l in range(n_layers) if l not in owner]
    if missing:
        raise UsageError(f"--device-map: layers {missing[:4]}{' ...' if len(missing) > 4 else ''} have no device")
    first_device, last_device = owner[0], owner[n_layers - 1]
    out = {f"blocks.{l}": owner[l] for l in range(n_layers)}
    return {"embed": first_device, "hook_embed": first_device, "pos_embed": first_device,
            "hook_pos_embed": first_device, **out, "ln_final": last_device, "unembed": last_device}


def device_map_of(model: Any, spec: str | dict[str, Any], max_memory: dict | None = None) -> dict[str, Any]:
    """The device of every top-level module and block of `model` for a --device-map value."""
    from circuitry.sources import check_device

    if isinstance(spec, dict):
        plan = dict(spec)
    elif spec.strip() == "auto":
        accelerate = _accelerate()
        plan = accelerate.infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=["Block"],
                                                dtype=model.dtype)
    else:
        plan = layer_ranges(spec, model.cfg.n_layers)
    present = {name for name, _ in model.named_children()} | {f"blocks.{l}" for l in range(model.cfg.n_layers)}
    plan = {k: v for k, v in plan.items() if k in present or k.split(".")[0] in present}
    for device in set(map(str, plan.values())):
        if device in OFFLOAD:
            raise UsageError(f"--device-map: {device!r} offloads weights, which circuitry does not support "
                             f"(detectors and composition scores read the weights directly); give every "
                             f"layer a device")
        check_device(f"cuda:{device}" if device.isdigit() else device)
    return plan


def place(model: Any, spec: str | dict[str, Any], max_memory: dict | None = None) -> Any:
    """Spread `model` over devices (see the module docstring); returns the model, with `hf_device_map`."""
    accelerate = _accelerate()
    plan = device_map_of(model, spec, max_memory)
    devices = [torch.device(int(d) if str(d).isdigit() else d) for d in plan.values()]
    main = next((d for d in devices if d.type != "cpu"), torch.device("cpu"))
    if main.type != "cpu" and any(d.type == "cpu" for d in devices):
        raise UsageError("--device-map: a mix of accelerators and the CPU would offload the CPU's weights "
                         "(loaded at every pass), which circuitry does not support; put every layer on an "
                         "accelerator, or run on the CPU")
    log = logging.getLogger("accelerate.big_modeling")  # its notice about CPU "offload" when all is on the CPU
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        return accelerate.dispatch_model(model, plan, main_device=str(main), force_hooks=True)
    finally:
        log.setLevel(level)
