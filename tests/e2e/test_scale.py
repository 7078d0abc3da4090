"""Scale preflight on the bootstrapped three-node local cloud (issue 10): the refusals come
before any change, read from the real swarm (Redis's task, the managers' reachability) and the
Hetzner API (offer, live prices). The scale-out and scale-in themselves are not built yet.

Read-only: the module leaves the cloud exactly as test_bootstrap.py made it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from e2e_harness import hcloud

from casera.context import RunContext
from casera.operator_secrets import SecretStore
from casera.params import load_params
from casera.providers import docker_swarm
from casera.result import ChecksFailed
from casera.steps import scale
from casera.steps.redis_checks import reachable_cluster


@pytest.fixture(scope="module")
def ctx() -> Iterator[RunContext]:
    secrets = SecretStore("local")
    yield RunContext(env="local", params=load_params("local", secrets=secrets),
                     secrets=secrets, interactive=False, run_id="e2e-scale", operator="e2e")


def state(ctx: RunContext) -> tuple[Any, ...]:
    """What a change would alter: the servers, and each swarm node's role, availability and
    spec version."""
    servers = sorted((s.name, s.status) for s in hcloud().servers.get_all())
    nodes = sorted((n["hostname"], n["role"], n["availability"], n["version"])
                   for n in docker_swarm.nodes(reachable_cluster(ctx).manager))
    return servers, nodes


def refused(ctx: RunContext, call: Any) -> str:
    before = state(ctx)
    with pytest.raises(ChecksFailed) as caught:
        call()
    assert state(ctx) == before  # refused before any change
    return str(caught.value)


def test_scaling_in_to_two_is_refused(ctx: RunContext) -> None:
    message = refused(ctx, lambda: scale.preflight_scale_in(ctx, count=1))
    assert "leaves 2 manager(s)" in message, message


def test_scaling_in_the_redis_node_is_refused(ctx: RunContext) -> None:
    redis_node = ctx.params.server_names()[ctx.params.swarm.redis_node - 1]
    message = refused(ctx, lambda: scale.preflight_scale_in(ctx, nodes=[redis_node]))
    assert f"{redis_node} carries" in message and "redis" in message, message


def test_an_even_target_without_the_worker_flag_is_refused(ctx: RunContext) -> None:
    message = refused(ctx, lambda: scale.preflight_scale_out(ctx, target=4))
    assert "even" in message and "extra_worker" in message, message
    # The same count as one extra worker is what the flag is for.
    assert scale.preflight_scale_out(ctx, target=4, extra_worker=True).ok


def test_the_default_scale_out_is_cleared_with_its_cost(ctx: RunContext) -> None:
    result = scale.preflight_scale_out(ctx)
    checks = {c.name: c for c in result.checks}
    assert result.target == "3 -> 5 nodes"
    assert checks["quorum healthy"].ok and "tolerates 1" in checks["quorum healthy"].detail
    cost = checks["monthly cost difference"].detail
    assert cost.startswith("+") and "2 x" in cost and "live prices" in cost, cost
