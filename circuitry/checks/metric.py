"""Check kind `metric`: a metric on the clean run, on a task's corrupted run, or their difference.

"The task is solved": `{kind: metric, metric: logit_diff, expect: ">= 2"}` on
the clean prompts; `run: corrupted` reads the corrupted prompts (with the
same answers, at the same positions); `run: difference` is clean minus
corrupted, the effect every patching result of the task is a fraction of.
"""

from __future__ import annotations

from circuitry.checks.base import CheckPlan, CheckResult
from circuitry.records import CheckKind
from circuitry.spec.format import METRICS, Check, expectation_of
from circuitry.spec.schema import Field, Str

RUNS = ("clean", "corrupted", "difference")


def plan(run, check: Check) -> CheckPlan:
    run.lookup("circuitry_metrics", check.options["metric"], (*check.path, "metric"))
    which = check.options.get("run", "clean")
    if which != "clean":
        run.require_task((*check.path, "run"), f"run: {which}")
    return CheckPlan(state=which)


def measure(run, check: Check, plan: CheckPlan) -> CheckResult:
    name = check.options["metric"]
    clean = run.metric_clean(name)
    details = {"metric_clean": clean}
    if plan.state == "clean":
        value = clean
    else:
        corrupted = run.metric_corrupted(name)
        details["metric_corrupted"] = corrupted
        value = corrupted if plan.state == "corrupted" else clean - corrupted
    _, exp = expectation_of(check)
    what = {"clean": "on the clean run", "corrupted": "on the corrupted run",
            "difference": "clean minus corrupted"}[plan.state]
    return CheckResult(check.id, check.kind, f"{name} {what}", value, str(exp), exp.holds(value), details)


KIND = CheckKind(
    "metric", "a metric on the clean run, the task's corrupted run, or their difference",
    fields={
        "metric": Field(METRICS, required=True),
        "run": Field(Str(choices=RUNS), doc="clean (default), corrupted (a task's corrupted prompts) or difference"),
    },
    plan=plan, measure=measure, expect_doc="on the metric's value")
