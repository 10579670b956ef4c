"""Circuit specs: YAML loading with marks, the v1 schema, expectations; `Spec` for specs made in Python."""

from circuitry.spec.expect import Expectation, parse_expectation
from circuitry.spec.format import API_VERSION, Check, CircuitSpec, Edge, json_schema, load_spec
from circuitry.spec.loader import Mark, SpecError
from circuitry.spec.pyspec import Spec

__all__ = ["API_VERSION", "Check", "CircuitSpec", "Edge", "Expectation", "Mark", "Spec", "SpecError",
           "json_schema", "load_spec", "parse_expectation"]
