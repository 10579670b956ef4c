"""`convert_tl_model`: a TransformerLens HookedTransformer in memory -> the canonical model.

The TransformerLens config (`model.cfg.to_dict()`) and state dict go through the same checks and
conversion as a `tl:` checkpoint (`source.tl_config`, `source.tl_state`); tensors are shared with the
TransformerLens model, not copied, when they are float32 and stay on their device. The tokenizer comes
along, and `cfg.use_attn_result` becomes `set_use_attn_result`.
"""

from __future__ import annotations

from typing import Any

from circuitry.errors import ModelLoadError
from circuitry.model import HookedTransformer
from circuitry_plugins.tl.source import finish, tl_config, tl_state


def convert_tl_model(tl_model: Any, dtype: Any = None, device: Any = None) -> HookedTransformer:
    """The canonical model computing what the TransformerLens HookedTransformer `tl_model` computes (its
    logits and activations under the same hook names), in `dtype` (float32 by default) on `device`."""
    kind = type(tl_model).__name__
    if kind == "TransformerBridge":
        raise ModelLoadError("a TransformerLens 4 TransformerBridge wraps a Hugging Face model: convert that with "
                             "circuitry_plugins.hf.source.convert_hf_model(bridge.original_model, bridge.tokenizer)")
    cfg_obj = getattr(tl_model, "cfg", None)
    if not callable(getattr(cfg_obj, "to_dict", None)) or not callable(getattr(tl_model, "state_dict", None)):
        raise ModelLoadError(f"expected a TransformerLens HookedTransformer (with .cfg and .state_dict()), got {kind}")
    raw = cfg_obj.to_dict()  # type: ignore[union-attr]
    where = f"TransformerLens model {raw.get('model_name', 'unnamed')!r}"
    cfg, options = tl_config(raw, where)
    cfg, state = tl_state(cfg, dict(tl_model.state_dict()), options, where)
    tokenizer = getattr(tl_model, "tokenizer", None)
    why = "" if tokenizer is not None else "the TransformerLens model has no tokenizer"
    model = finish(cfg, state, where, tokenizer, why, dtype, device)
    model.set_use_attn_result(bool(raw.get("use_attn_result")))
    return model
