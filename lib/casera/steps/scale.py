"""Scale-out and scale-in preflight: what must hold before the node count changes, checked
before any change (issue 10). Each refusal is a red check, so the step fails and the run stops
with nothing touched.

Why these rules: Raft needs a majority of the managers, so N managers tolerate (N - 1) // 2
failures and an even count tolerates no more than one fewer; Docker recommends at most seven
managers (docs.docker.com/engine/swarm/admin_guide/#add-manager-nodes-for-fault-tolerance:
"a maximum of seven manager nodes for a swarm"). Redis owns its node's volume and Dozzle is
placed by label: removing their node is the Redis failover's job, not a scale-in's.

Not reconciled here: the servers, firewall, allowlist, join, rebalance and LB targets of a
scale-out, and the drain/demote/remove of a scale-in (the runbooks are not built yet).
Hetzner does not expose a project's server limit through its API; a create beyond it is
refused with ``resource_limit_exceeded``, which the servers step names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from casera.context import RunContext
from casera.providers import docker_swarm, hetzner
from casera.result import StepResult, timed
from casera.steps.redis_checks import reachable_cluster
from casera.steps.stack import running_tasks, stack_services
from casera.steps.summary import monthly_price

MIN_MANAGERS = 3
MAX_MANAGERS = 7
# Services that stay on their node: a node carrying one is never scaled in.
PINNED = ("redis", "dozzle")


@dataclass(frozen=True)
class Quorum:
    managers: int
    reachable: int
    leader: bool

    @property
    def healthy(self) -> bool:
        """Every manager reachable and a leader elected: a change now cannot lose quorum
        because of a manager that is already gone."""
        return self.leader and self.reachable == self.managers > 0

    @property
    def tolerates(self) -> int:
        return (self.managers - 1) // 2

    def text(self) -> str:
        return (f"{self.reachable}/{self.managers} managers reachable, "
                f"{'a' if self.leader else 'no'} leader; tolerates {self.tolerates} failure(s)")


def quorum(swarm_nodes: list[dict[str, Any]]) -> Quorum:
    managers = [n for n in swarm_nodes if n["role"] == "manager"]
    return Quorum(len(managers), sum(n.get("reachability") == "reachable" for n in managers),
                  any(n.get("leader") for n in managers))


def not_ready(swarm_nodes: list[dict[str, Any]]) -> list[str]:
    """Nodes that are not Ready and Active, each with what it is."""
    return [f"{n['hostname']} ({n['state']}, {n['availability']})" for n in swarm_nodes
            if n["state"] != "ready" or n["availability"] != "active"]


def scale_out_refusals(managers: int, nodes: int, target: int, extra_worker: bool) -> list[str]:
    """Why adding nodes up to ``target`` (every new node a manager, or with ``extra_worker``
    one worker) must not go ahead; empty when it may."""
    if target < nodes:
        return [f"target {target} is below the current {nodes} nodes: that is a scale-in "
                "(runbooks/scale-in.ipynb), not a scale-out"]
    if extra_worker:
        if target != nodes + 1:
            return [f"extra_worker adds exactly one worker: target must be {nodes + 1}, "
                    f"got {target}"]
        if managers % 2 == 0:
            return [f"the swarm has {managers} managers (even) already: add a manager to "
                    "make it odd instead of a worker"]
        return []
    refusals = []
    after = managers + target - nodes
    if after % 2 == 0 and target != nodes:
        refusals.append(
            f"target {target} gives {after} managers, an even count: {after} managers "
            f"tolerate {(after - 1) // 2} failure(s), no more than {after - 1} do. Choose "
            f"an odd manager count ({after - 1} or {after + 1}), or set extra_worker to add "
            "one worker that does not vote")
    if after > MAX_MANAGERS:
        refusals.append(f"target {target} gives {after} managers, above the recommended "
                        f"{MAX_MANAGERS} (every manager takes part in each Raft write)")
    return refusals


def scale_in_refusals(swarm_nodes: list[dict[str, Any]], remove: list[str],
                      carriers: dict[str, set[str]]) -> list[str]:
    """Why removing ``remove`` must not go ahead; empty when it may. ``carriers``: node ->
    the pinned services (``PINNED``) with a running task on it."""
    by_name = {n["hostname"]: n for n in swarm_nodes}
    refusals = [f"{name} is not a node of this swarm (nodes: {', '.join(sorted(by_name))})"
                for name in remove if name not in by_name]
    left = [n for n in swarm_nodes if n["hostname"] not in remove and n["role"] == "manager"]
    if len(left) < MIN_MANAGERS:
        refusals.append(f"removing {', '.join(remove)} leaves {len(left)} manager(s): fewer "
                        f"than {MIN_MANAGERS}, the smallest swarm that survives a lost node")
    elif len(left) % 2 == 0:
        refusals.append(f"removing {', '.join(remove)} leaves {len(left)} managers, an even "
                        f"count that tolerates no more failures than {len(left) - 1}: remove "
                        "one more or one fewer")
    for name in remove:
        pinned = sorted(carriers.get(name, set()))
        if pinned:
            how = "Redis with the redis-failover runbook" if "redis" in pinned else "it"
            refusals.append(f"{name} carries {' and '.join(pinned)}: move {how} first")
    return refusals


def _carriers(client: Any) -> dict[str, set[str]]:
    """node hostname -> the pinned services running a task there."""
    names = {n["id"]: n["hostname"] for n in docker_swarm.nodes(client)}
    ids = {s["id"]: name for name, s in stack_services(client).items() if name in PINNED}
    found: dict[str, set[str]] = {}
    for service_id, tasks in running_tasks(client).items():
        if service_id in ids:
            for task in tasks:
                found.setdefault(names.get(task.get("NodeID", ""), "?"), set()).add(
                    ids[service_id])
    return found


def preflight_scale_out(ctx: RunContext, target: int = 0,
                        extra_worker: bool = False) -> StepResult:
    """Before adding nodes: quorum healthy, every node Ready and Active, the target keeps the
    managers odd (or adds exactly one worker when ``extra_worker`` says so) and within
    ``MAX_MANAGERS``, the server type offered at the location, and the monthly cost
    difference from Hetzner's live prices. ``target`` 0: the current count + 2."""
    p = ctx.params
    with timed(StepResult("scale-out preflight", p.cluster_label,
                          dry_run=ctx.dry_run)) as result:
        entries = docker_swarm.nodes(reachable_cluster(ctx).manager)
        q = quorum(entries)
        target = target or len(entries) + 2
        result.target = f"{len(entries)} -> {target} nodes"
        result.check("quorum healthy", q.healthy, q.text())
        late = not_ready(entries)
        result.check("nodes ready and active", not late,
                     f"all {len(entries)}" if not late else ", ".join(late))
        refusals = scale_out_refusals(q.managers, len(entries), target, extra_worker)
        result.check("target", not refusals, "; ".join(refusals) or (
            f"{target - len(entries)} new node(s); managers "
            f"{q.managers} -> {q.managers + (0 if extra_worker else target - len(entries))}"))
        hz = hetzner.for_env(p, ctx.secrets)
        h = p.hetzner
        offer = next((t.at(h.location) for t in hz.catalog.server_types()
                      if t.name == h.server_type), None)
        result.check("server type offered", offer is not None and offer.available is not False,
                     f"{h.server_type} in {h.location}: "
                     + ("offered" if offer is not None and offer.available is not False
                        else "not offered or out of stock"))
        pricing = hz.catalog.pricing()
        price = monthly_price(pricing, "server_types", h.server_type, h.location)
        added = max(0, target - len(entries))
        if price is None:
            result.check("monthly cost difference", False,
                         f"Hetzner lists no price for {h.server_type} in {h.location}")
        else:
            net, gross = price
            result.note("monthly cost difference",
                        f"+{net * added:.2f} {pricing['currency']} net (+{gross * added:.2f} "
                        f"gross): {added} x {h.server_type} at {net:.2f} net, live prices")
    return result


def preflight_scale_in(ctx: RunContext, nodes: list[str] | None = None,
                       count: int = 0) -> StepResult:
    """Before removing nodes: quorum healthy now, the result keeps at least ``MIN_MANAGERS``
    managers and an odd count, and no named node carries Redis or Dozzle. ``nodes`` names
    them; else ``count`` picks the highest-numbered servers that carry neither."""
    p = ctx.params
    with timed(StepResult("scale-in preflight", p.cluster_label,
                          dry_run=ctx.dry_run)) as result:
        client = reachable_cluster(ctx).manager
        entries = docker_swarm.nodes(client)
        carriers = _carriers(client)
        if nodes:
            remove = list(nodes)
        else:
            free = [n["hostname"] for n in sorted(entries, key=lambda n: n["hostname"])
                    if not carriers.get(n["hostname"])]
            remove = free[::-1][:count] if count > 0 else []
        result.target = ", ".join(remove) or "no node named"
        q = quorum(entries)
        result.check("quorum healthy", q.healthy, q.text())
        refusals = scale_in_refusals(entries, remove, carriers) if remove else [
            "name the nodes to remove (nodes) or how many (count)"]
        result.check("nodes to remove", not refusals, "; ".join(refusals) or (
            f"{', '.join(remove)}; managers {q.managers} -> {q.managers - len(remove)}"))
    return result
