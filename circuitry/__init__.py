"""circuitry: find and verify circuits in transformer language models.

The public names most users need are re-exported here: the canonical model
(`HookedTransformer`, `ModelConfig`), model loading (`load_model`) and the
error types.
"""

__version__ = "0.1.0"

from circuitry.errors import CircuitryError, UsageError  # noqa: E402
from circuitry.model import HookedTransformer, ModelConfig  # noqa: E402
from circuitry.plugins import hookimpl  # noqa: E402


def load_model(ref: str, device: str | None = None, dtype: str | None = None) -> HookedTransformer:
    """Load a model from a reference such as ``builtin:attn-only-2l`` or a path, on `device`, in `dtype`
    (float32, the default, bfloat16 or float16)."""
    from circuitry.sources import load_model as _load

    return _load(ref, device=device, dtype=dtype)


__all__ = [
    "__version__",
    "CircuitryError",
    "UsageError",
    "HookedTransformer",
    "ModelConfig",
    "load_model",
    "hookimpl",
]
