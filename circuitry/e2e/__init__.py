"""End-to-end circuits of attention heads: the QK circuit W_E W_QK W_E^T and the OV circuit W_E W_OV W_U
over the vocabulary, ranked from their low-rank factors (`end_to_end(model, "L0H1")`)."""

from circuitry.e2e.circuits import Diagonal, EndToEnd, OVPair, QKPair, SkipTrigram, end_to_end, parse_head
from circuitry.e2e.positional import Positional

__all__ = ["Diagonal", "EndToEnd", "OVPair", "Positional", "QKPair", "SkipTrigram", "end_to_end", "parse_head"]
