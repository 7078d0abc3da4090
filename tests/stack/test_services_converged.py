"""The stack's convergence wait, on the provider's plain data (no engine): converged only when
every service runs its replicas on its current spec, and a timeout names what is short."""

from __future__ import annotations

from typing import Any

import pytest

from casera.errors import WaitTimeout
from casera.params import load_params
from casera.steps import stack

PARAMS = load_params("local")
SPEC = {"ContainerSpec": {"Image": "api:2", "Env": ["A=1"]}}


def _world(running: dict[str, int], old: dict[str, int] | None = None,
           absent: tuple[str, ...] = ()) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    services, tasks = [], []
    for name in stack.SERVICES:
        if name in absent:
            continue
        services.append({"name": f"{stack.STACK}_{name}", "id": f"id-{name}",
                         "spec": {"TaskTemplate": SPEC}})
        count = running.get(name, getattr(PARAMS.services, name).replicas)
        for n in range(count):
            stale = n < (old or {}).get(name, 0)
            spec = {"ContainerSpec": {"Image": "api:1", "Env": ["A=1"]}} if stale else SPEC
            tasks.append({"ServiceID": f"id-{name}", "Status": {"State": "running"},
                          "Spec": spec})
    return services, tasks


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch):
    def use(services: list[dict[str, Any]], tasks: list[dict[str, Any]]) -> None:
        monkeypatch.setattr(stack.docker_swarm, "services", lambda client, label: services)
        monkeypatch.setattr(stack.docker_swarm, "tasks", lambda client, filters: tasks)
    return use


def test_converged_counts_every_service(world) -> None:
    world(*_world({}))
    assert stack.services_gap(None, PARAMS) == []
    assert stack.services_converged(None, PARAMS) == {
        n: getattr(PARAMS.services, n).replicas for n in stack.SERVICES}


def test_a_timeout_names_the_short_the_stale_and_the_missing(world) -> None:
    wanted = PARAMS.services.api.replicas
    world(*_world({"api": wanted - 1}, old={"worker": 1}, absent=("backup",)))
    assert stack.services_converged(None, PARAMS) is None
    with pytest.raises(WaitTimeout) as raised:
        stack.wait_services_converged(None, PARAMS, timeout=0.1)
    text = str(raised.value)
    assert f"api: {wanted - 1} of {wanted} running" in text
    assert "worker: " in text and "1 on an older spec" in text
    assert "backup: not deployed" in text
    assert "admin" not in text.split("Not there yet: ")[1]
