"""Scale-out and scale-in preflight: what must hold before the node count changes, checked
before any change (issue 10). Each refusal is a red check, so the step fails and the run stops
with nothing touched.

Why these rules: Raft needs a majority of the managers, so N managers tolerate (N - 1) // 2
failures and an even count tolerates no more than one fewer; Docker recommends at most seven
managers (docs.docker.com/engine/swarm/admin_guide/#add-manager-nodes-for-fault-tolerance:
"a maximum of seven manager nodes for a swarm"). Redis owns its node's volume and Dozzle is
placed by label: removing their node is the Redis failover's job, not a scale-in's.

The scale-out itself is the bootstrap's own ensure steps (servers, firewall, SSH, swarm,
labels, overlay probe, allowlist) run with ``hetzner.server_count`` overridden to the target
(:func:`scale_out_context`), then :func:`rebalance`, :func:`verify_lb_targets` and
:func:`verify_scale`. The scale-in is :func:`drain_nodes`, :func:`verify_lb_left`,
:func:`remove_from_swarm`, :func:`delete_servers`, then the bootstrap's firewall and allowlist
steps on what is left. Hetzner does not expose a project's server limit through its API; a
create beyond it is refused with ``resource_limit_exceeded``, which the servers step names.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass
from typing import Any

from casera.context import RunContext
from casera.errors import CaseraError, StepFailed
from casera.params import REPLICA_RANGES, Params
from casera.plan import Plan, apply
from casera.progress import wait_for
from casera.providers import docker_swarm, hetzner
from casera.result import StepResult, timed
from casera.steps.access import DEAD_AFTER_S, known_hosts
from casera.steps.load_balancer import wait_readyz_through_lb
from casera.steps.redis_checks import reachable_cluster
from casera.steps.stack import (
    running_tasks,
    services_converged,
    stack_services,
    wait_services_converged,
)
from casera.steps.summary import monthly_price

MIN_MANAGERS = 3
MAX_MANAGERS = 7
# Services that stay on their node: a node carrying one is never scaled in.
PINNED = ("redis", "dozzle")
# Stateless services a rebalance spreads (one task at a time, under their update_config).
STATELESS = ("api", "worker")
MAX_SERVERS = 9  # params' own bound on hetzner.server_count


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


@dataclass(frozen=True)
class ScaleOutHealth:
    """The scale-out preflight's view of the swarm now: its two checks (name, ok, detail)
    and ``reset``, the down nodes inside the target that this run brings back."""

    checks: list[tuple[str, bool, str]]
    reset: list[str]

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.checks)


def scale_out_health(swarm_nodes: list[dict[str, Any]], target_names: list[str]
                     ) -> ScaleOutHealth:
    """Quorum and node state before a scale-out toward ``target_names`` (the servers
    ``<prefix>-1..target``, which the run's own steps converge).

    A node that is down (Swarm says so; not drained or paused, which an operator chose) and is
    one of ``target_names`` does not stop the run: its SSH step declares it dead after
    ``DEAD_AFTER_S`` of silence with the Swarm's word, hard-resets it and waits for it,
    and its swarm step waits for it to be a ready manager again, as a bootstrap re-run after
    a killed node does. That holds only while the swarm can still change: a majority of the
    managers reachable and a leader (every other unreachable manager must be one of those down
    nodes). A down node outside the target is refused before any change: nothing in this run
    brings it back, so the run could only end red in its verify step."""
    q = quorum(swarm_nodes)
    # A hostname that also has a ready entry is a replaced server's stale entry, not a dead
    # node: nothing to reset, and it stays refused as before.
    ready = {n["hostname"] for n in swarm_nodes if n["state"] == "ready"}
    targets = set(target_names) - ready
    reset = sorted({n["hostname"] for n in swarm_nodes if n["state"] == "down"
                    and n["availability"] == "active" and n["hostname"] in targets})
    unreachable = [n["hostname"] for n in swarm_nodes if n["role"] == "manager"
                   and n.get("reachability") != "reachable"]
    majority = q.leader and q.reachable * 2 > q.managers
    if q.healthy:
        quorum_ok, quorum_detail = True, q.text()
    elif majority and reset and set(unreachable) <= set(reset):
        quorum_ok = True
        quorum_detail = (f"{q.text()}; a majority ({q.reachable} of {q.managers}) is "
                         f"reachable, the unreachable manager(s) ({', '.join(unreachable)}) "
                         "are down inside the target and reset by this run")
    else:
        quorum_ok = False
        others = [n for n in unreachable if n not in reset]
        quorum_detail = q.text() + (
            f"; no majority reachable with a leader: the swarm cannot take a change now "
            f"(restore {q.managers // 2 + 1} of {q.managers} managers first)" if not majority
            else f"; {', '.join(others)} unreachable but not a down node inside the target: "
            "this run would not bring it back")
    refused = not_ready([n for n in swarm_nodes if n["hostname"] not in reset])
    if refused:
        nodes_ok = False
        nodes_detail = ", ".join(refused) + (
            f": not ready and outside what this run brings back (a down node among "
            f"{', '.join(target_names)} is reset; a drained or paused node is an operator's "
            "choice). A dead node outside the target: remove it with the scale-in runbook "
            "(demote, then node rm --force)")
    elif reset and not quorum_ok:
        nodes_ok = False
        nodes_detail = (f"{', '.join(reset)} down (Swarm), inside the target, but the quorum "
                        "check above is red: no reset is tried while the swarm cannot take a "
                        "change")
    elif reset:
        nodes_ok = True
        nodes_detail = (f"{len(swarm_nodes) - len(reset)} of {len(swarm_nodes)} ready and "
                        f"active; {', '.join(reset)} down (Swarm), inside the target: this "
                        "run resets " + ("it" if len(reset) == 1 else "them") + " through "
                        "the bootstrap's path (the SSH step judges a node dead after "
                        f"{DEAD_AFTER_S:.0f} s of silence with the Swarm's word, hard-resets "
                        "it through the API with its disk kept, and the swarm step waits for "
                        "it to be a ready manager again)")
    else:
        nodes_ok, nodes_detail = True, f"all {len(swarm_nodes)}"
    return ScaleOutHealth([("quorum healthy", quorum_ok, quorum_detail),
                           ("nodes ready and active", nodes_ok, nodes_detail)],
                          reset if quorum_ok else [])


def scale_out_refusals(managers: int, nodes: int, target: int, extra_worker: bool) -> list[str]:
    """Why adding nodes up to ``target`` (every new node a manager, or with ``extra_worker``
    one worker) must not go ahead; empty when it may.

    Why a worker and not a fourth manager: Raft needs a majority, so 4 managers tolerate 1
    failure, as 3 do, while one more member must answer every write. A worker adds capacity
    (api and worker tasks) without a vote, so the managers stay odd."""
    if target < nodes:
        return [f"target {target} is below the current {nodes} nodes: that is a scale-in "
                "(runbooks/scale-in.ipynb), not a scale-out"]
    if extra_worker:
        workers = nodes - managers
        if target == nodes and workers == 1:
            return []  # the extra worker is there: a re-run, nothing to add
        if target != nodes + 1:
            return [f"extra_worker adds exactly one worker: target must be {nodes + 1}, "
                    f"got {target}"]
        if workers:
            return [f"the swarm has {workers} worker(s) already: extra_worker adds the one "
                    "extra worker; add managers (an odd count) instead"]
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


def scale_in_quorum(swarm_nodes: list[dict[str, Any]], remove: list[str]
                    ) -> tuple[bool, str]:
    """Whether the swarm can take this scale-in now, and why. Healthy quorum: yes. A manager
    that is already dead (unreachable) is fine only when it is one of the nodes this run
    removes (Docker's path for a lost manager: demote it, then ``node rm --force`` from a
    manager; docs.docker.com/engine/swarm/admin_guide/#forcibly-remove-a-node) and a majority
    of the managers with a leader remains to take those changes. Any other unreachable
    manager is refused: this run would leave it, and the result would not be healthy."""
    q = quorum(swarm_nodes)
    if q.healthy:
        return True, q.text()
    unreachable = sorted(n["hostname"] for n in swarm_nodes if n["role"] == "manager"
                         and n.get("reachability") != "reachable")
    if not (q.leader and q.reachable * 2 > q.managers):
        return False, (f"{q.text()}; no majority reachable with a leader: the swarm cannot "
                       f"take a change now (restore {q.managers // 2 + 1} of {q.managers} "
                       "managers first)")
    others = [n for n in unreachable if n not in remove]
    if others:
        return False, (f"{q.text()}; {', '.join(others)} unreachable and not among the nodes "
                       "to remove: name it too (a dead node is demoted and force-removed), or "
                       "bring it back first (a scale-out re-run resets it)")
    return True, (f"{q.text()}; {', '.join(unreachable)} unreachable and among the nodes to "
                  f"remove: demoted and force-removed (node rm --force) by a majority "
                  f"({q.reachable} of {q.managers})")


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
    """Before adding nodes: quorum healthy, every node Ready and Active (except a node down
    among the target's servers while a majority of managers and a leader remain: the run
    resets it, :func:`scale_out_health`), the target keeps the managers odd (or adds exactly
    one worker when ``extra_worker`` says so) and within ``MAX_MANAGERS``, the server type
    offered at the location, and the monthly cost difference from Hetzner's live prices.
    ``target`` 0: the current count + 2."""
    p = ctx.params
    with timed(StepResult("scale-out preflight", p.cluster_label,
                          dry_run=ctx.dry_run)) as result:
        entries = docker_swarm.nodes(reachable_cluster(ctx).manager)
        q = quorum(entries)
        target = target or len(entries) + (1 if extra_worker else 2)
        result.target = f"{len(entries)} -> {target} nodes"
        # The target's servers (numbered 1..target) are what this run converges, so one of
        # them found down is reset by its SSH step, not a reason to stop (scale_out_health).
        health = scale_out_health(entries, with_count(ctx, target).params.server_names())
        for name, ok, detail in health.checks:
            result.check(name, ok, detail)
        refusals = scale_out_refusals(q.managers, len(entries), target, extra_worker) + (
            role_refusals(entries, workers_for(ctx, target, extra_worker)))
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


def nodes_param(nodes: Any) -> list[str]:
    """The runbook's ``nodes``: a list of server names, or one string of them separated by
    commas (as ``-p nodes=a,b`` gives it)."""
    if isinstance(nodes, str):
        return [n.strip() for n in nodes.split(",") if n.strip()]
    if isinstance(nodes, list | tuple) and all(isinstance(n, str) for n in nodes):
        return [n.strip() for n in nodes if n.strip()]
    raise StepFailed(f"parameter nodes must be server names (a list, or a string separated "
                     f"by commas), got {nodes!r}")


def count_param(count: Any) -> int:
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise StepFailed(f"parameter count must be a whole number of nodes >= 0, got {count!r}")
    return count


@dataclass(frozen=True)
class Removal:
    """What a scale-in removes: ``remove`` (still a swarm node or a server), ``gone`` (named
    but already removed by an earlier run: nothing left to do), ``servers`` (every server
    now, in name order)."""

    remove: list[str]
    gone: list[str]
    servers: list[str]
    workers: list[str] = dataclasses.field(default_factory=list)  # the live swarm's

    @property
    def remaining(self) -> list[str]:
        return [n for n in self.servers if n not in self.remove]


def pick_removal(ctx: RunContext, entries: list[dict[str, Any]],
                 carriers: dict[str, set[str]], nodes: Any, count: Any) -> Removal:
    named, count = nodes_param(nodes), count_param(count)
    servers = current_servers(ctx)
    in_swarm = {n["hostname"] for n in entries}
    if named:
        remove = [n for n in named if n in in_swarm or n in servers]
        gone = [n for n in named if n not in remove and _prefix_number(ctx, n) is not None]
        # A name that is not ours at all stays in remove, so the refusal names it.
        remove += [n for n in named if n not in remove and n not in gone]
    else:
        free = [n["hostname"] for n in sorted(entries, key=lambda n: (
            _prefix_number(ctx, n["hostname"]) or 0, n["hostname"]))
            if not carriers.get(n["hostname"])]
        remove, gone = (free[::-1][:count] if count > 0 else []), []
    return Removal(remove, gone, servers, sorted(n["hostname"] for n in entries
                                                 if n["role"] == "worker"))


def tail_refusals(ctx: RunContext, removal: Removal) -> list[str]:
    """The bootstrap and the scale-out name servers ``<prefix>-1..N``: removing any but the
    highest-numbered would leave a gap that the next bootstrap re-creates."""
    keep = len(removal.servers) - len(removal.remove)
    tail = removal.servers[keep:]
    if sorted(removal.remove) != sorted(tail):
        return [f"remove the highest-numbered servers ({', '.join(tail) or 'none'}), not "
                f"{', '.join(removal.remove)}: servers are named "
                f"{ctx.params.hetzner.name_prefix}-1..N by count, so a gap would be re-created "
                "by the next bootstrap"]
    return []


def preflight_scale_in(ctx: RunContext, nodes: Any = None, count: Any = 0) -> StepResult:
    """Before removing nodes: quorum healthy now (or only the leaving nodes dead, with a
    majority left: :func:`scale_in_quorum`), the result keeps at least ``MIN_MANAGERS``
    managers and an odd count, and no named node carries Redis or Dozzle. ``nodes`` names
    them; else ``count`` picks the highest-numbered servers that carry neither. Named nodes
    an earlier run already removed are reported, not refused, so a re-run converges."""
    p = ctx.params
    with timed(StepResult("scale-in preflight", p.cluster_label,
                          dry_run=ctx.dry_run)) as result:
        nodes_param(nodes or [])
        count_param(count)
        client = reachable_cluster(ctx).manager
        entries = docker_swarm.nodes(client)
        carriers = _carriers(client)
        removal = pick_removal(ctx, entries, carriers, nodes or [], count)
        remove = removal.remove
        result.target = ", ".join(remove) or ("nothing left to remove" if removal.gone
                                              else "no node named")
        if removal.gone:
            result.note("already removed", ", ".join(removal.gone))
        q = quorum(entries)
        result.check("quorum healthy", *scale_in_quorum(entries, remove))
        in_swarm = [n for n in remove if n in {e["hostname"] for e in entries}]
        refusals = (scale_in_refusals(entries, in_swarm, carriers) + tail_refusals(
            ctx, removal) + [f"{n} is not a node of this swarm nor a server of this "
                             f"environment" for n in remove if n not in in_swarm
                             and n not in removal.servers]
                    )
        if not remove and not removal.gone:
            # The runbook's default (and what nbval runs): a green no-op that says why.
            result.reason = "no node named (nodes) and count 0: nothing to remove"
        result.check("nodes to remove", not refusals, "; ".join(refusals) or (
            f"{', '.join(remove) or 'none'}; managers {q.managers} -> "
            f"{q.managers - len(in_swarm)}"))
        ctx.shared["scale_in"] = removal
    return result


# --- the scale-out ---------------------------------------------------------------------------

def api_replicas_for(params: Params, nodes: int, api_replicas: Any = 0) -> int:
    """The api's replicas for ``nodes`` nodes: ``api_replicas`` when the runbook sets it
    (within the seed's range), else params' count, raised to one per node when the api
    publishes its port in host mode (each node then answers the LB only with a task of its
    own: a node without one is an unhealthy target), within the seed's range."""
    low, high = REPLICA_RANGES["api"]
    if not isinstance(api_replicas, int) or isinstance(api_replicas, bool) or not (
            api_replicas == 0 or low <= api_replicas <= high):
        raise StepFailed(f"parameter api_replicas must be 0 (automatic) or {low}..{high}, the "
                         f"seed's range, got {api_replicas!r}")
    if api_replicas:
        return api_replicas
    wanted = params.services.api.replicas
    if params.swarm.publish_mode == "host":
        wanted = max(wanted, nodes)
    return max(low, min(high, wanted))


def with_count(ctx: RunContext, count: int, api_replicas: Any = 0,
               workers: list[str] | None = None) -> RunContext:
    """``ctx`` with ``hetzner.server_count`` set to ``count`` (and the api's replicas as
    :func:`api_replicas_for` says, and ``swarm.workers`` when given): the bootstrap's ensure
    steps then converge that many servers, managers (and workers), allowlist entries and api
    tasks. The run's journal, pools and dry-run plan (``shared``, ``planned``) are the same
    objects, so later steps see what earlier ones made or planned."""
    p = ctx.params
    services = p.services.model_copy(update={"api": p.services.api.model_copy(
        update={"replicas": api_replicas_for(p, count, api_replicas)})})
    swarm = p.swarm if workers is None else p.swarm.model_copy(update={"workers": workers})
    params = p.model_copy(update={
        "hetzner": p.hetzner.model_copy(update={"server_count": count}),
        "services": services, "swarm": swarm})
    return dataclasses.replace(ctx, params=params, planned=ctx.planned, shared=ctx.shared)


def _prefix_number(ctx: RunContext, name: str) -> int | None:
    found = re.fullmatch(re.escape(ctx.params.hetzner.name_prefix) + r"-(\d+)", name)
    return int(found.group(1)) if found else None


def current_servers(ctx: RunContext) -> list[str]:
    """The environment's servers now (by the cluster label), in name order."""
    found = [s.name for s in hetzner.for_env(ctx.params, ctx.secrets).servers.list(
        ctx.params.cluster_label)]
    return sorted(found, key=lambda n: (_prefix_number(ctx, n) or 0, n))


def scale_out_context(ctx: RunContext, target: Any, extra_worker: Any = False,
                      api_replicas: Any = 0) -> RunContext:
    """Check the runbook's ``target`` and ``extra_worker`` before anything is read remotely
    beyond the server list, and return the context whose params name ``target`` servers.
    ``target`` 0: the current server count + 2."""
    if not isinstance(target, int) or isinstance(target, bool) or target < 0:
        raise StepFailed(f"parameter target must be a whole number of nodes (0: current + 2), "
                         f"got {target!r}")
    api_replicas_for(ctx.params, 1, api_replicas)  # a bad value stops here, before any read
    if not isinstance(extra_worker, bool):
        raise StepFailed(f"parameter extra_worker must be true or false, got {extra_worker!r}")
    now = current_servers(ctx)
    numbers = [_prefix_number(ctx, n) for n in now]
    if sorted(n for n in numbers if n) != list(range(1, len(now) + 1)):
        raise StepFailed(f"the servers are not {ctx.params.hetzner.name_prefix}-1.."
                         f"{len(now)} (found {', '.join(now)}): the bootstrap's server step "
                         "names them by count, so a gap would be filled, not grown. Re-run "
                         "the bootstrap or scale-in first; nothing was changed")
    target = target or len(now) + (1 if extra_worker else 2)
    if not 1 <= target <= MAX_SERVERS:
        raise StepFailed(f"parameter target is {target}: params allow 1..{MAX_SERVERS} "
                         "servers (hetzner.server_count)")
    return with_count(ctx, target, api_replicas, workers_for(ctx, target, extra_worker))


def workers_for(ctx: RunContext, target: int, extra_worker: bool) -> list[str]:
    """The workers of a scale-out to ``target``: params' ``swarm.workers`` within the target,
    and with ``extra_worker`` the highest-numbered server (the one it adds, or added on an
    earlier run). The preflight checks this against the live swarm."""
    names = [f"{ctx.params.hetzner.name_prefix}-{i}" for i in range(1, target + 1)]
    workers = [w for w in ctx.params.swarm.workers if w in names]
    if extra_worker and target > 1 and names[-1] not in workers:
        workers.append(names[-1])
    return workers


def role_refusals(swarm_nodes: list[dict[str, Any]], workers: list[str]) -> list[str]:
    """Nodes whose role in the live swarm is not what this run converges (``workers``
    workers, every other node a manager): the join step never changes a member's role, so
    the run would end red. Names the params change or the command that fixes it."""
    live = sorted(n["hostname"] for n in swarm_nodes if n["role"] == "worker")
    stray = [n for n in live if n not in workers]
    promoted = [n["hostname"] for n in swarm_nodes
                if n["hostname"] in workers and n["role"] == "manager"]
    refusals = []
    if stray:
        refusals.append(f"{', '.join(stray)} is a worker but params' swarm.workers does not "
                        f"name it: set swarm.workers: [{', '.join(stray)}] in params "
                        "(or pass extra_worker on the run that keeps it)")
    if promoted:
        refusals.append(f"{', '.join(promoted)} is a manager, not the worker this run asks "
                        "for: drop extra_worker, or demote it first (docker node demote)")
    return refusals


def distribution(client: Any) -> dict[str, dict[str, int]]:
    """ready node hostname -> stack service -> its running tasks there (every ready node
    listed, even with none)."""
    entries = docker_swarm.nodes(client)
    names = {n["id"]: n["hostname"] for n in entries}
    found: dict[str, dict[str, int]] = {n["hostname"]: {} for n in entries
                                        if n["state"] == "ready"}
    ids = {s["id"]: name for name, s in stack_services(client).items()}
    for service_id, tasks in running_tasks(client).items():
        if service_id not in ids:
            continue
        for task in tasks:
            where = found.setdefault(names.get(task.get("NodeID", ""), "?"), {})
            where[ids[service_id]] = where.get(ids[service_id], 0) + 1
    return found


def describe_distribution(spread: dict[str, dict[str, int]]) -> str:
    return "; ".join(f"{node}: " + (", ".join(f"{svc} x{n}" for svc, n in sorted(tasks.items()))
                                    or "nothing") for node, tasks in sorted(spread.items()))


def idle_nodes(spread: dict[str, dict[str, int]], nodes: list[str]) -> list[str]:
    """Nodes among ``nodes`` that run no api or worker task (a planned, not yet existing
    node counts as idle: it will join with nothing)."""
    return [n for n in nodes if not any(spread.get(n, {}).get(s) for s in STATELESS)]


def _update_done(client: Any, service_id: str, replicas: int) -> bool | None:
    """True once the forced update is through: as many running tasks as replicas, each made
    from the service's current ``ForceUpdate`` counter, and Swarm no longer updating. (Right
    after the call the service may still show the *previous* update as completed, so the
    state alone would end the wait before anything moved.)"""
    service = next((s for s in docker_swarm.services(client) if s["id"] == service_id), None)
    if service is None:
        raise StepFailed(f"service {service_id[:12]} disappeared during its rolling update")
    state = service["update_state"]
    if state in ("paused", "rollback_started", "rollback_paused", "rollback_completed"):
        raise StepFailed(f"the forced update of {service['name']} ended {state}: Swarm rolled "
                         "it back or paused it. See `docker service ps "
                         f"{service['name']}`; re-run once the cause is fixed")
    counter = (service["spec"].get("TaskTemplate") or {}).get("ForceUpdate", 0)
    running = running_tasks(client).get(service_id, [])
    fresh = [t for t in running if (t.get("Spec") or {}).get("ForceUpdate", 0) == counter]
    # Not waiting out the update's monitor window (30 s after the last task): the tasks are
    # placed, which is what a rebalance is for; a later rollback still shows in verify_scale.
    return True if len(fresh) == len(running) == replicas else None


# Worker first: the api publishes its port in host mode (one task per node at most), so it
# already runs on as many nodes as it has replicas; Swarm places a task on the node with the
# fewest tasks of its service, then the fewest tasks in all (swarmkit scheduler's nodeLess),
# so the workers' new tasks go to the idle nodes. The api is rolled only if a node is still
# idle after that.
REBALANCE_ORDER = ("worker", "api")


def rebalance(ctx: RunContext, timeout: float = 600) -> StepResult:
    """Spread api and worker over every node when a node runs neither: a forced rolling
    update (``docker service update --force``, one task at a time under the service's
    update_config, so capacity never drops by more than one task) of the worker, then of the
    api only if a node is still idle. Swarm never moves running tasks by itself. Redis and
    Dozzle are pinned by labels and not touched; replica counts stay as params say. Nothing
    to do when every node already carries one."""
    p = ctx.params
    with timed(StepResult("rebalance", ", ".join(STATELESS), dry_run=ctx.dry_run)) as result:
        nodes = p.server_names()
        client = reachable_cluster(ctx).manager
        spread = distribution(client)
        idle = idle_nodes(spread, nodes)
        result.note("before", describe_distribution(spread))
        services = stack_services(client)
        missing = [s for s in STATELESS if s not in services]
        if missing:
            raise StepFailed(f"the stack has no {', '.join(missing)} service: run the "
                             "bootstrap's stack step first")

        def roll(name: str) -> None:
            replicas = getattr(p.services, name).replicas
            sid = services[name]["id"]
            docker_swarm.force_update(client, sid)
            wait_for(f"the forced rolling update of {name} ({replicas} task(s), one at a "
                     "time)", lambda: _update_done(client, sid, replicas), timeout)

        def roll_all() -> None:
            roll(REBALANCE_ORDER[0])
            for name in REBALANCE_ORDER[1:]:
                still = idle_nodes(distribution(client), nodes)
                if not still:
                    return
                result.diff.append(f"~ {name}: forced rolling update (still idle: "
                                   f"{', '.join(still)})")
                result.changed += 1
                roll(name)

        plan = Plan()
        if idle:
            first = REBALANCE_ORDER[0]
            plan.add(f"~ {first}: forced rolling update, "
                     f"{getattr(p.services, first).replicas} task(s) one at a time "
                     f"(idle: {', '.join(idle)})", roll_all)
            plan.show(f"  then {', '.join(REBALANCE_ORDER[1:])} only if a node is still idle; "
                      f"unchanged: {', '.join(PINNED)} (pinned by node labels)")
        else:
            result.reason = "every node runs an api or worker task"
        if apply(ctx, result, plan).dry_run:
            return result
        after = distribution(client)
        result.note("after", describe_distribution(after))
        still = idle_nodes(after, nodes)
        result.check("every node runs api or worker", not still,
                     f"all {len(nodes)}" if not still else f"idle: {', '.join(still)}")
        for name in STATELESS:
            wanted = getattr(p.services, name).replicas
            have = sum(t.get(name, 0) for t in after.values())
            result.check(f"{name} replicas", have == wanted, f"{have} running, params say "
                         f"{wanted}")
    return result


def target_health(ctx: RunContext) -> dict[str, list[str]]:
    """server name -> the LB's health status per service on it."""
    hz = hetzner.for_env(ctx.params, ctx.secrets)
    lb = hz.load_balancers.get(ctx.params.load_balancer.name)
    if lb is None:
        raise StepFailed(f"no load balancer {ctx.params.load_balancer.name}: run the "
                         "bootstrap's load balancer step first")
    names = {s.id: s.name for s in hz.servers.list(ctx.params.cluster_label)}
    return {names.get(sid, f"server {sid}"): statuses
            for sid, statuses in hz.load_balancers.target_health(lb).items()}


def verify_lb_targets(ctx: RunContext, timeout: float = 180) -> StepResult:
    """The LB's targets are exactly the servers, each healthy on every service. Its targets
    are the cluster label, so a new server is a target as soon as it exists; healthy means
    its api answers /readyz on the node."""
    p = ctx.params
    with timed(StepResult("load balancer targets", p.load_balancer.name,
                          dry_run=ctx.dry_run)) as result:
        if not p.load_balancer.enabled:
            result.reason = f"off in params/{ctx.env}.yaml (load_balancer.enabled: false)"
            return result
        if ctx.dry_run:
            result.reason = "health not checked in a dry run"
            return result
        wanted = set(current_servers(ctx))

        def all_healthy() -> dict[str, list[str]] | None:
            health = target_health(ctx)
            ok = set(health) == wanted and all(
                s and all(x == "healthy" for x in s) for s in health.values())
            return health if ok else None

        try:
            health = wait_for(f"{len(wanted)} healthy targets of {p.load_balancer.name}",
                              all_healthy, timeout)
        except CaseraError:
            health = target_health(ctx)
        healthy = sorted(n for n, s in health.items() if s and all(x == "healthy" for x in s))
        result.check("targets", set(health) == wanted,
                     f"{len(health)}: {', '.join(sorted(health))}")
        result.check("healthy targets", set(healthy) == wanted,
                     f"{len(healthy)} of {len(wanted)}" + (
                         "" if set(healthy) == wanted else ": " + ", ".join(
                             f"{n} {'/'.join(s) or 'no status'}" for n, s in
                             sorted(health.items()) if n not in healthy)))
    return result


def verify_scale(ctx: RunContext, timeout: float = 120) -> StepResult:
    """After a scale: every server a ready manager (quorum and how many failures it
    tolerates), the stack at its replicas, api and worker per node, and /readyz green through
    the LB. Names the params change that makes the new count the bootstrap's."""
    p = ctx.params
    with timed(StepResult("scale verified", f"{p.hetzner.server_count} nodes",
                          dry_run=ctx.dry_run)) as result:
        if ctx.dry_run:
            result.reason = "nothing to verify in a dry run"
            return result
        client = reachable_cluster(ctx).manager
        entries = docker_swarm.nodes(client)
        q = quorum(entries)
        result.check("quorum", q.healthy and q.managers == len(p.manager_names())
                     and q.managers % 2 == 1, q.text())
        late = not_ready(entries)
        result.check("nodes ready and active", not late,
                     f"all {len(entries)}" if not late else ", ".join(late))
        counts = wait_services_converged(client, p, timeout)
        result.check("services at their replicas", bool(counts),
                     ", ".join(f"{k} {v}" for k, v in counts.items()))
        spread = distribution(client)
        result.note("distribution", describe_distribution(spread))
        idle = idle_nodes(spread, p.server_names())
        result.check("every node runs api or worker", not idle,
                     "yes" if not idle else f"idle: {', '.join(idle)}")
        answered = wait_readyz_through_lb(ctx, timeout, "the database and Redis")
        result.check("/readyz through the LB", bool(answered), f"through {answered}")
        result.note("params", f"set hetzner.server_count: {p.hetzner.server_count}"
                    + (f", swarm.workers: [{', '.join(p.swarm.workers)}]"
                       if p.swarm.workers else "")
                    + f" and services.api.replicas: {p.services.api.replicas} in "
                    f"params/{ctx.env}.yaml so the bootstrap and health converge this count")
    return result


# --- the scale-in ----------------------------------------------------------------------------

def scale_in_removal(ctx: RunContext) -> Removal:
    """What the scale-in preflight of this run decided (never re-picked: a count-based pick
    after the first removals would choose other nodes)."""
    found = ctx.shared.get("scale_in")
    if not isinstance(found, Removal):
        raise StepFailed("run the scale-in preflight first: it decides which nodes go")
    return found


def scale_in_contexts(ctx: RunContext, api_replicas: Any = 0
                      ) -> tuple[RunContext, RunContext]:
    """(every server now, the servers that stay) as contexts for the bootstrap's steps; the
    api's replicas in the second are those for the nodes that stay."""
    removal = scale_in_removal(ctx)
    return (with_count(ctx, len(removal.servers), 0, removal.workers),
            with_count(ctx, len(removal.remaining), api_replicas,
                       [w for w in removal.workers if w in removal.remaining]))


def _entries(client: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    return {e["hostname"]: e for e in docker_swarm.nodes(client) if e["hostname"] in names}


def _tasks_on(client: Any, node_id: str) -> int:
    """Containers still running on the node, draining ones included (a task told to shut
    down keeps serving through the api's graceful stop)."""
    return sum(1 for t in docker_swarm.tasks(client, {"node": node_id})
               if t["Status"]["State"] in ("running", "starting", "preparing", "assigned"))


def drain_nodes(ctx: RunContext, timeout: float = 600) -> StepResult:
    """Each leaving node drained in turn, and waited for: its tasks stopped (the api's
    graceful stop turns its /readyz red first, so the LB stops sending before it goes) and
    every service back at its replicas elsewhere. A node that is down has nothing to wait
    for: Swarm already runs its tasks elsewhere."""
    all_ctx, rest_ctx = scale_in_contexts(ctx)
    removal = scale_in_removal(ctx)
    with timed(StepResult("drain", ", ".join(removal.remove) or "nothing",
                          dry_run=ctx.dry_run)) as result:
        client = reachable_cluster(all_ctx).manager
        entries = _entries(client, removal.remove)
        plan = Plan()
        for name in removal.remove:
            entry = entries.get(name)
            if entry is None or entry["availability"] == "drain":
                continue

            def drain(e: dict[str, Any] = entry) -> None:
                docker_swarm.set_node_availability(client, e["id"], "drain")
                if e["state"] == "ready":
                    wait_for(f"{e['hostname']}'s tasks to stop (drained)",
                             lambda: _tasks_on(client, e["id"]) == 0, timeout)
                wait_services_converged(client, rest_ctx.params, timeout,
                                        "every service at its replica count on the other "
                                        "nodes")

            plan.add(f"~ drain {name} ({entry['state']}) and wait for its tasks elsewhere",
                     drain)
        if not plan:
            result.reason = "every leaving node is drained or gone"
        if apply(ctx, result, plan).dry_run:
            return result
        for name, entry in _entries(client, removal.remove).items():
            left = _tasks_on(client, entry["id"]) if entry["state"] == "ready" else 0
            result.check(f"{name} drained", entry["availability"] == "drain" and left == 0,
                         f"{entry['availability']}, {left} task(s) running")
        counts = services_converged(client, rest_ctx.params)
        result.check("services at their replicas", bool(counts),
                     ", ".join(f"{k} {v}" for k, v in (counts or {}).items()) or
                     "not every service runs its replicas")
    return result


def verify_lb_left(ctx: RunContext, timeout: float = 120) -> StepResult:
    """The LB sends the leaving nodes nothing. Its targets are the cluster label, so a
    server stays listed until it is deleted; a drained node has no api, its health check is
    red, and Hetzner's LB sends traffic only to healthy targets (docs.hetzner.com/cloud/
    load-balancers/overview: "only healthy targets receive traffic"; the local LB does the
    same)."""
    p = ctx.params
    removal = scale_in_removal(ctx)
    with timed(StepResult("load balancer: leaving targets", ", ".join(removal.remove)
                          or "nothing", dry_run=ctx.dry_run)) as result:
        if not p.load_balancer.enabled or ctx.dry_run or not removal.remove:
            result.reason = ("off in params" if not p.load_balancer.enabled else
                             "not checked in a dry run" if ctx.dry_run else "nothing leaves")
            return result

        def none_healthy() -> dict[str, list[str]] | None:
            health = target_health(ctx)
            return health if not any("healthy" in health.get(n, []) for n in
                                     removal.remove) else None

        try:
            health = wait_for(f"the LB to mark {', '.join(removal.remove)} unhealthy",
                              none_healthy, timeout)
        except CaseraError:
            health = target_health(ctx)
        for name in removal.remove:
            status = health.get(name, [])
            result.check(f"{name} gets no traffic", "healthy" not in status,
                         "/".join(status) or "not a target")
    return result


def force_remove(client: Any, entry: dict[str, Any], timeout: float) -> None:
    """A dead node's way out (it cannot leave by itself): demoted when a manager, waited for
    until it is out of the Raft group (no manager status: the managers removed it from the
    group, which they do only while a majority remains), then ``node rm --force``. Removing
    it before the demotion is through is refused by Docker ("must be demoted")."""
    if entry["role"] == "manager":
        docker_swarm.demote_node(client, entry["id"])
        wait_for(f"{entry['hostname']} out of the managers' Raft group (demoted)", lambda: all(
            e["reachability"] is None for e in docker_swarm.nodes(client)
            if e["id"] == entry["id"]), timeout)
    docker_swarm.remove_node(client, entry["id"], demote=False)


def remove_from_swarm(ctx: RunContext, timeout: float = 120) -> StepResult:
    """Each leaving node demoted (the managers' quorum is counted without it), then it
    leaves the swarm itself and its entry is removed from a manager (``docker node rm``).
    A node that is down cannot leave: it is demoted and its entry force-removed, Docker's
    documented path for a lost manager (docs.docker.com/engine/swarm/admin_guide/
    #forcibly-remove-a-node)."""
    all_ctx, _ = scale_in_contexts(ctx)
    removal = scale_in_removal(ctx)
    with timed(StepResult("swarm: remove nodes", ", ".join(removal.remove) or "nothing",
                          dry_run=ctx.dry_run)) as result:
        cluster = reachable_cluster(all_ctx)
        client = cluster.manager
        plan = Plan(gate_title="Swarm: demote and remove node(s)")
        for name, entry in _entries(client, removal.remove).items():
            node_id = entry["id"]
            if entry["state"] != "ready" or name not in cluster.clients:
                plan.add(f"- {name} ({entry['state']}, unreachable): demote, then node rm "
                         "--force from a manager",
                         functools.partial(force_remove, client, entry, timeout),
                         destructive=True)
                continue
            own = cluster.clients[name]
            if entry["role"] == "manager":
                def demote(i: str = node_id, c: Any = own, n: str = name) -> None:
                    docker_swarm.demote_node(client, i)
                    wait_for(f"{n} to see itself a worker",
                             lambda: not docker_swarm.swarm_state(c)["manager"], timeout)

                plan.add(f"~ demote {name}", demote, destructive=True)

            def leave(i: str = node_id, c: Any = own, n: str = name) -> None:
                docker_swarm.leave_swarm(c)
                wait_for(f"the managers to see {n} down after it left", lambda: next(
                    (e["state"] != "ready" for e in docker_swarm.nodes(client)
                     if e["id"] == i), True), timeout)
                docker_swarm.remove_node(client, i, demote=False)

            plan.add(f"- {name} leaves the swarm, then node rm from a manager", leave,
                     destructive=True)
        if not plan:
            result.reason = "no leaving node is in the swarm"
        if apply(ctx, result, plan).dry_run:
            return result
        entries = docker_swarm.nodes(client)
        still = sorted(e["hostname"] for e in entries if e["hostname"] in removal.remove)
        result.check("left the swarm", not still, ", ".join(still) or "all")
        q = quorum(entries)
        result.check("quorum", q.healthy and q.managers % 2 == 1, q.text())
    return result


def delete_servers(ctx: RunContext, timeout: float = 300) -> StepResult:
    """The leaving servers deleted (their disks with them), behind the gate, and their
    host keys unpinned from ``params/<env>.known_hosts``."""
    removal = scale_in_removal(ctx)
    p = ctx.params
    with timed(StepResult("servers: delete", ", ".join(removal.remove) or "nothing",
                          dry_run=ctx.dry_run)) as result:
        hz = hetzner.for_env(p, ctx.secrets)
        existing = {s.name: s for s in hz.servers.list(p.cluster_label)}
        known = known_hosts(ctx)
        plan = Plan(gate_title="Servers: delete (destroys their disks)")
        for name in removal.remove:
            if name in existing:
                plan.add(f"- server {name} ({existing[name].ipv4}): deleted with its disk",
                         functools.partial(hz.servers.delete, existing[name]),
                         destructive=True)
        # A pin left by an earlier run that stopped between the delete and the unpin.
        pinned = [n for n in removal.remove + removal.gone if n not in existing
                  and n in known.names()]
        for name in pinned:
            plan.add(f"- host key pin of {name}", functools.partial(known.unpin, name))
        if not plan:
            result.reason = "no leaving server exists"
        applied = apply(ctx, result, plan)
        if applied.dry_run:
            return result
        hetzner.wait_for([a for a in applied.made if isinstance(a, hetzner.Action)],
                         "server deletions", timeout)
        for name in removal.remove:
            if name in existing:
                known.unpin(name)
        left = {s.name for s in hz.servers.list(p.cluster_label)}
        gone = [n for n in removal.remove if n not in left]
        result.check("deleted", len(gone) == len(removal.remove),
                     ", ".join(gone) or "none" if len(gone) == len(removal.remove) else
                     f"still there: {', '.join(sorted(set(removal.remove) - set(gone)))}")
    return result
