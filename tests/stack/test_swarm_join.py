"""A join the engine stopped waiting for is not a failed join: moby answers 503 "Timeout was
reached before node joined. The attempt to join the swarm will continue in the background"
after its own 20 s, and bench_dr saw exactly that when a second manager joined a
force-new-cluster survivor under load. The provider tells that answer apart from a real
failure, and the swarm step waits for each node to be in the swarm before the next joins."""

from __future__ import annotations

from typing import Any

import docker
import pytest
import requests

from casera.errors import ProviderError, WaitTimeout
from casera.providers import docker_swarm
from casera.steps import swarm

TIMED_OUT = ("Timeout was reached before node joined. The attempt to join the swarm will "
             "continue in the background. Use the \"docker info\" command to see the current "
             "swarm status of your node.")


def api_error(status: int, explanation: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError("join", response=response, explanation=explanation)


class Engine:
    """A joining node's engine: ``join`` raises what it is told to; ``nodes`` is the
    leader's node list after each call (the last one repeats)."""

    def __init__(self, join_error: Exception | None = None,
                 listings: list[list[dict[str, Any]]] | None = None) -> None:
        self.join_error, self.listings, self.joined = join_error, listings or [[]], []
        outer = self

        class Swarm:
            def join(self, **kwargs: Any) -> None:
                outer.joined.append(kwargs)
                if outer.join_error is not None:
                    raise outer.join_error

        class Node:
            def __init__(self, attrs: dict[str, Any]) -> None:
                self.attrs = attrs

        class Nodes:
            def list(self) -> list[Node]:
                listing = outer.listings.pop(0) if len(outer.listings) > 1 else outer.listings[0]
                return [Node(a) for a in listing]

        self.swarm, self.nodes = Swarm(), Nodes()


def node(hostname: str | None, role: str = "manager", state: str = "ready",
         reachability: str | None = "reachable") -> dict[str, Any]:
    attrs: dict[str, Any] = {"ID": f"id-{hostname}", "Spec": {"Role": role},
                             "Status": {"State": state}}
    if hostname is not None:
        attrs["Description"] = {"Hostname": hostname}
    if role == "manager" and reachability:
        attrs["ManagerStatus"] = {"Reachability": reachability}
    return attrs


def test_the_engines_join_timeout_is_a_join_that_goes_on() -> None:
    engine = Engine(api_error(503, TIMED_OUT))
    assert docker_swarm.swarm_join(engine, "10.0.0.1", "tok", "10.0.0.2") is False  # type: ignore[arg-type]
    assert engine.joined[0]["remote_addrs"] == ["10.0.0.1:2377"]


@pytest.mark.parametrize("status,explanation", [
    (503, "rpc error: code = Unavailable desc = connection refused"),
    (400, TIMED_OUT),  # only the engine's 503 says the join goes on
    (500, "This node is already part of a swarm."),
])
def test_any_other_join_error_fails_naming_it(status: int, explanation: str) -> None:
    engine = Engine(api_error(status, explanation))
    with pytest.raises(ProviderError, match="swarm_join"):
        docker_swarm.swarm_join(engine, "10.0.0.1", "tok", "10.0.0.2")  # type: ignore[arg-type]


def test_a_finished_join_is_true() -> None:
    assert docker_swarm.swarm_join(Engine(), "10.0.0.1", "tok", "10.0.0.2") is True  # type: ignore[arg-type]


def test_a_node_still_joining_is_listed_without_a_hostname() -> None:
    listed = docker_swarm.nodes(Engine(listings=[[node("a"), node(None, state="unknown")]]))  # type: ignore[arg-type]
    assert [n["hostname"] for n in listed] == ["a", ""]


def test_a_manager_is_waited_for_until_reachable_before_the_next_joins() -> None:
    leader = Engine(listings=[
        [node("a"), node(None, state="unknown", reachability=None)],
        [node("a"), node("b", reachability="unknown")],
        [node("a"), node("b")],
    ])
    joining = Engine(api_error(503, TIMED_OUT))
    swarm._join(leader, joining, "b", "10.0.0.1", "10.0.0.2", "tok", "manager", timeout=10)  # type: ignore[arg-type]
    assert leader.listings == [[node("a"), node("b")]]  # read until b was reachable


def test_a_join_that_never_shows_up_times_out_naming_the_node() -> None:
    leader = Engine(listings=[[node("a")]])
    with pytest.raises(WaitTimeout, match="b in the swarm as a reachable manager .*background"):
        swarm._join(leader, Engine(api_error(503, TIMED_OUT)), "b", "10.0.0.1",  # type: ignore[arg-type]
                    "10.0.0.2", "tok", "manager", timeout=1.5)


def test_a_worker_needs_no_reachability() -> None:
    leader = Engine(listings=[[node("a"), node("w", role="worker", reachability=None)]])
    swarm._join(leader, Engine(), "w", "10.0.0.1", "10.0.0.3", "tok", "worker", timeout=5)  # type: ignore[arg-type]
