"""Circuit specs: YAML loading with marks, the v1 schema, expectations."""

from circuitry.spec.expect import Expectation, parse_expectation
from circuitry.spec.format import API_VERSION, Check, CircuitSpec, Edge, json_schema, load_spec
from circuitry.spec.loader import Mark, SpecError

__all__ = ["API_VERSION", "Check", "CircuitSpec", "Edge", "Expectation", "Mark", "SpecError",
           "json_schema", "load_spec", "parse_expectation"]
