"""Models already in memory -> the canonical model: a transformers model (`from_hf`) or a TransformerLens
HookedTransformer (`from_transformer_lens`).

The conversions are the `hf:` and `tl:` model sources' own (`circuitry_plugins.hf`, `circuitry_plugins.tl`),
applied to the model's parameters instead of files: the same configs are read, the same tensors renamed
and reparametrised, the same checks made. Tensors whose layout is already canonical are shared with the
source model (not copied) when the dtype and device agree, so an in-place change to one shows in the other.
The built-in plugins ship with circuitry; this module reaches them by import (the one place the core does),
because an in-memory model has no reference for the plugin manager to resolve.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from circuitry.errors import UsageError

if TYPE_CHECKING:
    from circuitry.model import HookedTransformer



def from_hf(model: Any, tokenizer: Any = None, *, dtype: Any = None, device: Any = None) -> HookedTransformer:
    """A transformers causal-LM model (GPT-2, GPT-NeoX, Llama, Mistral, Qwen, Gemma ...; `circuitry info`
    lists them) as a circuitry model, carrying `tokenizer` when given. dtype: float32 (the default),
    bfloat16 or float16; device: where the weights go (default cpu)."""
    from circuitry.sources import check_device, check_dtype

    if not hasattr(getattr(model, "config", None), "model_type") or not hasattr(model, "named_parameters"):
        raise UsageError(f"from_hf takes a transformers model (with .config.model_type), got {type(model).__name__}")
    check_device(device)
    torch_dtype = check_dtype(dtype)
    try:
        from circuitry_plugins.hf.source import convert_hf_model
    except ImportError as exc:
        raise UsageError(f"from_hf needs the built-in hf plugin (circuitry_plugins.hf): {exc}") from None
    return convert_hf_model(model, tokenizer=tokenizer, dtype=torch_dtype, device=device)


def from_transformer_lens(model: Any, *, dtype: Any = None, device: Any = None) -> HookedTransformer:
    """A TransformerLens HookedTransformer (its `cfg` and `state_dict()`) as a circuitry model, with its
    tokenizer (`circuitry_plugins.tl.convert_tl_model`). Config fields that change the forward pass in ways
    circuitry's model lacks are refused by name, as `tl:` checkpoints are. dtype: float32 (the default),
    bfloat16 or float16; device: default cpu."""
    from circuitry.sources import check_device, check_dtype

    if not hasattr(getattr(model, "cfg", None), "to_dict") or not hasattr(model, "state_dict"):
        raise UsageError(f"from_transformer_lens takes a TransformerLens HookedTransformer (with .cfg.to_dict() "
                         f"and .state_dict()), got {type(model).__name__}")
    check_device(device)
    torch_dtype = check_dtype(dtype)
    try:
        from circuitry_plugins.tl import convert_tl_model
    except ImportError as exc:
        raise UsageError(f"from_transformer_lens needs the built-in tl plugin (circuitry_plugins.tl): {exc}") from None
    return convert_tl_model(model, dtype=torch_dtype, device=device)
