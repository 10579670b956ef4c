"""The standard detectors: previous_token, duplicate_token, induction, copying, composition."""

from __future__ import annotations

from circuitry import hookimpl
from circuitry.records import Detector
from circuitry_plugins.detectors.attention import (
    duplicate_token,
    induction,
    previous_token,
)
from circuitry_plugins.detectors.composition import composition
from circuitry_plugins.detectors.copying import copying


@hookimpl
def circuitry_detectors():
    return [
        Detector("previous_token", "mean attention from position i to i-1", previous_token),
        Detector("duplicate_token", "attention mass on earlier occurrences of the same token",
                 duplicate_token),
        Detector("induction", "prefix matching: attention from a repeated token to the tokens that "
                              "followed its earlier occurrences", induction),
        Detector("copying", "Σλ/Σ|λ| of the eigenvalues of the full OV circuit W_E W_OV W_U (weights only)",
                 copying, needs_cache=False, value_range=(-1.0, 1.0), threshold=0.7),
        Detector("composition", "Q/K/V composition score of every pair of heads in different layers, "
                                "with the random-matrix baseline (weights only)",
                 composition, kind="pair", needs_cache=False, value_range=(0.0, 1.0)),
    ]
