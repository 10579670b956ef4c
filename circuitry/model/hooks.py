"""Hook points and the activation cache.

A `HookPoint` is an identity module placed wherever an activation can be read
or replaced. A hook is a function `fn(activation, hook) -> activation | None`;
returning a tensor replaces the activation. With no hook attached a hook point
costs one attribute check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn

HookFn = Callable[[torch.Tensor, "HookPoint"], "torch.Tensor | None"]


class HookPoint(nn.Module):
    """An identity function with hooks; `name` is its TransformerLens-style name."""

    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""
        self.fns: list[HookFn] = []

    @property
    def active(self) -> bool:
        return bool(self.fns)

    def layer(self) -> int | None:
        parts = self.name.split(".")
        return int(parts[1]) if len(parts) > 1 and parts[0] == "blocks" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for fn in self.fns:
            out = fn(x, self)
            if out is not None:
                x = out
        return x

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r})"


_SHORT = {
    "q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v", "z": "attn.hook_z",
    "pattern": "attn.hook_pattern", "attn_scores": "attn.hook_attn_scores",
    "q_input": "attn.hook_q_input", "k_input": "attn.hook_k_input", "v_input": "attn.hook_v_input",
    "resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out",
    "mlp_pre": "mlp.hook_pre", "mlp_post": "mlp.hook_post",
    "scale1": "ln1.hook_scale", "scale2": "ln2.hook_scale",
}


def act_name(short: str, layer: int | None = None) -> str:
    """Full hook name from a short one: act_name("pattern", 1) -> "blocks.1.attn.hook_pattern"."""
    if layer is None:
        return {"embed": "hook_embed", "pos_embed": "hook_pos_embed",
                "scale": "ln_final.hook_scale"}.get(short, short)
    return f"blocks.{layer}.{_SHORT.get(short, short)}"


class ActivationCache(Mapping[str, torch.Tensor]):
    """Activations of one run by hook name; `cache["pattern", 1]` is a shorthand."""

    def __init__(self, acts: dict[str, torch.Tensor]) -> None:
        self._acts = acts

    def _key(self, key: str | tuple[str, int]) -> str:
        return act_name(*key) if isinstance(key, tuple) else key

    def __getitem__(self, key: str | tuple[str, int]) -> torch.Tensor:  # type: ignore[override]
        name = self._key(key)
        if name not in self._acts:
            from circuitry.errors import UsageError, did_you_mean

            raise UsageError(f"activation {name!r} is not in the cache{did_you_mean(name, self._acts)}")
        return self._acts[name]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, (str, tuple)) and self._key(key) in self._acts  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[str]:
        return iter(self._acts)

    def __len__(self) -> int:
        return len(self._acts)

    def to(self, device: str | torch.device) -> "ActivationCache":
        return ActivationCache({k: v.to(device) for k, v in self._acts.items()})

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} activations)"
