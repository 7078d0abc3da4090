"""The one place a plan is applied: a dry run calls nothing, the gate sees every destructive
change before anything is made, and the counts a dry run shows equal what a run makes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from casera.errors import ApprovalRefused
from casera.plan import Plan, apply
from casera.result import StepResult


def ctx(dry_run: bool = False, approval: str = "auto", approve: bool = False) -> Any:
    return SimpleNamespace(dry_run=dry_run, approve=approve, interactive=False, env="test",
                           operator="tester",
                           params=SimpleNamespace(runner=SimpleNamespace(approval=approval)))


def sample(calls: list[str]) -> Plan:
    plan = Plan(gate_title="delete the old thing")
    plan.add("+ thing a", lambda: calls.append("a") or "action-a")
    plan.add("+ thing b (with 2 rules)", lambda: calls.append("b"), count=3)
    plan.add("- old thing", lambda: calls.append("old"), destructive=True)
    plan.add("  rules come with b", None, count=0)
    return plan


def test_a_dry_run_records_the_plan_and_calls_nothing() -> None:
    calls: list[str] = []
    result = StepResult("things", "t")
    applied = apply(ctx(dry_run=True), result, sample(calls))
    assert calls == [] and applied.dry_run and not applied.changed_something
    assert result.changed == 5
    assert result.diff == ["+ thing a", "+ thing b (with 2 rules)", "- old thing",
                           "  rules come with b"]


def test_a_run_makes_every_change_in_order_and_counts_the_same() -> None:
    calls: list[str] = []
    result = StepResult("things", "t")
    applied = apply(ctx(), result, sample(calls))
    assert calls == ["a", "b", "old"]
    assert applied.made == ["action-a", None, None] and applied.changed_something
    assert result.changed == 5


def test_a_refused_gate_stops_before_the_first_change() -> None:
    calls: list[str] = []
    with pytest.raises(ApprovalRefused, match="delete the old thing"):
        apply(ctx(approval="required"), StepResult("things", "t"), sample(calls))
    assert calls == []


def test_an_empty_plan_changes_nothing_and_asks_nothing() -> None:
    result = StepResult("things", "t")
    applied = apply(ctx(approval="required"), result, Plan())
    assert result.changed == 0 and not applied.changed_something and not Plan()
