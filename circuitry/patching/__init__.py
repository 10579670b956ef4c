"""Activation patching: which activations carry the difference between clean and corrupted prompts.

`activation_patching(model, batch, what, metric, denoise=False, per_position=None, memory_budget=None,
progress=None)` -> `PatchingResult`: one patch per layer (x position) or head (x position), from the
paired run of a `ContrastiveBatch`, batched through the intervention sweep engine.

Modules: grids.py (the `what` kinds and the patches each makes), sweep.py (the sweep), normalise.py (the
normalised effect and when it is refused), labels.py (axis labels), result.py (`PatchingResult`).

The metric: a metric plugin's name, a `Metric` record or fn(logits [batch, pos, d_vocab], batch,
clean_logits=None) -> one number, the one signature of `circuitry.metricfn`.

Example::

    res = activation_patching(model, batch, "heads", "logit_diff", per_position=True)
    res.normalised  # [layer, head, pos]; res.positions: ('0', 'S1', ..., 'END')
"""

from circuitry.patching.grids import HEAD_KINDS, LAYER_KINDS, WHATS, Grid, make_grid
from circuitry.patching.labels import position_labels
from circuitry.patching.normalise import RELATIVE_TOLERANCE, normalise
from circuitry.patching.result import PatchingResult
from circuitry.patching.sweep import activation_patching

__all__ = ["activation_patching", "PatchingResult", "WHATS", "LAYER_KINDS", "HEAD_KINDS", "Grid", "make_grid",
           "position_labels", "normalise", "RELATIVE_TOLERANCE"]
