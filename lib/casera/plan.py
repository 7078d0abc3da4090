"""A step's plan, and the one place that applies it: dry run, approval gate, then the changes.

Every ``ensure_*`` step works the same way (Ansible's check mode, pyinfra's facts and
operations): read the facts through its provider, compute a :class:`Plan` (what differs, as
diff lines, each with the function that makes it), and hand the plan to :func:`apply`.

:func:`apply` records the plan in the step's result (``diff``, ``changed``), and is the only
code that knows about dry runs: in a dry run it returns without calling anything, so the plan
shown is exactly what a run would do. Otherwise it asks the approval gate once for every change
that deletes or replaces something, then makes the changes in order and returns what each one
returned (actions to wait for, created objects).

A change whose ``make`` is None is shown and counted but made by another change of the same
plan (a firewall's rules are created with the firewall). ``count`` says how many changes a
line stands for, so the plan's total equals the run's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from casera.context import RunContext
from casera.gate import confirm
from casera.result import StepResult


@dataclass
class Change:
    line: str
    make: Callable[[], Any] | None = None
    count: int = 1
    destructive: bool = False  # deletes or replaces something: asked at the gate first


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    # Shown at the gate when any change is destructive: what is at stake, in a few words.
    gate_title: str = ""

    def add(self, line: str, make: Callable[[], Any] | None = None, *, count: int = 1,
            destructive: bool = False) -> None:
        self.changes.append(Change(line, make, count, destructive))

    def show(self, line: str) -> None:
        """A line for the reader that is not a change (a warning, a placeholder)."""
        self.changes.append(Change(line, None, 0))

    @property
    def total(self) -> int:
        return sum(change.count for change in self.changes)

    def __bool__(self) -> bool:
        return self.total > 0


@dataclass
class Applied:
    """What :func:`apply` did: ``made`` holds each change's return value, in plan order."""

    dry_run: bool
    made: list[Any] = field(default_factory=list)

    @property
    def changed_something(self) -> bool:
        return not self.dry_run and bool(self.made)


def apply(ctx: RunContext, result: StepResult, plan: Plan) -> Applied:
    """Record ``plan`` in ``result``; in a dry run stop there, else gate and apply it."""
    result.diff += [change.line for change in plan.changes]
    result.changed += plan.total
    if ctx.dry_run or not plan:
        return Applied(dry_run=ctx.dry_run)
    destructive = [change.line for change in plan.changes if change.destructive]
    if destructive:
        confirm(ctx, plan.gate_title or f"{result.step} {result.target}: "
                f"{len(destructive)} change(s) delete or replace something", destructive)
    made = [change.make() for change in plan.changes if change.make is not None]
    return Applied(dry_run=False, made=made)
