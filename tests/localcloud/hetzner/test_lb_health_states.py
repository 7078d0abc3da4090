"""The local LB's health states follow Hetzner's retries rule both ways: a healthy target
turns unhealthy after ``retries`` failures beyond the first, and an unknown or unhealthy one
needs ``retries`` passes in a row (at least one) before it gets traffic again."""

from __future__ import annotations

import pytest

from casera_localcloud.hetzner.lb_proxy import _TargetState, checked


def statuses(results: str, retries: int) -> list[str]:
    """The status after each check: ``results`` is a string of + (passed) and - (failed)."""
    state, seen = _TargetState(), []
    for result in results:
        checked(state, result == "+", retries)
        seen.append(state.status)
    return seen


@pytest.mark.parametrize("results, retries, expected", [
    # unknown: no traffic until `retries` passes in a row
    ("+", 1, ["healthy"]),
    ("++", 3, ["unknown", "unknown"]),
    ("+++", 3, ["unknown", "unknown", "healthy"]),
    ("+", 0, ["healthy"]),
    # healthy: the first failure is forgiven, then `retries` more turn it unhealthy
    ("+--", 1, ["healthy", "healthy", "unhealthy"]),
    ("+-+-", 1, ["healthy", "healthy", "healthy", "healthy"]),
    ("+-", 0, ["healthy", "unhealthy"]),
    # unhealthy: back only after `retries` passes in a row; a failure restarts the count
    ("++---++", 2, ["unknown", "healthy", "healthy", "healthy", "unhealthy", "unhealthy",
                    "healthy"]),
    ("++---+-++", 2, ["unknown", "healthy", "healthy", "healthy", "unhealthy", "unhealthy",
                      "unhealthy", "unhealthy", "healthy"]),
])
def test_health_state_follows_retries_both_ways(results: str, retries: int,
                                                 expected: list[str]) -> None:
    assert statuses(results, retries) == expected
