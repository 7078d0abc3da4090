"""Scale-out 3 -> 5 and scale-in 5 -> 3 on the bootstrapped local cloud (issue 10), through
`casera run` as operators run them, each under a steady probe through the LB (writes and
reads, loopback only). First the refusals, each before any change, read from the real swarm
(Redis's task, the managers' reachability) and the Hetzner API (offer, live prices).

The Neon project is on Scale for the module (test_neon_scale's fixture), so the allowlist is
enforced and must follow the nodes; it is back on Launch with no list afterwards. The module
ends with the cloud at three converged nodes, as test_bootstrap.py left it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from e2e_harness import casera, hcloud
from test_neon_scale import allowlist, on_scale, operator_source_as_neon_sees_it  # noqa: F401

from casera.context import RunContext
from casera.operator_secrets import SecretStore
from casera.params import load_params
from casera.paths import outputs_dir
from casera.providers import docker_swarm
from casera.result import ChecksFailed
from casera.steady_probe import SteadyProbe, summary
from casera.steps import scale
from casera.steps.api_endpoint import ApiEndpoint, api_endpoint_for
from casera.steps.redis_checks import reachable_cluster

pytestmark = [pytest.mark.localcloud, pytest.mark.slow]
PROBE_RATE = 5.0  # requests a second through the LB's loopback address


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


# --- scale-out and scale-in under the probe ----------------------------------------------------

def endpoint(ctx: RunContext) -> ApiEndpoint:
    lb = hcloud().load_balancers.get_by_name(ctx.params.load_balancer.name)
    return api_endpoint_for(ctx.params, lb.public_net.ipv4.ip)


def latest_run(runbook: str) -> dict[str, Any]:
    path = sorted((outputs_dir("local") / runbook).glob("*.ipynb"))[-1]
    return json.loads(path.read_text())["metadata"]["casera"]


def changes(runbook: str) -> dict[str, int]:
    return {f"{s['step']} {s['target']}": int(s["changed"])
            for s in latest_run(runbook)["steps"] if s["step"] != "this run"}


def server_ips() -> dict[str, str]:
    return {s.name: s.public_net.ipv4.ip for s in hcloud().servers.get_all()}


def cluster_sources(ctx: RunContext) -> dict[str, set[str]]:
    """firewall rule description -> its sources, for the rules params give ``cluster``."""
    fw = hcloud().firewalls.get_by_name(ctx.params.firewall.name)
    cluster = {r.description for r in ctx.params.firewall.rules if r.source == "cluster"}
    return {r.description: set(r.source_ips) for r in fw.rules if r.description in cluster}


def lb_health(ctx: RunContext) -> dict[str, list[str]]:
    lb = hcloud().load_balancers.get_by_name(ctx.params.load_balancer.name)
    names = {s.id: s.name for s in hcloud().servers.get_all()}
    return {names.get(t.server.id, str(t.server.id)): [h.status for h in t.health_status]
            for target in lb.targets for t in target.targets or []}


def assert_nodes(ctx: RunContext, count: int) -> None:
    """What the issue's Done asks of ``count`` nodes, read from the systems themselves."""
    ips = server_ips()
    assert sorted(ips) == scale.with_count(ctx, count).params.server_names(), ips
    client = reachable_cluster(scale.with_count(ctx, count)).manager
    q = scale.quorum(docker_swarm.nodes(client))
    assert (q.managers, q.reachable, q.leader, q.tolerates) == (
        count, count, True, (count - 1) // 2), q.text()
    wanted = {f"{ip}/32" for ip in ips.values()}
    for description, sources in cluster_sources(ctx).items():
        assert sources == wanted, (description, sources)
    health = lb_health(ctx)
    assert sorted(health) == sorted(ips) and all(
        s and set(s) == {"healthy"} for s in health.values()), health
    listed = {ip.removesuffix("/32") for ip in allowlist()}
    assert listed == set(ips.values()) | {operator_source_as_neon_sees_it()}, listed


def run_under_probe(ctx: RunContext, runbook: str, *args: str
                    ) -> tuple[float, SteadyProbe, dict[str, dict[str, int]]]:
    with SteadyProbe(endpoint(ctx), PROBE_RATE) as probe:
        time.sleep(2)
        started = time.monotonic()
        done = casera("run", runbook, "--env", "local", *args, "--approve")
        took = time.monotonic() - started
        time.sleep(3)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    spread = scale.distribution(reachable_cluster(ctx).manager)
    return took, probe, spread


def test_scale_out_to_five_under_the_probe_loses_no_request(
        ctx: RunContext, on_scale: Any,  # noqa: F811
        record_property: Callable[[str, object], None]) -> None:
    before = scale.distribution(reachable_cluster(ctx).manager)
    took, probe, after = run_under_probe(ctx, "scale-out", "-p", "target=5")
    record_property("measured", f"3->5 in {took:.0f} s; "
                    + summary("probe", probe.figures())
                    + f"; before: {scale.describe_distribution(before)}"
                    + f"; after: {scale.describe_distribution(after)}")
    assert probe.rows and not probe.failed(), [r.what for r in probe.failed()][:10]
    assert_nodes(ctx, 5)
    assert not scale.idle_nodes(after, scale.with_count(ctx, 5).params.server_names()), after
    # Redis did not move: still on the params' node.
    redis_node = ctx.params.server_names()[ctx.params.swarm.redis_node - 1]
    assert after[redis_node].get("redis") == 1, after


def test_a_rerun_of_the_scale_out_changes_nothing(
        ctx: RunContext, on_scale: Any,  # noqa: F811
        record_property: Callable[[str, object], None]) -> None:
    started = time.monotonic()
    done = casera("run", "scale-out", "--env", "local", "-p", "target=5", "--approve")
    assert done.returncode == 0, done.stdout[-3000:]
    record_property("measured", f"scale-out re-run: {time.monotonic() - started:.0f} s")
    changed = {k: v for k, v in changes("scale-out").items() if v}
    assert not changed, changed


def test_scale_in_back_to_three_under_the_probe_loses_no_request(
        ctx: RunContext, on_scale: Any,  # noqa: F811
        record_property: Callable[[str, object], None]) -> None:
    took, probe, after = run_under_probe(ctx, "scale-in", "-p", "count=2")
    record_property("measured", f"5->3 in {took:.0f} s; " + summary("probe", probe.figures())
                    + f"; after: {scale.describe_distribution(after)}")
    assert probe.rows and not probe.failed(), [r.what for r in probe.failed()][:10]
    assert_nodes(ctx, 3)
    assert sorted(after) == ctx.params.server_names(), after
    pinned = scale.known_hosts(ctx).names()
    gone = scale.with_count(ctx, 5).params.server_names()[3:]
    assert not set(gone) & set(pinned), pinned
