"""Reaching the stack's Redis from the operator's machine, and Asynq's integrity check that
every Redis runbook ends with.

Redis publishes no port: it is on the overlay network only. Every task on an overlay also has
an address on its node's ``docker_gwbridge``, which the node itself reaches; so the runbooks
reach Redis the way an operator reaches Dozzle, through an SSH tunnel to the node that runs
the task (``ssh -L``), and redis-py talks to the tunnel's local end.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from casera.context import RunContext
from casera.errors import CaseraError, StepFailed
from casera.providers import docker_swarm, redis_db, ssh_tunnel
from casera.result import StepResult, timed
from casera.steps.access import known_hosts, node_addresses, node_ssh, parallel
from casera.steps.stack import running_tasks, stack_services
from casera.steps.swarm import Cluster, DockerClient, docker_pool, manager_name

REDIS_PORT = 6379


@dataclass(frozen=True)
class ServiceTask:
    """A running task of a stack service: where it runs and its container there."""

    service: str
    node: str
    node_ip: str
    container_id: str
    client: DockerClient  # the engine of that node


def reachable_cluster(ctx: RunContext) -> Cluster:
    """The cluster as far as it answers: a node whose engine cannot be reached (a lost node)
    is left out instead of failing the read, so the Redis runbooks work with a node gone."""
    nodes = node_addresses(ctx)

    def attempt(item: tuple[str, str]) -> DockerClient | None:
        s = ctx.params.ssh
        try:
            return docker_pool(ctx).get(item[1], s.port, s.admin_user, s.private_key_file,
                                        s.connect_timeout_s, known_hosts=known_hosts(ctx),
                                        node=item[0])
        except CaseraError:
            return None

    answered = dict(zip(nodes, parallel(attempt, list(nodes.items())), strict=True))
    clients = {name: client for name, client in answered.items() if client is not None}

    def state(client: DockerClient) -> dict[str, Any] | None:
        try:
            return docker_swarm.swarm_state(client)
        except CaseraError:
            return None

    states = dict(zip(clients, parallel(state, list(clients.values())), strict=True))
    live = {name: st for name, st in states.items() if st is not None}
    return Cluster(nodes, {n: clients[n] for n in live}, live, manager_name(live))


def running_task(ctx: RunContext, service: str) -> ServiceTask | None:
    """The one running task of ``service`` (None when none runs)."""
    cluster = reachable_cluster(ctx)
    services = stack_services(cluster.manager)
    if service not in services:
        return None
    tasks = running_tasks(cluster.manager).get(services[service]["id"], [])
    if not tasks:
        return None
    hostnames = {n["id"]: n["hostname"] for n in docker_swarm.nodes(cluster.manager)}
    task = tasks[0]
    node = hostnames.get(task["NodeID"], "")
    if node not in cluster.clients:
        return None
    return ServiceTask(service, node, cluster.nodes[node],
                       task["Status"]["ContainerStatus"]["ContainerID"], cluster.clients[node])


@contextmanager
def redis_client(ctx: RunContext) -> Iterator[tuple[redis_db.Client, ServiceTask]]:
    """redis-py on the stack's Redis through an SSH tunnel to the node that runs it."""
    task = running_task(ctx, "redis")
    if task is None:
        raise StepFailed("no running redis task: is the stack deployed (bootstrap)?")
    address = docker_swarm.gateway_address(task.client, task.container_id)
    if address is None:
        raise StepFailed(f"the redis task on {task.node} has no docker_gwbridge address")
    conn = node_ssh(ctx, task.node, task.node_ip)
    with ExitStack() as stack:
        host, port = stack.enter_context(ssh_tunnel.forward(conn, address, REDIS_PORT))
        client = redis_db.connect(host, port)
        stack.callback(client.close)
        yield client, task


# ------------------------------------------------------------------ Asynq integrity


def asynq_findings(keys: redis_db.AsynqKeys) -> list[tuple[str, bool, str]]:
    """The integrity rules (docs/facts.md#redis-and-asynq), one finding per rule and queue:
    every pending/active id has its task hash in that state, every active id holds a lease,
    every queue with keys is in asynq:queues, and no id is in two states."""
    found: list[tuple[str, bool, str]] = []
    for name, q in sorted(keys.queues.items()):
        counts = ", ".join(f"{len(q.lists[s])} {s}" for s in redis_db.ID_LISTS)
        found.append((f"queue {name} registered", name in keys.registered,
                      f"in {redis_db.ASYNQ_QUEUES}" if name in keys.registered else
                      f"has keys but is NOT in {redis_db.ASYNQ_QUEUES}"))
        wrong = [f"{i} ({state}) {q.states.get(i)!r}" for state in redis_db.ID_LISTS
                 for i in q.lists[state] if q.states.get(i) != state]
        found.append((f"queue {name} task hashes", not wrong,
                      f"{counts}: each has its t: hash in that state" if not wrong else
                      f"{len(wrong)} id(s) without a matching hash: {'; '.join(wrong[:3])}"))
        lease = set(q.zsets["lease"])
        unleased = [i for i in q.lists["active"] if i not in lease]
        found.append((f"queue {name} leases", not unleased,
                      f"{len(q.lists['active'])} active, all leased" if not unleased else
                      f"{len(unleased)} active id(s) without a lease: {', '.join(unleased[:3])}"))
        seen: dict[str, list[str]] = {}
        for state, ids in (*q.lists.items(), *((s, q.zsets[s]) for s in
                                               ("scheduled", "retry", "archived", "completed"))):
            for task_id in ids:
                seen.setdefault(task_id, []).append(state)
        doubled = {i: states for i, states in seen.items() if len(states) > 1}
        found.append((f"queue {name} one state per id", not doubled,
                      f"{len(seen)} ids, each in one state" if not doubled else
                      "; ".join(f"{i} in {'+'.join(s)}" for i, s in list(doubled.items())[:3])))
    if not keys.queues:
        found.append(("asynq queues", True, "no Asynq keys (no task enqueued yet)"))
    return found


def read_consistent(client: Any) -> tuple[redis_db.AsynqKeys, list[tuple[str, bool, str]]]:
    """Asynq's keys and the findings, read until two reads in a row agree on the failures:
    a worker moving a task between two reads of one queue is not damage, so a failure
    counts only when a second read shows it again (up to 5 reads)."""
    keys = redis_db.asynq_keys(client)
    findings = asynq_findings(keys)
    for _ in range(4):
        failing = {(n, d) for n, ok, d in findings if not ok}
        if not failing:
            break
        keys = redis_db.asynq_keys(client)
        again = asynq_findings(keys)
        if {(n, d) for n, ok, d in again if not ok} == failing:
            findings = again
            break
        findings = again
    return keys, findings


def verify_asynq_integrity(ctx: RunContext) -> StepResult:
    """Read-only: Asynq's queues in the live Redis are consistent (see :func:`asynq_findings`)."""
    with timed(StepResult("asynq integrity", "redis", dry_run=ctx.dry_run)) as result:
        with redis_client(ctx) as (client, task):
            facts = redis_db.facts(client)
            keys, findings = read_consistent(client)
        result.note("redis", f"on {task.node}: {facts.dbsize} keys, role {facts.role}, "
                    f"offset {facts.repl_offset}, redis {facts.version}, "
                    f"AOF {'on' if facts.aof_enabled else 'OFF'}")
        for name, ok, detail in findings:
            result.check(name, ok, detail)
        result.reason = (f"{len(keys.queues)} queue(s), "
                         f"{sum(len(q.states) for q in keys.queues.values())} pending/active "
                         "task(s) checked")
    return result
