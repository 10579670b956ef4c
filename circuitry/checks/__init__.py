"""Check kinds: one module per kind of claim, registered as plugins, run on one shared run.

`detector`, `composition`, `intervention`, `faithfulness`, `decomposition`
and `metric` are the built-in kinds (registered by the standard plugin `checks` through
`circuitry_check_kinds`, as a third-party kind would be). Each is a
`circuitry.records.CheckKind`: its schema variant (the spec schema is built
from the registered kinds), `plan` (validate against the model, say what it
needs), `measure` (compute the result from the shared `VerifiedRun`).
"""

from circuitry.checks.base import NEEDS, CheckPlan, CheckResult, Sweep, all_hold, items, with_details
from circuitry.checks.run import VerifiedRun

__all__ = ["NEEDS", "CheckPlan", "CheckResult", "Sweep", "VerifiedRun", "all_hold", "builtin_kinds", "items",
           "with_details"]


def builtin_kinds() -> list:
    """The built-in check kinds, in the order the documentation lists them."""
    from circuitry.checks import composition, decomposition, detector, faithfulness, intervention, metric

    return [m.KIND for m in (detector, composition, intervention, faithfulness, decomposition, metric)]
