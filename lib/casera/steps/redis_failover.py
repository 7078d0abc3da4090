"""Moving Redis to another node with no lost write (the failover runbook's ``planned`` mode).

Redis is one task pinned by the node label ``casera.redis`` to the node that holds its named
volume. Moving the label alone loses everything: a named volume is created EMPTY on the node a
task lands on. So the data goes first, through Redis' own replication:

1. a temporary replica (service ``casera-redis-move``, the stack's Redis image) starts on the
   target with the target's ``casera-redis-data`` volume, ``--appendonly no``, replicating
   from ``redis``; a stale volume left there by an earlier move is emptied first (it could
   hold an ``appendonlydir``, which Redis would load instead of the new snapshot);
2. once it is in sync, writes are paused on the master (``CLIENT PAUSE WRITE``: clients wait,
   reads go on) and the replica's offset must equal the master's; the pause does not stop
   the master's periodic replication PING (14 bytes of offset each), so its period is raised
   to an hour for the switch and put back if the switch fails;
3. the replica ``SAVE``s: the target's volume now holds a ``dump.rdb`` of every write and no
   ``appendonlydir`` (the image's entrypoint then loads it with AOF off and turns AOF on,
   docs/facts.md#redis-and-asynq); the replica is stopped (``SHUTDOWN NOSAVE``) and its
   container must have stopped before anything else starts on that volume (never two Redis
   servers on one volume); its service is removed at the end;
4. the label moves: Swarm stops the old task (its constraint no longer holds) and starts the
   stack's Redis on the target from that volume; the old master's last offset is read until
   it stops, and must still be the saved one (no write slipped in after the pause).

Not reconciled here: ``swarm.redis_node`` in params. The bootstrap sets the label from it, so
after a move the operator sets it to the new node (the step says so), or the next bootstrap
moves the label back onto a stale volume.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from casera.context import RunContext
from casera.errors import CaseraError, StepFailed, WaitTimeout
from casera.plan import Plan, apply
from casera.progress import wait_for
from casera.providers import b2, docker_swarm, hetzner, redis_db, ssh, ssh_tunnel
from casera.result import StepResult, timed
from casera.steps.access import node_ssh
from casera.steps.load_balancer import wait_readyz_through_lb
from casera.steps.redis_checks import (
    REDIS_PORT,
    ServiceTask,
    reachable_cluster,
    running_task,
)
from casera.steps.stack import STACK
from casera.steps.swarm import REDIS_LABEL, Cluster

MOVE_SERVICE = "casera-redis-move"
VOLUME = "casera-redis-data"
# Long enough to cover the SAVE, the label move and the old task's stop; checked afterwards.
PAUSE_MS = 60_000
# The master's replication PING period (s), raised for the pause (see _switch). The old
# master goes with the switch; the new one starts with the image's default again.
PING_PERIOD = "repl-ping-replica-period"
PING_PERIOD_PAUSED = 3600


@dataclass
class MoveState:
    """What the move measured, filled in as its changes run."""

    source: str
    target: str
    keys_before: int | None = None
    offset_saved: int | None = None
    old_last_offset: int | None = None
    paused_at: float | None = None
    old_gone_at: float | None = None
    new_ready_at: float | None = None
    keys_after: int | None = None  # what the new Redis loaded (its log), before any write
    keys_now: int | None = None
    notes: list[str] = field(default_factory=list)


def _labelled(cluster: Cluster) -> tuple[list[str], dict[str, dict[str, Any]]]:
    entries = {e["hostname"]: e for e in docker_swarm.nodes(cluster.manager)}
    return sorted(h for h, e in entries.items() if e["labels"].get(REDIS_LABEL) == "true"), entries


@contextmanager
def _task_client(ctx: RunContext, task: ServiceTask,
                 retries: bool = True) -> Iterator[redis_db.Client]:
    """redis-py on one task's Redis, through an SSH tunnel to its node's gwbridge address."""
    address = wait_for(f"{task.service} on {task.node} to have a docker_gwbridge address",
                       lambda: docker_swarm.gateway_address(task.client, task.container_id),
                       30, show=False)
    with ExitStack() as stack:
        host, port = stack.enter_context(ssh_tunnel.forward(
            node_ssh(ctx, task.node, task.node_ip), address, REDIS_PORT))
        client = redis_db.connect(host, port, timeout=5, retries=retries)
        stack.callback(client.close)
        yield client


def _service_task(ctx: RunContext, cluster: Cluster, service_name: str,
                  node: str) -> ServiceTask | None:
    """The running task of the (non-stack) service ``service_name`` on ``node``."""
    for task in docker_swarm.tasks(cluster.manager, {"service": service_name,
                                                     "desired-state": "running"}):
        status = task.get("Status") or {}
        cid = (status.get("ContainerStatus") or {}).get("ContainerID")
        if status.get("State") == "running" and cid:
            return ServiceTask(service_name, node, cluster.nodes[node], cid, cluster.clients[node])
    return None


MODES = ("planned", "node-lost")


def target_node(ctx: RunContext, target: str = "") -> str:
    """The node Redis should be on: ``target`` when given, else params' ``swarm.redis_node``
    (so the runbook with no target converges Redis onto where params put it)."""
    return target or ctx.params.server_names()[ctx.params.swarm.redis_node - 1]


def check_mode(ctx: RunContext, mode: str) -> StepResult:
    """Refuse a mode this runbook does not have, before anything is read or changed."""
    with timed(StepResult("failover mode", mode, dry_run=ctx.dry_run)) as result:
        if mode not in MODES:
            raise StepFailed(f"mode {mode!r} is not one of {', '.join(MODES)} (runbook "
                             "parameter mode)")
        result.reason = {"planned": "move Redis to a healthy node with no lost write",
                         "node-lost": "fence the lost Redis node, then promote the warm "
                                      "standby, or restore the newest B2 snapshot on a healthy "
                                      "node"}[mode]
    return result


SETTLE_S = 30.0


def _settled(cluster: Cluster, node: str) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """``_labelled``, once ``node``'s state is known: a newly elected Swarm leader reports
    every node ``unknown`` until it reports in again (seconds after a manager was lost or came
    back), and judging then would refuse a healthy target. Bounded: still unknown after
    SETTLE_S, the caller judges what it sees."""
    def known() -> tuple[list[str], dict[str, dict[str, Any]]] | None:
        labelled, entries = _labelled(cluster)
        entry = entries.get(node)
        return None if entry is not None and entry["state"] == "unknown" else (labelled, entries)

    try:
        return wait_for(f"Swarm to know the state of node {node} (after a leader change)",
                        known, SETTLE_S, show=False)
    except WaitTimeout:
        return _labelled(cluster)


def check_planned_move(ctx: RunContext, target: str = "") -> StepResult:
    """Read-only, before any change: ``target`` is one of this environment's servers, a ready
    and active Swarm node, and Redis runs healthy on its labelled node. A red check stops the
    run here, so a move onto a node that is down is refused before anything changed."""
    target = target_node(ctx, target)
    with timed(StepResult("redis move check", f"-> {target}", dry_run=ctx.dry_run)) as result:
        names = ctx.params.server_names()
        if target not in names:
            raise StepFailed(f"target {target!r} is not a server of env {ctx.env}; pass one of "
                             f"{', '.join(names)} (runbook parameter target)")
        cluster = reachable_cluster(ctx)
        labelled, entries = _settled(cluster, target)
        entry = entries.get(target)
        ok = entry is not None and entry["state"] == "ready" and entry["availability"] == "active"
        result.check(f"target {target} up", ok,
                     f"Swarm node {entry['state']}, {entry['availability']}" if entry else
                     "not a Swarm node (is the server running?)")
        result.check("redis label on one node", len(labelled) == 1,
                     ", ".join(labelled) or "no node has casera.redis")
        task = running_task(ctx, "redis")
        result.check("redis task running", task is not None and task.node in labelled,
                     f"on {task.node}" if task else "no running redis task")
        if task is not None:
            with _task_client(ctx, task) as client:
                facts = redis_db.facts(client)
            result.check("redis healthy", facts.role == "master" and not facts.loading,
                         f"{facts.dbsize} keys, role {facts.role}, offset {facts.repl_offset}")
        result.reason = (f"redis on {', '.join(labelled) or '?'}; "
                         + ("already on the target" if labelled == [target] else
                            f"move to {target}"))
    return result


def move_redis_planned(ctx: RunContext, target: str = "", timeout: float = 300) -> StepResult:
    """Move Redis to ``target`` (default: params' ``swarm.redis_node``) with no lost write
    (see the module's docstring). Re-run with Redis there and no temporary replica left:
    0 changes."""
    from casera.steps import redis_standby

    target = target_node(ctx, target)
    with timed(StepResult("redis move", f"-> {target}", dry_run=ctx.dry_run)) as result:
        cluster = reachable_cluster(ctx)
        labelled, entries = _labelled(cluster)
        leftover = [s for s in docker_swarm.services(cluster.manager) if s["name"] == MOVE_SERVICE]
        plan = Plan(gate_title=f"Redis: move to {target} (writes pause for seconds; "
                    "Swarm restarts Redis there)")
        if labelled == [target] and not leftover:
            result.reason = f"redis already on {target}, no temporary replica left"
            apply(ctx, result, plan)
            return result
        source = labelled[0] if labelled else "?"
        state = MoveState(source, target)
        if leftover:
            plan.add(f"- service {MOVE_SERVICE} (left by an interrupted move)",
                     partial(_remove_replica, ctx, cluster, leftover[0]["id"], target),
                     destructive=True)
        if labelled == [target]:
            apply(ctx, result, plan)
            result.reason = f"redis already on {target}; leftover replica removed"
            return result
        standby = redis_standby.find_standby(cluster)
        if standby is not None and standby.node == target:
            plan.add(f"- service {redis_standby.STANDBY_SERVICE} on {target}: the move needs "
                     "that node's volume (the runbook's standby step puts a new one elsewhere)",
                     partial(redis_standby.remove_standby, ctx, cluster, standby.service_id))
        if target in cluster.clients and VOLUME in docker_swarm.volume_names(
                cluster.clients[target]):
            plan.add(f"- contents of volume {VOLUME} on {target}: stale (no Redis runs there); "
                     "an appendonlydir there would load instead of the new data",
                     partial(_empty_stale_volume, cluster, cluster.clients[target]),
                     destructive=True)
        plan.add(f"+ service {MOVE_SERVICE}: a replica of redis on {target} (AOF off) on its "
                 f"volume {VOLUME}, until in sync",
                 partial(_start_replica, ctx, cluster, state, timeout))
        plan.add(f"~ pause writes on redis ({source}), wait for equal offsets, SAVE on the "
                 f"replica and stop it, then label {REDIS_LABEL}: {source} -> {target} (Swarm "
                 "restarts redis there from the saved data)",
                 partial(_switch, ctx, cluster, entries, state, timeout), destructive=True)
        plan.add(f"- service {MOVE_SERVICE} (stopped; its data is now Redis' own)",
                 partial(_remove_replica, ctx, cluster, MOVE_SERVICE, target))
        applied = apply(ctx, result, plan)
        if applied.dry_run:
            return result
        _report(ctx, result, state)
    return result


def _replica_spec(cluster: Cluster) -> dict[str, Any]:
    services = {s["name"]: s for s in docker_swarm.services(cluster.manager)}
    redis = services.get(f"{STACK}_redis")
    if redis is None:
        raise StepFailed(f"no service {STACK}_redis: is the stack deployed?")
    container = redis["spec"]["TaskTemplate"]["ContainerSpec"]
    networks = redis["spec"]["TaskTemplate"].get("Networks") or []
    if not networks:
        raise StepFailed(f"{STACK}_redis is on no network")
    return {"image": container["Image"], "user": container.get("User") or "redis",
            "network": networks[0]["Target"]}


def _start_replica(ctx: RunContext, cluster: Cluster, state: MoveState,
                   timeout: float) -> str:
    spec = _replica_spec(cluster)
    service_id = docker_swarm.create_pinned_service(
        cluster.manager, MOVE_SERVICE, spec["image"],
        ["redis-server", "--appendonly", "no", "--replicaof", "redis", str(REDIS_PORT)],
        state.target, spec["network"], spec["user"], VOLUME, "/data",
        {"casera.role": "redis-move"})
    replica = wait_for(f"{MOVE_SERVICE} running on {state.target}",
                       lambda: _service_task(ctx, cluster, MOVE_SERVICE, state.target), timeout)
    with _task_client(ctx, replica) as client:
        def synced() -> dict[str, Any] | None:
            try:
                info = client.info("replication")
            except Exception:  # noqa: BLE001 - still starting; the wait names the goal
                return None
            return info if info.get("master_link_status") == "up" else None

        wait_for(f"the replica on {state.target} to finish its full sync", synced, timeout)
    return service_id


def pause_writes(master: redis_db.Client) -> str:
    """``CLIENT PAUSE WRITE`` for PAUSE_MS, the replication PING period raised first; returns
    the period to put back (:func:`resume_writes`).

    The pause does not stop the master's periodic PING to its replicas: Redis 7's
    ``replicationCron`` (src/replication.c) skips it only while a manual failover (cluster or
    ``FAILOVER``) is in progress, and each PING adds 14 bytes to ``master_repl_offset``. One
    falling due during the pause would turn "replica reached offset" or "no write after the
    pause" red with no write made (docs/facts.md#redis-runbooks-issue-11)."""
    period = redis_db.config_get(master, PING_PERIOD)
    redis_db.config_set(master, PING_PERIOD, PING_PERIOD_PAUSED)
    try:
        master.execute_command("CLIENT", "PAUSE", str(PAUSE_MS), "WRITE")
    except BaseException:
        redis_db.config_set(master, PING_PERIOD, period)
        raise
    return period


def resume_writes(master: redis_db.Client, ping_period: str) -> None:
    """Undo :func:`pause_writes` on a master that stays master (the switch failed)."""
    master.execute_command("CLIENT", "UNPAUSE")
    redis_db.config_set(master, PING_PERIOD, ping_period)


def _switch(ctx: RunContext, cluster: Cluster, entries: dict[str, dict[str, Any]],
            state: MoveState, timeout: float) -> None:
    """The write pause, kept short: everything it needs is found before it starts."""
    master_task = running_task(ctx, "redis")
    replica = _service_task(ctx, cluster, MOVE_SERVICE, state.target)
    if master_task is None or replica is None:
        raise StepFailed("the redis task or the temporary replica stopped running")
    # No retries: a retried command would reconnect to a server this step just stopped.
    with _task_client(ctx, master_task, retries=False) as master, \
            _task_client(ctx, replica, retries=False) as copy:
        ping_period = pause_writes(master)
        state.paused_at = time.monotonic()
        offset = int(master.info("replication")["master_repl_offset"])

        def caught_up() -> int | None:
            info = copy.info("replication")
            return offset if int(info.get("slave_repl_offset", -1)) == offset else None

        try:
            wait_for(f"the replica to reach offset {offset}", caught_up, 20, interval=0.05,
                     show=False)
            state.keys_before = int(master.dbsize())
            copy.save()
            if int(copy.dbsize()) != state.keys_before:
                raise StepFailed(f"the replica holds {copy.dbsize()} keys, the master "
                                 f"{state.keys_before}: writes unpaused, nothing moved")
            state.offset_saved = offset
            # Stopped at once, writing nothing more: never two Redis servers on one volume.
            redis_db.shutdown_nosave(copy)
            wait_for(f"the replica on {state.target} to stop",
                     lambda: not docker_swarm.container_running(replica.client,
                                                                replica.container_id),
                     30, interval=0.1, show=False)
        except BaseException:
            resume_writes(master, ping_period)
            raise
        try:
            _set_redis_label(cluster, entries, state.target)
        except BaseException:
            # The label did not move: the old master stays, with its writes and pings back.
            resume_writes(master, ping_period)
            raise

        def old_stopped() -> bool:
            # The last offset it answered with is what it held when it went.
            try:
                state.old_last_offset = redis_db.facts(master).repl_offset
            except CaseraError:
                return True
            return False

        wait_for(f"redis on {state.source} to stop", old_stopped, timeout, interval=0.1)
        state.old_gone_at = time.monotonic()
    facts = _wait_loaded(ctx, state.target, timeout)
    state.new_ready_at = time.monotonic()
    state.keys_now = facts.dbsize
    state.keys_after = _keys_loaded(ctx, state.target)
    state.notes.append(f"AOF {'on' if facts.aof_enabled else 'off (turning on)'} "
                       f"on {state.target}")


def _remove_replica(ctx: RunContext, cluster: Cluster, service: str, node: str) -> None:
    docker_swarm.remove_service(cluster.manager, service)
    for name, client in cluster.clients.items():
        wait_for(f"{MOVE_SERVICE}'s container on {name} to be removed",
                 lambda c=client: not docker_swarm.containers_of_service(c, MOVE_SERVICE),
                 60, show=False)


# Redis 7 logs what it loaded at start: "Done loading RDB, keys loaded: N, keys expired: M."
KEYS_LOADED = re.compile(r"keys loaded: (\d+), keys expired: (\d+)")


def _keys_loaded(ctx: RunContext, node: str) -> int | None:
    """Keys the new Redis loaded from the saved data (loaded + expired while loading), read
    from its log: under load clients write as soon as it answers, so a DBSIZE read then
    counts their writes too."""
    task = running_task(ctx, "redis")
    if task is None or task.node != node:
        return None
    found = KEYS_LOADED.findall(docker_swarm.container_log_tail(task.client, task.container_id))
    return int(found[-1][0]) + int(found[-1][1]) if found else None


def _wait_loaded(ctx: RunContext, node: str, timeout: float) -> redis_db.RedisFacts:
    """Wait for the stack's Redis task to run on ``node`` and to finish loading its data."""
    def new_task() -> ServiceTask | None:
        task = running_task(ctx, "redis")
        return task if task is not None and task.node == node else None

    new = wait_for(f"redis running on {node}", new_task, timeout)
    with _task_client(ctx, new) as client:
        def ready() -> redis_db.RedisFacts | None:
            try:
                facts = redis_db.facts(client)
            except CaseraError:
                return None
            return facts if not facts.loading else None

        return wait_for(f"redis on {node} to load its data", ready, timeout, interval=0.1)


def _report(ctx: RunContext, result: StepResult, state: MoveState) -> None:
    result.check("keys equal", state.keys_before is not None
                 and state.keys_after == state.keys_before,
                 f"{state.keys_before} at the pause, {state.keys_after} loaded by the new Redis "
                 f"(its log); {state.keys_now} when it answered")
    result.check("no write after the pause", state.old_last_offset is not None
                 and state.old_last_offset == state.offset_saved,
                 f"old master's last offset {state.old_last_offset}, saved at "
                 f"{state.offset_saved}")
    if state.paused_at and state.new_ready_at and state.old_gone_at:
        pause = state.new_ready_at - state.paused_at
        down = state.new_ready_at - state.old_gone_at
        result.check("writes paused less than the pause limit", pause * 1000 < PAUSE_MS,
                     f"{pause:.1f} s (CLIENT PAUSE WRITE was {PAUSE_MS // 1000} s)")
        result.note("redis unreachable", f"{down:.1f} s (old task stopped -> new one loaded)")
        ctx.shared["redis_move"] = {"write_pause_s": round(pause, 2),
                                    "unreachable_s": round(down, 2),
                                    "keys_before": state.keys_before,
                                    "keys_after": state.keys_after}
    index = ctx.params.server_names().index(state.target) + 1
    if ctx.params.swarm.redis_node != index:
        result.note("params", f"set swarm.redis_node: {index} in params/{ctx.env}.yaml, or the "
                    "next bootstrap moves the label back")
    for line in state.notes:
        result.note("redis", line)
    result.reason = f"moved {state.source} -> {state.target}"


def verify_redis_placement(ctx: RunContext, target: str = "") -> StepResult:
    """Read-only: the label only on ``target`` (default: where this run put Redis, else
    params' node), Redis running and answering there, no temporary replica."""
    target = target or ctx.shared.get("redis_placed_on") or target_node(ctx)
    with timed(StepResult("redis placement", target, dry_run=ctx.dry_run)) as result:
        if ctx.dry_run:
            result.reason = "nothing moved in a dry run"
            return result
        cluster = reachable_cluster(ctx)
        labelled, _ = _labelled(cluster)
        result.check("label", labelled == [target], ", ".join(labelled) or "none")
        task = running_task(ctx, "redis")
        result.check("redis task", task is not None and task.node == target,
                     f"on {task.node}" if task else "not running")
        left = [s["name"] for s in docker_swarm.services(cluster.manager)
                if s["name"] == MOVE_SERVICE]
        result.check("temporary replica removed", not left, ", ".join(left) or "none left")
        if task is not None:
            with _task_client(ctx, task) as client:
                facts = redis_db.facts(client)
            result.check("redis answers", facts.role == "master" and not facts.loading,
                         f"{facts.dbsize} keys, AOF {'on' if facts.aof_enabled else 'OFF'}")
    return result


# ------------------------------------------------------------------ node-lost


def _lost_node(ctx: RunContext, cluster: Cluster, lost: str) -> str:
    if lost:
        if lost not in ctx.params.server_names():
            raise StepFailed(f"lost node {lost!r} is not a server of env {ctx.env}; pass one of "
                             f"{', '.join(ctx.params.server_names())} (runbook parameter lost)")
        return lost
    labelled, _ = _labelled(cluster)
    if len(labelled) != 1:
        raise StepFailed(f"casera.redis is on {labelled or 'no node'}: name the lost node "
                         "(runbook parameter lost)")
    return labelled[0]


def check_node_lost(ctx: RunContext, lost: str = "") -> StepResult:
    """Read-only, before any change: the Redis node (or ``lost``) is really gone for the
    Swarm (its managers see it ``down``), so nothing is fenced or restored while Redis is
    healthy. Records when the loss was confirmed: the RTO is measured from here."""
    with timed(StepResult("redis node-lost check", lost or "the redis node",
                          dry_run=ctx.dry_run)) as result:
        cluster = reachable_cluster(ctx)
        if cluster.leader is None:
            raise StepFailed("no Swarm manager answers: restore quorum first (docs/facts.md)")
        lost = _lost_node(ctx, cluster, lost)
        result.target = lost
        labelled, entries = _labelled(cluster)
        entry = entries.get(lost)
        state = entry["state"] if entry else "not in the swarm"
        server = hetzner.for_env(ctx.params, ctx.secrets).servers.get(lost)
        power = server.status if server else "no such server"
        if labelled != [lost] and power == "off":
            result.reason = (f"{lost} already fenced (off) and Redis is on "
                             f"{', '.join(labelled) or 'no node'}: nothing left to recover")
            ctx.shared["redis_lost"] = {"node": lost, "detected_at": time.time(),
                                        "recovered": True}
            return result
        task = running_task(ctx, "redis")
        healthy = task is not None and task.node == lost
        result.check(f"{lost} lost", state != "ready" and not healthy,
                     f"Swarm sees it {state}, Hetzner {power}"
                     + ("; Redis runs there: use mode planned" if healthy else ""))
        answers, detail = ssh.probe_port(cluster.nodes[lost], ctx.params.ssh.port, 3.0)
        result.note(f"{lost} ssh", ("answers" if state == "ready" else
                                    "answers: partitioned, not dead; the fence stops it "
                                    "coming back as a second master") if answers else detail)
        ctx.shared["redis_lost"] = {"node": lost, "detected_at": time.time(),
                                    "recovered": False}
        result.reason = f"{lost} is gone for the Swarm; Redis had the label there"
    return result


def fence_lost_node(ctx: RunContext, lost: str = "", timeout: float = 120) -> StepResult:
    """Power the lost node off through the Hetzner API before anything is promoted, so a
    partitioned old Redis cannot come back as a second master. Off already: 0 changes."""
    with timed(StepResult("redis fence", lost or "the redis node",
                          dry_run=ctx.dry_run)) as result:
        lost = lost or ctx.shared.get("redis_lost", {}).get("node", "")
        if not lost:
            raise StepFailed("run the node-lost check first (it names the lost node)")
        result.target = lost
        hz = hetzner.for_env(ctx.params, ctx.secrets)
        server = hz.servers.get(lost)
        if server is None:
            raise StepFailed(f"no Hetzner server {lost}")
        plan = Plan(gate_title=f"Hetzner: power off {lost} (fence the lost Redis node)")
        if server.status != "off":
            plan.add(f"~ server {lost}: power off ({server.status} -> off), the fence",
                     partial(_power_off, hz, server, timeout), destructive=True)
        else:
            result.reason = f"{lost} is off"
        if apply(ctx, result, plan).dry_run:
            return result
        now = hz.servers.get(lost)
        result.check(f"{lost} off", now is not None and now.status == "off",
                     now.status if now else "gone")
    return result


def _power_off(hz: Any, server: Any, timeout: float) -> None:
    from casera.providers.hetzner.actions import wait_for as wait_actions

    wait_actions([hz.servers.power_off(server)], f"power off {server.name}", timeout)


def _healthy_target(ctx: RunContext, cluster: Cluster, lost: str, target: str) -> str:
    _, entries = _labelled(cluster)
    ready = [n for n in ctx.params.server_names() if n != lost and n in cluster.clients
             and entries.get(n, {}).get("state") == "ready"
             and entries.get(n, {}).get("availability") == "active"]
    if target:
        if target not in ready:
            raise StepFailed(f"target {target} is not a ready, active Swarm node; ready: "
                             f"{', '.join(ready) or 'none'}")
        return target
    if not ready:
        raise StepFailed("no ready node to restore Redis on")
    return ready[0]


def restore_on_healthy_node(ctx: RunContext, lost: str = "", target: str = "",
                            timeout: float = 300) -> StepResult:
    """Redis back on a healthy node from the newest B2 snapshot: the snapshot written into
    that node's ``casera-redis-data`` (a stale volume there removed first; only a
    ``dump.rdb``, so the image loads it with AOF off and then turns AOF on), THEN the label
    moved, so Swarm starts Redis on data and never on an empty volume. Reports the RPO (the
    snapshot's age when the loss was confirmed) and the RTO (confirmation to the api's
    /readyz green). Redis already running on a healthy node other than ``lost``: 0 changes."""
    with timed(StepResult("redis restore", lost or "the redis node",
                          dry_run=ctx.dry_run)) as result:
        from casera.steps import redis_backup, redis_standby

        seen = ctx.shared.get("redis_lost", {})
        lost = lost or seen.get("node", "")
        if not lost:
            raise StepFailed("run the node-lost check first (it names the lost node)")
        result.target = lost
        cluster = reachable_cluster(ctx)
        labelled, entries = _labelled(cluster)
        task = running_task(ctx, "redis")
        plan = Plan(gate_title="Redis: restore the newest B2 snapshot on a healthy node "
                    "(writes since it are lost)")
        if task is not None and task.node != lost and labelled == [task.node]:
            result.reason = f"Redis already runs on {task.node}"
            ctx.shared["redis_placed_on"] = task.node
            apply(ctx, result, plan)
            return result
        standby = redis_standby.find_standby(cluster)
        running = redis_standby.standby_task(ctx, cluster)
        source = recovery_source(running.node if running else None, lost,
                                 redis_standby.ready_nodes(ctx, cluster), target)
        if source == "standby" and standby is not None and running is not None:
            return _promote(ctx, result, plan, cluster, entries, lost, running.node,
                            standby.service_id, timeout)
        node = _healthy_target(ctx, cluster, lost, target)
        result.note("recovered from", "the newest B2 snapshot ("
                    + ("no warm standby" if standby is None else
                       f"the standby on {standby.node or '?'} is not running on a healthy "
                       "node" if running is None or running.node == lost else
                       f"target {target} is not the standby's node {running.node}") + ")")
        if standby is not None and standby.node == node:
            # Never two Redis servers on one volume: the standby's goes to the restored data.
            plan.add(f"- service {redis_standby.STANDBY_SERVICE} on {node} (Redis is restored "
                     "onto that node's volume)",
                     partial(redis_standby.remove_standby, ctx, cluster, standby.service_id))
        found = redis_backup.snapshots(ctx)
        if not found:
            raise StepFailed("no snapshot in B2 to restore: the backup service never uploaded")
        newest = found[-1]
        client = cluster.clients[node]
        if VOLUME in docker_swarm.volume_names(client):
            plan.add(f"- contents of volume {VOLUME} on {node}: stale (no Redis runs there)",
                     partial(_empty_stale_volume, cluster, client), destructive=True)
        detected = float(seen.get("detected_at") or time.time())
        age = detected - newest.uploaded_ms / 1000
        plan.add(f"+ {newest.name} ({age:.0f} s old at the loss, DBSIZE "
                 f"{newest.info.get('dbsize', '?')}) into {VOLUME} on {node}",
                 partial(_restore_into_volume, ctx, cluster, client, newest), destructive=True)
        plan.add(f"~ label {REDIS_LABEL}: {lost} -> {node}",
                 partial(_set_redis_label, cluster, entries, node), destructive=True)
        if apply(ctx, result, plan).dry_run:
            return result

        facts = _wait_loaded(ctx, node, timeout)
        low = min(newest.recorded("dbsize") or 0, newest.recorded("dbsize_after") or 0)
        high = max(newest.recorded("dbsize") or 0, newest.recorded("dbsize_after") or 0)
        result.check("restored key count", low <= facts.dbsize <= high,
                     f"{facts.dbsize} keys; the snapshot recorded {low}"
                     + (f"-{high}" if high != low else ""))
        answered = wait_readyz_through_lb(ctx, timeout, "Redis")
        rto = time.time() - detected
        result.check("api /readyz green", bool(answered), f"through {answered}")
        result.note("RPO", f"{age:.0f} s: the snapshot's age when the loss was confirmed "
                    f"(writes after {newest.info.get('taken_at', '?')} are lost); it held "
                    f"{newest.info.get('dbsize', '?')} keys")
        result.note("RTO", f"{rto:.0f} s from the confirmed loss to /readyz green")
        ctx.shared["redis_restore"] = {"source": "b2", "rpo_s": round(age, 1),
                                       "rto_s": round(rto, 1), "snapshot": newest.name,
                                       "keys": facts.dbsize}
        result.reason = f"restored {newest.name} on {node}"
        ctx.shared["redis_placed_on"] = node
    return result


def recovery_source(standby_on: str | None, lost: str, ready: list[str],
                    target: str = "") -> str:
    """``standby`` when a warm standby runs on a ready node other than the lost one (and the
    operator named no other target), else ``b2`` (restore the newest snapshot)."""
    if standby_on and standby_on != lost and standby_on in ready and target in ("", standby_on):
        return "standby"
    return "b2"


def _promote(ctx: RunContext, result: StepResult, plan: Plan, cluster: Cluster,
             entries: dict[str, dict[str, Any]], lost: str, node: str, service_id: str,
             timeout: float) -> StepResult:
    """node-lost with a warm standby on ``node``: promote it where it is, and the stack's
    Redis takes over its volume (see :func:`_promote_standby`)."""
    from casera.steps import redis_standby

    seen = ctx.shared.get("redis_lost", {})
    promo: dict[str, Any] = {}
    plan.gate_title = (f"Redis: promote the warm standby on {node} (writes it had not "
                       "received are lost)")
    plan.add(f"~ promote {redis_standby.STANDBY_SERVICE} on {node}: REPLICAOF NO ONE, SAVE, "
             f"stop and remove it; {VOLUME} there left holding only that dump.rdb",
             partial(_promote_standby, ctx, cluster, node, service_id, promo), destructive=True)
    plan.add(f"~ label {REDIS_LABEL}: {lost} -> {node} (Swarm starts redis there from the "
             "promoted data)", partial(_set_redis_label, cluster, entries, node),
             destructive=True)
    if apply(ctx, result, plan).dry_run:
        return result
    detected = float(seen.get("detected_at") or time.time())
    facts = _wait_loaded(ctx, node, timeout)
    loaded = _keys_loaded(ctx, node)
    result.check("promoted key count", loaded is not None and loaded == promo.get("keys"),
                 f"{loaded} loaded by redis on {node} (its log); the standby saved "
                 f"{promo.get('keys')}; {facts.dbsize} when it answered")
    answered = wait_readyz_through_lb(ctx, timeout, "Redis")
    rto = time.time() - detected
    result.check("api /readyz green", bool(answered), f"through {answered}")
    result.note("recovered from", f"the warm standby on {node} (promoted, no B2 restore)")
    down = promo.get("link_down_s")
    result.note("RPO", "the replication lag: writes the master made after the standby's "
                f"offset {promo.get('offset')} are lost (link to the master down "
                f"{down if down is not None else '?'} s at the promotion); "
                f"{promo.get('keys')} keys kept")
    result.note("RTO", f"{rto:.0f} s from the confirmed loss to /readyz green")
    ctx.shared["redis_restore"] = {"source": "standby", "rto_s": round(rto, 1),
                                   "offset": promo.get("offset"),
                                   "link_down_s": down, "keys": promo.get("keys")}
    result.reason = f"promoted the warm standby on {node}"
    ctx.shared["redis_placed_on"] = node
    return result


def _promote_standby(ctx: RunContext, cluster: Cluster, node: str, service_id: str,
                     promo: dict[str, Any]) -> None:
    """REPLICAOF NO ONE and SAVE on the standby, then stop it and remove its service (its
    container gone) before the label moves: never two Redis servers on one volume. Then
    everything in its volume but that ``dump.rdb`` goes: an ``appendonlydir`` there would be
    loaded instead of it (the appendonly trap, docs/facts.md#redis-and-asynq). The standby
    starts with AOF off, but the image's entrypoint turns AOF on when it restarts on a volume
    holding a ``dump.rdb`` (a restart on failure after its first sync), so this is not left
    to chance."""
    from casera.steps import redis_standby

    task = redis_standby.standby_task(ctx, cluster)
    if task is None or task.node != node:
        raise StepFailed(f"the standby stopped running on {node}; re-run to restore from B2")
    with _task_client(ctx, task, retries=False) as client:
        promo["aof"] = redis_db.config_get(client, "appendonly")
        info = redis_db.replication(client)
        promo["offset"] = int(info.get("slave_repl_offset", -1))
        promo["link_down_s"] = info.get("master_link_down_since_seconds")
        client.execute_command("REPLICAOF", "NO", "ONE")
        client.save()
        promo["keys"] = int(client.dbsize())
        redis_db.shutdown_nosave(client)
    redis_standby.remove_standby(ctx, cluster, service_id)
    docker_swarm.empty_volume(cluster.clients[node], _by_digest(_replica_spec(cluster)["image"]),
                              VOLUME, keep="dump.rdb")


def _restore_into_volume(ctx: RunContext, cluster: Cluster, client: Any,
                         snapshot: Any) -> None:
    spec = _replica_spec(cluster)
    write_snapshot(ctx, client, snapshot, _by_digest(spec["image"]), spec["user"])


def write_snapshot(ctx: RunContext, client: Any, snapshot: Any, image: str, user: str) -> None:
    """Download ``snapshot`` from B2, check its SHA-256 against its metadata, and write it as
    ``dump.rdb`` into the node's ``casera-redis-data`` (made if missing), owned by ``user``,
    with a short-lived container of the Redis ``image``."""
    import tempfile
    from pathlib import Path

    from casera.steps import redis_backup

    api, bucket = redis_backup.backup_bucket(ctx, ctx.params.redis.backup.bucket)
    with tempfile.TemporaryDirectory(prefix="casera-redis-restore-") as tmp:
        rdb = Path(tmp) / "dump.rdb"
        b2.download_file(api, bucket.bucket_id, bucket.name, snapshot.file_id, rdb)
        data = rdb.read_bytes()
    if redis_backup.sha256_hex(data) != snapshot.info.get("sha256"):
        raise StepFailed(f"{snapshot.name}: SHA-256 differs from its metadata; not restored")
    docker_swarm.write_into_volume(client, image, VOLUME, "dump.rdb", data, f"{user}:{user}")


def _by_digest(image: str) -> str:
    """``repo:tag@sha256:..`` as ``repo@sha256:..``: what a pull by digest takes."""
    name, at, digest = image.partition("@")
    if not at:
        return image
    repo = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
    return f"{repo}@{digest}"


def _empty_stale_volume(cluster: Cluster, client: Any) -> None:
    docker_swarm.empty_volume(client, _by_digest(_replica_spec(cluster)["image"]), VOLUME)


def _set_redis_label(cluster: Cluster, entries: dict[str, dict[str, Any]], node: str) -> None:
    for name, entry in entries.items():
        labels = dict(entry["labels"])
        if name == node:
            labels[REDIS_LABEL] = "true"
        else:
            labels.pop(REDIS_LABEL, None)
        if labels != entry["labels"]:
            docker_swarm.set_node_labels(cluster.manager, entry["id"], labels)


# ------------------------------------------------------------------ the runbook's steps by mode


def _not_this_mode(ctx: RunContext, step: str, mode: str, what: str) -> StepResult:
    result = StepResult(step, mode, dry_run=ctx.dry_run, reason=f"mode {mode}: {what}")
    with timed(result):
        pass
    return result


def integrity_before(ctx: RunContext, mode: str) -> StepResult:
    """Asynq's integrity before a planned move (a lost node's Redis cannot be read)."""
    if mode != "planned":
        return _not_this_mode(ctx, "asynq integrity", mode, "the lost Redis cannot be read")
    from casera.steps.redis_checks import verify_asynq_integrity

    return verify_asynq_integrity(ctx)


def check_preconditions(ctx: RunContext, mode: str, target: str = "",
                        lost: str = "") -> StepResult:
    """planned: :func:`check_planned_move`; node-lost: :func:`check_node_lost`."""
    return (check_planned_move(ctx, target) if mode == "planned"
            else check_node_lost(ctx, lost))


def fence(ctx: RunContext, mode: str, lost: str = "") -> StepResult:
    """node-lost: :func:`fence_lost_node`; a planned move fences nothing."""
    if mode != "node-lost":
        return _not_this_mode(ctx, "redis fence", mode, "the old node stays up")
    return fence_lost_node(ctx, lost)


def move_or_restore(ctx: RunContext, mode: str, target: str = "",
                    lost: str = "") -> StepResult:
    """planned: :func:`move_redis_planned`; node-lost: :func:`restore_on_healthy_node`."""
    if mode == "planned":
        result = move_redis_planned(ctx, target)
        ctx.shared["redis_placed_on"] = target_node(ctx, target)
        return result
    return restore_on_healthy_node(ctx, lost, target)
