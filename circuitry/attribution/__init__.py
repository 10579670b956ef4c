"""Attribution patching: a score for every node and edge of the residual graph on a contrastive task.

`attribute(model, batch, metric="logit_diff", method="eap-ig", level="edges", steps=5)` ->
`AttributionResult` (edge_scores [n_edges], node_scores [n_senders], per-position node scores).
Methods: `eap` (one clean, one corrupted, one backward pass), `eap-ig` (integrated gradients over
input embeddings interpolated from corrupted to clean), `eap-ig-act` (over receiver inputs
interpolated towards the corrupted run), `exact` (one patch per edge through the sweep engine).
A positive score means the edge helps the metric. Modules: layout.py (senders, receivers, edges in
the order of `ResidualGraph`), gradients.py (the gradient methods and their memory), exact.py,
result.py (`AttributionResult`, correlations), run.py (`attribute`).
"""

from circuitry.attribution.layout import Layout, Receiver
from circuitry.attribution.result import AttributionResult, pearson, spearman, top_overlap
from circuitry.attribution.run import DEFAULT_STEPS, LEVELS, METHODS, attribute, check_method

__all__ = ["attribute", "AttributionResult", "Layout", "Receiver", "METHODS", "LEVELS", "DEFAULT_STEPS",
           "check_method", "pearson", "spearman", "top_overlap"]
