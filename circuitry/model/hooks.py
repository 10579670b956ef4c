"""Hook points, hook names and the activation cache.

A `HookPoint` is an identity module placed wherever an activation can be read
or replaced. A forward hook is a function `fn(activation, hook) -> activation
| None` (`hook` is the hook point: `hook.name`, `hook.layer()`); returning a
tensor replaces the activation. A backward hook `fn(grad, hook) -> grad |
None` sees the gradient of the loss with respect to the activation, and a
returned tensor replaces that gradient. With no hook attached a hook point
costs one attribute check.

`get_act_name` turns TransformerLens's short names ("embed", ("resid_pre", 0),
"k6", ("scale", 1, "ln1")) into hook names; the cache's short keys go through
it, so there is one way names are resolved.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Literal

import torch
from torch import nn

from circuitry.errors import UsageError, did_you_mean

HookFn = Callable[[torch.Tensor, "HookPoint"], "torch.Tensor | None"]
DIRECTIONS = ("fwd", "bwd")


class HookPoint(nn.Module):
    """An identity function with hooks; `name` is its TransformerLens-style name."""

    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""
        self.fns: list[HookFn] = []  # forward hooks, run in order
        self.bwd_fns: list[HookFn] = []  # backward hooks, run in order on the gradient

    @property
    def active(self) -> bool:
        return bool(self.fns or self.bwd_fns)

    def layer(self) -> int | None:
        parts = self.name.split(".")
        return int(parts[1]) if len(parts) > 1 and parts[0] == "blocks" else None

    def add_hook(self, fn: HookFn, dir: Literal["fwd", "bwd"] = "fwd") -> None:  # noqa: A002 - TransformerLens's name
        """Attach `fn` until `remove_hooks` (or the model's `reset_hooks`)."""
        if not callable(fn):
            raise UsageError(f"hook for {self.name!r} must be a function fn(activation, hook), got {type(fn).__name__}")
        self._fns(dir).append(fn)

    def remove_hooks(self, dir: Literal["fwd", "bwd", "both"] = "both") -> None:  # noqa: A002
        for d in DIRECTIONS if dir == "both" else (dir,):
            self._fns(d).clear()

    def _fns(self, dir: str) -> list[HookFn]:  # noqa: A002
        if dir not in DIRECTIONS:
            raise UsageError(f"hook direction must be one of {', '.join(DIRECTIONS)}, got {dir!r}")
        return self.fns if dir == "fwd" else self.bwd_fns

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for fn in self.fns:
            out = fn(x, self)
            if out is not None:
                x = out
        if self.bwd_fns and torch.is_grad_enabled() and x.requires_grad:
            x = x.view_as(x)  # a node of its own: the gradient flowing through this hook point only
            x.register_hook(_BackwardHooks(self, list(self.bwd_fns)))  # the hooks attached at this forward pass
        return x

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r})"


class _BackwardHooks:
    """The backward hooks of one hook point for one forward pass, as a tensor hook."""

    def __init__(self, point: HookPoint, fns: list[HookFn]) -> None:
        self.point, self.fns = point, fns

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        for fn in self.fns:
            out = fn(grad, self.point)
            if out is not None:
                grad = out
        return grad


# ------------------------------------------------------------------ names
_LAYER_TYPES = {"a": "attn", "m": "mlp", "b": "", "block": "", "blocks": "", "attention": "attn"}
_ALIASES = {"attn": "pattern", "attn_logits": "attn_scores", "key": "k", "query": "q", "value": "v",
            "mlp_pre": "pre", "mlp_mid": "mid", "mlp_post": "post"}
# the per-head inputs (q_input ...) sit in `attn` here; TransformerLens puts them in the block
_IN_ATTN = {"k", "v", "q", "z", "rot_k", "rot_q", "result", "pattern", "attn_scores", "q_input", "k_input", "k_smeared",
            "v_input"}
_IN_MLP = {"pre", "post", "mid", "pre_linear"}
_NORM = {"scale", "normalized"}
_SHORT = re.compile(r"([a-z]+)(\d+)([a-z]?.*)")


def get_act_name(name: str, layer: int | str | None = None, layer_type: str | None = None) -> str:
    """A hook name from a short one, as TransformerLens's `utils.get_act_name` does.

    get_act_name("embed") -> "hook_embed"; ("resid_pre", 0) -> "blocks.0.hook_resid_pre";
    ("pattern", 1) or "attn1" -> "blocks.1.attn.hook_pattern"; "k6" -> "blocks.6.attn.hook_k";
    ("scale", 1, "ln1") or "scale1ln1" -> "blocks.1.ln1.hook_scale"; "scale" -> "ln_final.hook_scale";
    ("pre", 2) -> "blocks.2.mlp.hook_pre". A full name (with a dot, or starting "hook_") comes back as it is.
    """
    if not isinstance(name, str) or not name:
        raise UsageError(f"activation name must be a non-empty string, got {name!r}")
    if layer is not None and not (isinstance(layer, str) and layer.isdigit()) and (
            not isinstance(layer, int) or isinstance(layer, bool) or layer < 0):
        raise UsageError(f"layer must be a non-negative integer, got {layer!r}")
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    match = _SHORT.match(name)
    if match is not None:  # "k6", "scale4ln1": name, layer, layer type
        name, layer, layer_type = match.groups()
    name = _ALIASES.get(name, name)
    if name in _IN_ATTN:
        layer_type = "attn"
    elif name in _IN_MLP:
        layer_type = "mlp"
    elif layer_type in _LAYER_TYPES:
        layer_type = _LAYER_TYPES[layer_type]
    full = f"blocks.{int(layer)}." if layer is not None else ""
    full += f"{layer_type}.hook_{name}" if layer_type else f"hook_{name}"
    if name in _NORM and layer is None:
        full = "ln_final." + full
    return full


act_name = get_act_name  # the name this module's resolver had before it followed TransformerLens


class ActivationCache(Mapping[str, torch.Tensor]):
    """Activations of one run by hook name.

    Keys may be short, as in TransformerLens: `cache["embed"]`, `cache["resid_pre", 0]`,
    `cache["pattern", -1]` (the last layer), `cache["scale", 1, "ln1"]` (see `get_act_name`).
    """

    def __init__(self, acts: dict[str, torch.Tensor], n_layers: int | None = None,
                 has_batch_dim: bool = True) -> None:
        self._acts = acts
        self.n_layers = n_layers
        self.has_batch_dim = has_batch_dim

    @property
    def cache_dict(self) -> dict[str, torch.Tensor]:
        return self._acts

    def _key(self, key: object) -> str:
        if isinstance(key, str):
            return key if key in self._acts else get_act_name(key)
        if isinstance(key, tuple) and 1 <= len(key) <= 3 and isinstance(key[0], str):
            name, *rest = key
            layer = rest[0] if rest else None
            if isinstance(layer, int) and not isinstance(layer, bool) and layer < 0 and self.n_layers:
                layer += self.n_layers  # negative layers count from the end, as in TransformerLens
            return get_act_name(name, layer, *rest[1:])
        raise UsageError(f"cache keys are hook names, short names or (name, layer[, layer_type]) tuples, "
                         f"got {key!r}")

    def __getitem__(self, key: str | tuple) -> torch.Tensor:  # type: ignore[override]
        name = self._key(key)
        if name not in self._acts:
            hint = did_you_mean(name, self._acts)
            if isinstance(key, tuple) and len(key) == 2 and key[0] in _NORM:
                short, layer = key
                hint = f" (norms belong to a block: ({short!r}, {layer}, 'ln1') or ({short!r}, {layer}, 'ln2'))"
            raise UsageError(f"activation {name!r} is not in the cache{hint}")
        return self._acts[name]

    def __contains__(self, key: object) -> bool:
        try:
            return self._key(key) in self._acts
        except UsageError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._acts)

    def __len__(self) -> int:
        return len(self._acts)

    def to(self, device: str | torch.device) -> "ActivationCache":
        return ActivationCache({k: v.to(device) for k, v in self._acts.items()}, self.n_layers, self.has_batch_dim)

    def remove_batch_dim(self) -> "ActivationCache":
        """Drop the batch dimension of every activation of a one-prompt run (in place, as TransformerLens)."""
        if not self.has_batch_dim:
            return self
        sizes = {int(v.shape[0]) for v in self._acts.values() if v.ndim}
        if sizes - {1}:
            raise UsageError(f"remove_batch_dim needs a run of one prompt; this cache has batch size "
                             f"{max(sizes)}")
        self._acts = {k: v[0] if v.ndim else v for k, v in self._acts.items()}
        self.has_batch_dim = False
        return self

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} activations)"
