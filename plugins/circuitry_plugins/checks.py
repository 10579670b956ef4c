"""Standard check kinds: detector, composition, intervention, faithfulness, decomposition."""

from __future__ import annotations

from circuitry import hookimpl
from circuitry.checks import builtin_kinds


@hookimpl
def circuitry_check_kinds():
    return builtin_kinds()
