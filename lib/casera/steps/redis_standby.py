"""The optional warm standby (params ``redis.standby``): a Redis replica that runs all the
time on a node other than Redis' own, so losing Redis' node promotes it (RPO: the replication
lag) instead of restoring the newest B2 snapshot (RPO: up to the backup interval).

The standby is the service ``casera-redis-standby``, outside the stack (the stack file knows
nothing of it, so a ``docker stack deploy`` leaves it alone): the stack's Redis image, one
task pinned by hostname, on the node's ``casera-redis-data`` volume (so a promotion leaves the
data exactly where the stack's ``redis`` task will look for it), ``--appendonly no`` (a
promoted standby's volume must hold a ``dump.rdb`` and no ``appendonlydir``, or the stack's
Redis would not load it: docs/facts.md#redis-and-asynq; the promotion also clears anything but
the ``dump.rdb`` it saved), restarted on failure, replicating from
``redis`` over the overlay. A stale volume on the chosen node is emptied before the standby
starts: a replica full-syncs anyway, and an old ``appendonlydir`` there would be the trap above.

Not reconciled here: where Redis itself runs (the failover runbook), and the standby's Redis
settings beyond the ones above (it takes the image's config, like the stack's Redis).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial

from casera.context import RunContext
from casera.errors import CaseraError, StepFailed
from casera.plan import Plan, apply
from casera.progress import wait_for
from casera.providers import docker_swarm, redis_db
from casera.result import StepResult, timed
from casera.steps.redis_checks import REDIS_PORT, ServiceTask, reachable_cluster, running_task
from casera.steps.redis_failover import VOLUME, _empty_stale_volume, _replica_spec, _task_client
from casera.steps.swarm import REDIS_LABEL, Cluster

STANDBY_SERVICE = "casera-redis-standby"
ROLE_LABEL = {"casera.role": "redis-standby"}
_PINNED = re.compile(r"^node\.hostname\s*==\s*(\S+)$")


@dataclass(frozen=True)
class Standby:
    """The standby service as Swarm has it: the node its constraint pins it to."""

    service_id: str
    node: str


def find_standby(cluster: Cluster) -> Standby | None:
    for service in docker_swarm.services(cluster.manager):
        if service["name"] == STANDBY_SERVICE:
            constraints = (service["spec"].get("TaskTemplate", {}).get("Placement") or {}
                           ).get("Constraints") or []
            nodes = [m.group(1) for c in constraints if (m := _PINNED.match(c.strip()))]
            return Standby(service["id"], nodes[0] if nodes else "")
    return None


def ready_nodes(ctx: RunContext, cluster: Cluster) -> list[str]:
    """Servers (params order) that Swarm sees ready and active and whose engine answers."""
    entries = {e["hostname"]: e for e in docker_swarm.nodes(cluster.manager)}
    return [n for n in ctx.params.server_names() if n in cluster.clients
            and entries.get(n, {}).get("state") == "ready"
            and entries.get(n, {}).get("availability") == "active"]


def redis_node(cluster: Cluster) -> str | None:
    """The one node with the Redis label (None when none or several)."""
    labelled = [e["hostname"] for e in docker_swarm.nodes(cluster.manager)
                if e["labels"].get(REDIS_LABEL) == "true"]
    return labelled[0] if len(labelled) == 1 else None


def choose_node(names: list[str], redis_on: str | None, ready: list[str],
                current: str | None) -> str | None:
    """Where the standby belongs: where it is, if that node is ready and not Redis' own;
    else the first ready server (params order) other than Redis'; None when there is none."""
    if current and current in ready and current != redis_on:
        return current
    return next((n for n in names if n in ready and n != redis_on), None)


@dataclass(frozen=True)
class StandbyDecision:
    remove: bool  # the existing standby goes
    create_on: str | None  # a new standby on this node
    reason: str


def decide(want: bool, current: str | None, redis_on: str | None, ready: list[str],
           names: list[str]) -> StandbyDecision:
    """What :func:`ensure_redis_standby` does, from the facts it read (no I/O: unit-tested).
    ``current`` is the standby's node ('' for a standby not pinned to one), None for none."""
    if not want:
        if current is None:
            return StandbyDecision(False, None, "redis.standby is false and there is none")
        return StandbyDecision(True, None, "redis.standby is false")
    node = choose_node(names, redis_on, ready, current)
    if node is None:
        raise StepFailed(f"redis.standby is true but no ready node other than Redis' "
                         f"({redis_on or '?'}) can hold it; ready: {', '.join(ready) or 'none'}")
    if current == node:
        return StandbyDecision(False, None, f"standby on {node}")
    why = ("none yet" if current is None else
           f"it is on {current}, Redis' own node" if current == redis_on else
           f"its node {current or '?'} is not ready")
    return StandbyDecision(current is not None, node, f"{why}: a new one on {node}")


def standby_task(ctx: RunContext, cluster: Cluster) -> ServiceTask | None:
    """The standby's running task, where its node's engine answers (None otherwise)."""
    if find_standby(cluster) is None:
        return None  # Docker answers a task filter on a missing service with 404
    hostnames = {n["id"]: n["hostname"] for n in docker_swarm.nodes(cluster.manager)}
    for task in docker_swarm.tasks(cluster.manager, {"service": STANDBY_SERVICE,
                                                     "desired-state": "running"}):
        status = task.get("Status") or {}
        cid = (status.get("ContainerStatus") or {}).get("ContainerID")
        node = hostnames.get(task.get("NodeID", ""), "")
        if status.get("State") == "running" and cid and node in cluster.clients:
            return ServiceTask(STANDBY_SERVICE, node, cluster.nodes[node], cid,
                               cluster.clients[node])
    return None


@dataclass(frozen=True)
class StandbySync:
    """The standby as the master reports it (INFO replication), or why it cannot say."""

    online: bool
    lag_s: int | None  # seconds since the standby's last ACK, as the master counts them
    behind_bytes: int | None  # master_repl_offset minus the standby's acknowledged offset
    detail: str


def sync_state(ctx: RunContext, cluster: Cluster) -> StandbySync:
    """Read the master's INFO replication and find the standby's entry by its addresses."""
    task = standby_task(ctx, cluster)
    if task is None:
        return StandbySync(False, None, None, "no running standby task")
    master = running_task(ctx, "redis")
    if master is None:
        return StandbySync(False, None, None, "no running redis task to replicate from")
    addresses = docker_swarm.container_addresses(task.client, task.container_id)
    with _task_client(ctx, master) as client:
        info = redis_db.replication(client)
    offset = int(info.get("master_repl_offset", 0))
    for key, entry in info.items():
        if key.startswith("slave") and isinstance(entry, dict) and entry.get("ip") in addresses:
            online = entry.get("state") == "online"
            behind = offset - int(entry.get("offset", 0))
            lag = int(entry.get("lag", -1))
            return StandbySync(online, lag, behind,
                               f"{entry.get('state')} on {task.node}, lag {lag} s, "
                               f"{behind} bytes behind the master's offset {offset}")
    return StandbySync(False, None, None, f"the master on {master.node} lists no replica at "
                       f"{', '.join(sorted(addresses)) or '?'} (standby on {task.node})")


def _create(ctx: RunContext, cluster: Cluster, node: str, timeout: float) -> str:
    spec = _replica_spec(cluster)
    service_id = docker_swarm.create_pinned_service(
        cluster.manager, STANDBY_SERVICE, spec["image"],
        ["redis-server", "--appendonly", "no", "--replicaof", "redis", str(REDIS_PORT)],
        node, spec["network"], spec["user"], VOLUME, "/data", ROLE_LABEL,
        restart="on-failure")
    wait_for(f"{STANDBY_SERVICE} running on {node}",
             lambda: standby_task(ctx, reachable_cluster(ctx)), timeout)
    return service_id


def remove_standby(ctx: RunContext, cluster: Cluster, service_id: str) -> None:
    """Remove the service and wait until no container of it is left on any reachable node,
    so nothing else starts on its volume while it still runs."""
    docker_swarm.remove_service(cluster.manager, service_id)
    for name, client in cluster.clients.items():
        wait_for(f"{STANDBY_SERVICE}'s container on {name} to be removed",
                 lambda c=client: not docker_swarm.containers_of_service(c, STANDBY_SERVICE),
                 60, show=False)


def _empty_volume(cluster: Cluster, node: str) -> None:
    _empty_stale_volume(cluster, cluster.clients[node])


def ensure_redis_standby(ctx: RunContext, timeout: float = 300) -> StepResult:
    """The standby as params say (``redis.standby``): when true, one in sync on a ready node
    other than Redis'; when false, none. Re-run when it is so: 0 changes."""
    want = ctx.params.redis.standby
    with timed(StepResult("redis standby", "wanted" if want else "not wanted",
                          dry_run=ctx.dry_run)) as result:
        plan = Plan(gate_title="Redis standby: empty a stale volume for a new replica")
        try:
            cluster = reachable_cluster(ctx)
        except CaseraError as exc:
            cluster = None
            if not ctx.dry_run:
                raise StepFailed(f"no swarm answers ({exc}): run the bootstrap's swarm and "
                                 "stack steps first") from exc
        if cluster is None or cluster.leader is None:
            if not ctx.dry_run:
                raise StepFailed("no swarm manager answers: run the bootstrap's swarm and "
                                 "stack steps first")
            if want:
                plan.add(f"+ service {STANDBY_SERVICE}: a replica of redis on a node other "
                         "than Redis' (<node known after apply>)")
            result.reason = "no swarm yet: planned on what the earlier steps would make"
            apply(ctx, result, plan)
            return result
        existing = find_standby(cluster)
        redis_on = redis_node(cluster)
        ready = ready_nodes(ctx, cluster)
        decision = decide(want, existing.node if existing else None, redis_on, ready,
                          ctx.params.server_names())
        result.reason = decision.reason
        if decision.remove and existing is not None:
            plan.add(f"- service {STANDBY_SERVICE} on {existing.node or '?'} ({decision.reason})",
                     partial(remove_standby, ctx, cluster, existing.service_id))
        node = decision.create_on
        if node is not None:
            if VOLUME in docker_swarm.volume_names(cluster.clients[node]):
                plan.add(f"- contents of volume {VOLUME} on {node}: stale (no Redis runs "
                         "there; the replica full-syncs anyway)",
                         partial(_empty_volume, cluster, node), destructive=True)
            plan.add(f"+ service {STANDBY_SERVICE} on {node}: a replica of redis"
                     f"{f' ({redis_on})' if redis_on else ''}, AOF off, restarted on failure, "
                     f"on its volume {VOLUME}",
                     partial(_create, ctx, cluster, node, timeout))
        if apply(ctx, result, plan).dry_run:
            return result
        cluster = reachable_cluster(ctx)
        if want:
            sync = wait_for(f"{STANDBY_SERVICE} in sync with redis (the master lists it online)",
                            lambda: (s if (s := sync_state(ctx, cluster)).online else None),
                            timeout)
            result.check("standby in sync", sync.online, sync.detail)
            task = standby_task(ctx, cluster)
            ctx.shared["redis_standby"] = {"node": task.node if task else None,
                                           "lag_s": sync.lag_s,
                                           "behind_bytes": sync.behind_bytes}
        else:
            left = find_standby(cluster)
            result.check("no standby", left is None,
                         f"{STANDBY_SERVICE} on {left.node}" if left else "none")
    return result


def verify_redis_standby(ctx: RunContext) -> StepResult:
    """Read-only (health): the standby matches params, and its lag as the master reports it.
    Red when params want one and it is missing or not in sync, or when there is one that
    params do not want."""
    want = ctx.params.redis.standby
    with timed(StepResult("redis standby", "wanted" if want else "not wanted",
                          dry_run=ctx.dry_run)) as result:
        cluster = reachable_cluster(ctx)
        existing = find_standby(cluster)
        if not want:
            result.check("matches params", existing is None,
                         "none, as redis.standby: false says" if existing is None else
                         f"{STANDBY_SERVICE} on {existing.node} but redis.standby is false; "
                         f"fix: casera run bootstrap --env {ctx.env}")
            return result
        redis_on = redis_node(cluster)
        result.check("matches params", existing is not None and bool(existing.node)
                     and existing.node != redis_on,
                     f"on {existing.node}" + (" (Redis' own node)" if existing.node == redis_on
                                              else "")
                     if existing else f"missing; fix: casera run bootstrap --env {ctx.env}")
        sync = sync_state(ctx, cluster)
        result.check("in sync", sync.online, sync.detail)
        if sync.lag_s is not None:
            result.note("lag", f"{sync.lag_s} s since its last ACK, {sync.behind_bytes} bytes "
                        "behind (INFO replication on the master)")
    return result
