"""Fast dead-node detection in the SSH step: the rule (silent on SSH, and the Swarm says down
or unreachable; never a server made in this run) and the wait that ends as soon as every
silent node is judged. The real node dying is tests/e2e/test_bootstrap.py's killed node."""

from __future__ import annotations

import time
from typing import Any

import pytest
from steps_harness import make_ctx

from casera.steps import access


def entry(hostname: str, state: str = "ready", reachability: str | None = "reachable"
          ) -> dict[str, Any]:
    return {"hostname": hostname, "state": state, "reachability": reachability}


def test_a_silent_node_the_swarm_calls_down_is_dead() -> None:
    view = [entry("n-1"), entry("n-2", "down", "unreachable"), entry("n-3")]
    assert access.dead_in_swarm(["n-2"], view, set()) == {
        "n-2": "swarm says down, manager unreachable"}


def test_an_unreachable_manager_not_yet_down_is_dead() -> None:
    view = [entry("n-1"), entry("n-2", "ready", "unreachable")]
    assert list(access.dead_in_swarm(["n-2"], view, set())) == ["n-2"]


@pytest.mark.parametrize("view, created, why", [
    ([entry("n-1"), entry("n-2")], set(), "the swarm still sees it ready and reachable"),
    ([entry("n-1")], set(), "the swarm does not know it (not joined yet)"),
    ([entry("n-1"), entry("n-2", "down", "unreachable")], {"n-2"}, "made in this run"),
    ([entry("n-2", "down", "unreachable"), entry("n-2")], set(),
     "a replaced server's old entry is down, its new one is ready"),
])
def test_not_dead(view: list[dict[str, Any]], created: set[str], why: str) -> None:
    assert access.dead_in_swarm(["n-2"], view, created) == {}, why


def _wait(monkeypatch: pytest.MonkeyPatch, silent: set[str], judge: Any,
          timeout: float) -> tuple[tuple[dict[str, str], dict[str, str], dict[str, str]], float]:
    def answer(ctx: Any, name: str, ip: str) -> str | None:
        if name in silent:
            raise OSError(f"[Errno 113] No route to host ({ip})")
        return "status: done\ncasera docker"

    monkeypatch.setattr(access, "_admin_ssh_ok", answer)
    ctx = make_ctx({}, {})
    nodes = {"n-1": "192.0.2.1", "n-2": "192.0.2.2", "n-3": "192.0.2.3"}
    started = time.monotonic()
    found = access._wait_admins(ctx, nodes, "SSH", timeout, judge, dead_after=1.0)
    return found, time.monotonic() - started


def test_the_wait_ends_once_the_silent_node_is_judged_dead(
        monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[list[str], list[str]]] = []

    def judge(silent: list[str], answering: dict[str, str]) -> dict[str, str]:
        asked.append((silent, sorted(answering)))
        return {"n-2": "swarm says down"}

    (answers, errors, dead), took = _wait(monkeypatch, {"n-2"}, judge, timeout=30)
    assert sorted(answers) == ["n-1", "n-3"] and dead == {"n-2": "swarm says down"}
    assert "No route to host" in errors["n-2"]
    # Asked only after the silence, through the nodes that answer; done long before 30 s.
    assert asked and asked[0] == (["n-2"], ["n-1", "n-3"])
    assert 1.0 <= took < 10, took


def test_a_silent_node_the_swarm_does_not_condemn_waits_out_the_patience(
        monkeypatch: pytest.MonkeyPatch) -> None:
    (answers, errors, dead), took = _wait(monkeypatch, {"n-2"}, lambda s, a: {}, timeout=3)
    assert sorted(answers) == ["n-1", "n-3"] and dead == {} and "n-2" in errors
    assert took >= 3, took
