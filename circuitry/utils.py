"""TransformerLens's `utils` helpers that notebooks use, under the same names: `from circuitry import utils`
in place of `from transformer_lens import utils`.

`get_act_name` is the hook-name resolver of `circuitry.model.hooks` (the one the activation cache's short
keys go through), not a copy.
"""

from __future__ import annotations

import torch

from circuitry.model.hooks import get_act_name

__all__ = ["get_act_name", "to_numpy"]


def to_numpy(tensor: torch.Tensor | list | float | int):  # -> numpy.ndarray
    """A tensor (detached, on the CPU) or a list or number as a numpy array."""
    import numpy as np

    if isinstance(tensor, torch.Tensor):
        return tensor.detach().cpu().numpy()
    return np.asarray(tensor)
