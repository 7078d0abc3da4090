"""Scale-out 3 -> 5 and scale-in 5 -> 3 on the bootstrapped local cloud (issue 10), through
`casera run` as operators run them, each under a steady probe through the LB (writes and
reads, loopback only). First the refusals, each before any change, read from the real swarm
(Redis's task, the managers' reachability) and the Hetzner API (offer, live prices). The
scale-out is stopped right after its join (the runbook's cells in a real kernel, then a cell
that raises), casera-local-5 is killed, and the re-run converges to 5; a second re-run
changes nothing. The scale-in names casera-local-4 and -5, with -5 killed first: one leaves
the planned way, the other by demote and ``node rm --force``.

The Neon project is on Scale for the module (test_neon_scale's fixture), so the allowlist is
enforced and must follow the nodes; it is back on Launch with no list afterwards. The module
ends with the cloud at three converged nodes, as test_bootstrap.py left it."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_harness import casera, hcloud, run_stopped_after
from test_neon_scale import allowlist, on_scale, operator_source_as_neon_sees_it  # noqa: F401

from casera import steps
from casera.context import RunContext
from casera.operator_secrets import SecretStore
from casera.params import load_params
from casera.paths import outputs_dir
from casera.progress import wait_for
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
    before = state(ctx)
    message = refused(ctx, lambda: scale.preflight_scale_out(ctx, target=4))
    assert "even" in message and "extra_worker" in message, message
    # The same count as one extra worker is what the flag is for: cleared, and its dry run
    # (the runbook's servers, join and label steps on the real cloud) plans the one new
    # server joining as a worker, with no Dozzle label (managers only).
    assert scale.preflight_scale_out(ctx, target=4, extra_worker=True).ok
    dry = dataclasses.replace(ctx, dry_run=True, planned={}, shared={})
    octx = scale.scale_out_context(dry, 4, True)
    fourth = octx.params.server_names()[-1]
    assert octx.params.swarm.workers == [fourth]
    assert steps.servers.ensure_servers(octx).changed == 1
    joined = steps.swarm.ensure_swarm(octx).diff
    assert [line for line in joined if fourth in line] == [
        f"+ {fourth} joins as worker via {ctx.params.server_names()[0]} (planned server)"], joined
    labels = steps.swarm.ensure_node_labels(octx).diff
    assert ctx.params.swarm.dozzle_on_managers  # so a manager would get the label
    assert not [line for line in labels if fourth in line and "dozzle" in line], labels
    assert state(ctx) == before


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


def kill(ctx: RunContext, name: str) -> tuple[float, float]:
    """``casera local kill-node name``, then wait until the Swarm reports it dead (read
    through the params' three nodes, never the killed one), so the run that follows starts
    from that state rather than racing the heartbeat. (when the kill started, when it
    returned), wall clock, as the probe's rows are."""
    assert name != ctx.params.server_names()[ctx.params.swarm.redis_node - 1]
    client = reachable_cluster(ctx).manager
    kill_started = time.time()
    assert casera("local", "kill-node", name).returncode == 0
    killed_at = time.time()
    # Down (the dispatcher's heartbeats) and unreachable (Raft's own probes): two views
    # that settle at different times; the runs below are meant to start from both.
    wait_for(f"the swarm to report {name} down and unreachable", lambda: any(
        n["hostname"] == name and n["state"] == "down" and n["reachability"] != "reachable"
        for n in docker_swarm.nodes(client)), 90, show=False)
    return kill_started, killed_at


def outside_window(ctx: RunContext, probe: SteadyProbe, kill_started: float,
                   killed_at: float) -> list[tuple[float, str]]:
    """Failed probe requests outside the killed node's LB window: its target fails requests
    until the LB's health checks mark it unhealthy (Params.lb_unhealthy_after_s: the check
    that just passed, retries + 1 failing ones, the last taking its timeout). Before the kill
    less the probe's 10 s request timeout (a request in flight when it died) and after the
    window, nothing may fail. 2 s: the LB's and the probe's own scheduling."""
    window = ctx.params.lb_unhealthy_after_s()
    return [(round(r.start - killed_at, 1), r.what) for r in probe.failed()
            if not kill_started - 10 <= r.start <= killed_at + window + 2]


def killed_note(probe: SteadyProbe, killed_at: float, ctx: RunContext) -> str:
    failed = probe.failed()
    last = (f"the last {max(r.start for r in failed) - killed_at:.1f} s after the kill"
            if failed else "none after the kill")
    return (f"{summary('probe', probe.figures())}; {last} (LB health-check window "
            f"{ctx.params.lb_unhealthy_after_s()} s)")


def test_a_scale_out_stopped_after_the_join_with_a_new_node_killed_converges(
        ctx: RunContext, on_scale: Any, tmp_path: Path,  # noqa: F811
        record_property: Callable[[str, object], None]) -> None:
    """Scale-out 3 -> 5 under the probe, as the issue's "a node killed mid-scale-out: the
    re-run converges": the runbook stops right after its join (casera-local-4 and -5 exist
    and are managers; no labels, overlay check, api replicas, rebalance or LB check yet),
    casera-local-5 is killed, and ``casera run scale-out -p target=5`` converges: its
    preflight accepts the down node inside the target, its SSH step judges it dead by the
    Swarm's view and hard-resets it (not a new server), and the run ends with what the
    issue's Done asks of 5 nodes. No request may fail outside the killed node's LB window."""
    five = scale.with_count(ctx, 5).params.server_names()
    killed = five[-1]
    before = scale.distribution(reachable_cluster(ctx).manager)
    with SteadyProbe(endpoint(ctx), PROBE_RATE) as probe:
        time.sleep(2)
        started = time.monotonic()
        run_stopped_after("scale-out", "steps.swarm.ensure_swarm(octx)", tmp_path, {
            "dry_run": False, "approve": True, "run_id": "e2e-scale-stopped", "target": 5})
        stopped = time.monotonic() - started
        # Stopped where meant: the new servers are managers, nothing after the join ran.
        assert sorted(server_ips()) == five
        q = scale.quorum(docker_swarm.nodes(reachable_cluster(ctx).manager))
        assert (q.managers, q.reachable) == (5, 5), q.text()
        server_id = hcloud().servers.get_by_name(killed).id
        kill_started, killed_at = kill(ctx, killed)
        rerun = time.monotonic()
        done = casera("run", "scale-out", "--env", "local", "-p", "target=5", "--approve")
        took = time.monotonic() - rerun
        time.sleep(3)
    after = scale.distribution(reachable_cluster(ctx).manager)
    record_property("measured", f"3->5 stopped after the join in {stopped:.0f} s, {killed} "
                    f"killed, the re-run converged in {took:.0f} s; "
                    + killed_note(probe, killed_at, ctx)
                    + f"; before: {scale.describe_distribution(before)}"
                    + f"; after: {scale.describe_distribution(after)}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    steps = {s["step"]: s for s in latest_run("scale-out")["steps"]}
    preflight = {c["name"]: c for c in steps["scale-out preflight"]["checks"]}
    detail = preflight["nodes ready and active"]["detail"]
    assert f"{killed} down" in detail and "resets it" in detail, detail
    # Judged dead by the Swarm's view after a short silence, then reset: not replaced.
    assert any(killed in line and "reset" in line and "dead" in line
               for line in steps["ssh"]["diff"]), steps["ssh"]["diff"]
    assert steps["servers"]["changed"] == 0, steps["servers"]
    assert hcloud().servers.get_by_name(killed).id == server_id
    assert_nodes(ctx, 5)
    assert not scale.idle_nodes(after, five), after
    # Redis did not move: still on the params' node.
    redis_node = ctx.params.server_names()[ctx.params.swarm.redis_node - 1]
    assert after[redis_node].get("redis") == 1, after
    outside = outside_window(ctx, probe, kill_started, killed_at)
    assert probe.rows and not outside, outside[:10]


def test_a_rerun_of_the_scale_out_changes_nothing(
        ctx: RunContext, on_scale: Any,  # noqa: F811
        record_property: Callable[[str, object], None]) -> None:
    started = time.monotonic()
    done = casera("run", "scale-out", "--env", "local", "-p", "target=5", "--approve")
    assert done.returncode == 0, done.stdout[-3000:]
    record_property("measured", f"scale-out re-run: {time.monotonic() - started:.0f} s")
    changed = {k: v for k, v in changes("scale-out").items() if v}
    assert not changed, changed


def test_scale_in_by_name_with_one_leaving_node_dead(
        ctx: RunContext, on_scale: Any,  # noqa: F811
        record_property: Callable[[str, object], None]) -> None:
    """Scale-in 5 -> 3 naming the nodes, under the probe, with casera-local-5 killed first:
    the same run drains casera-local-4, demotes it, lets it leave and removes its entry (the
    planned path), and demotes casera-local-5 and force-removes its entry from a manager
    (Docker's path for a dead node); both servers are deleted. No request may fail outside
    the killed node's LB window."""
    five = scale.with_count(ctx, 5).params.server_names()
    alive, dead = five[3:]
    with SteadyProbe(endpoint(ctx), PROBE_RATE) as probe:
        time.sleep(2)
        kill_started, killed_at = kill(ctx, dead)
        started = time.monotonic()
        done = casera("run", "scale-in", "--env", "local", "-p", f"nodes={alive},{dead}",
                      "--approve")
        took = time.monotonic() - started
        time.sleep(3)
    after = scale.distribution(reachable_cluster(ctx).manager)
    record_property("measured", f"5->3 ({dead} dead) in {took:.0f} s; "
                    + killed_note(probe, killed_at, ctx)
                    + f"; after: {scale.describe_distribution(after)}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    steps = {s["step"]: s for s in latest_run("scale-in")["steps"]}
    quorum_check = {c["name"]: c for c in steps["scale-in preflight"]["checks"]}[
        "quorum healthy"]
    assert f"{dead} unreachable and among the nodes to remove" in quorum_check["detail"]
    removed = steps["swarm: remove nodes"]["diff"]
    assert any(line.startswith(f"- {dead} (") and "node rm --force" in line
               for line in removed), removed
    assert any(line.startswith(f"- {alive} leaves the swarm") for line in removed), removed
    assert any(line.startswith(f"~ demote {alive}") for line in removed), removed
    assert_nodes(ctx, 3)
    assert sorted(after) == ctx.params.server_names(), after
    pinned = scale.known_hosts(ctx).names()
    assert not {alive, dead} & set(pinned), pinned
    outside = outside_window(ctx, probe, kill_started, killed_at)
    assert probe.rows and not outside, outside[:10]
