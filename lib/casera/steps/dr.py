"""The DR runbook's dispatch: one runbook, one ``scenario`` per run, and every other scenario's
steps answered with a 0-change result that says whose step it is (issue 12).

The runbook's cells stay one call each: ``dr.only(ctx, scenario, "database-pitr", step, ...)``
runs ``step`` in a database-pitr run and journals "not this scenario" in any other, so the
run's table lists every step of the runbook and a re-run can be compared step by step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from casera.context import RunContext
from casera.result import StepResult, timed


def step_name(step: Callable[..., Any]) -> str:
    """A step function's name as the run's table shows a skipped step."""
    return getattr(step, "__name__", "step").replace("_", " ")


def skipped(ctx: RunContext, name: str, target: str, reason: str) -> StepResult:
    """A journaled result that changed nothing, with why the step did not run."""
    result = StepResult(name, target, dry_run=ctx.dry_run, reason=reason)
    with timed(result):
        pass
    return result


def only(ctx: RunContext, scenario: str, wanted: str, step: Callable[..., StepResult],
         *args: Any, **kwargs: Any) -> StepResult:
    """``step(ctx, *args, **kwargs)`` when the run's scenario is ``wanted``; otherwise a
    0-change result naming the scenario the step belongs to."""
    if scenario != wanted:
        return skipped(ctx, step_name(step), scenario,
                       f"a step of scenario {wanted}; this run is {scenario}")
    return step(ctx, *args, **kwargs)
