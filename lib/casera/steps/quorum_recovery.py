"""Disaster recovery, scenario ``quorum-lost``: two of three managers are dead (issue 12).

Without a majority of its managers a swarm changes nothing: running tasks go on, but every
call that needs Raft (``docker node ls``, a deploy, even the cluster part of ``docker info``)
waits out dockerd's 20 s request timeout and answers ``rpc error: code = DeadlineExceeded
desc = context deadline exceeded`` (docs/facts.md#docker-and-swarm). The runbook's steps:

1. :func:`detect_quorum_loss` (read only): every server's engine asked at once over SSH; the
   one manager that answers reports the deadline, the others are silent. Refused before any
   change: more than one manager answering without quorum (a partition: forcing a new
   cluster would split the swarm) and no engine answering at all (that is ``total-loss``).
   Where Redis ran is read from the survivor's own engine (its container and Redis' run id).
2. :func:`fence_dead_servers`: the silent servers powered off through the Hetzner API, behind
   the gate, before anything is forced: a server that only looked dead cannot come back as a
   second swarm.
3. :func:`force_new_cluster`: ``docker swarm init --force-new-cluster`` on the survivor, which
   becomes the only manager of the same swarm (services, secrets, configs, networks kept).
   Docker ignores ``--advertise-addr`` there and prints the old address in its join command
   (docker/for-linux#523): nothing here uses that command (the joins go to the survivor's
   address from the Hetzner API), and the address it advertises is read back and must be it.
4. :func:`recover_redis`: Redis ran on the survivor: the same process still serves (its run
   id unchanged), nothing to do. Otherwise the Redis runbook's node-lost restore runs
   (``redis_failover.restore_on_healthy_node``): the newest B2 snapshot onto the survivor,
   then the label. :func:`recovery_context` then keeps Redis where it is for the rest of the
   run (params' ``swarm.redis_node`` as the node it runs on), so the labels step never moves
   it onto a new, empty volume.
5. :func:`delete_dead_servers`: the fenced servers deleted (gated) and their host keys
   unpinned (the scale-in's own step), so the bootstrap's steps, run through :func:`rebuild`,
   make new servers under the same names, harden SSH, join them as managers (the swarm step
   removes the dead managers' entries first) and label them.
6. :func:`verify_recovered`: every server a ready, reachable manager with one leader, every
   service at its replicas, every secret and config a service uses still there (secrets with
   the operator's values, by digest), Redis intact or restored, ``/readyz`` green through the
   LB; the RTO (from the start of the run) and the RPO.

A re-run on the recovered swarm finds it whole and changes nothing. Not handled: more than
three managers with two or more survivors (refused as a possible partition), workers.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from casera.context import RunContext
from casera.errors import CaseraError, StepFailed, WaitTimeout
from casera.plan import Plan, apply
from casera.progress import wait_for
from casera.providers import docker_swarm, hetzner, ssh
from casera.result import StepResult, timed
from casera.steps import dr, redis_failover, scale
from casera.steps.access import (
    LISTENERS_COMMAND,
    docker_pool,
    known_hosts,
    listening_ports,
    node_ssh,
)
from casera.steps.load_balancer import wait_readyz_through_lb
from casera.steps.redis_checks import reachable_cluster
from casera.steps.stack import STACK, stack_services, wait_services_converged
from casera.steps.swarm import REDIS_LABEL, manager_name
from casera.steps.swarm_secrets import (
    digest,
    ensure_swarm_secrets,
    stack_secret_values,
    versions,
)

SCENARIO = "quorum-lost"
TOTAL = "total-loss"
# The scenarios that rebuild the swarm with the bootstrap's steps.
SWARM_SCENARIOS = (SCENARIO, TOTAL)
DEADLINE = "context deadline exceeded"
# What a manager without quorum answers: first its calls wait out dockerd's request timeout
# (the deadline); once Raft has had no leader for a while (swarmkit's lostQuorumTimeout) they
# fail at once with swarmkit's lost-quorum message.
NO_QUORUM = (DEADLINE, "does not have a leader", "Lost quorum")
REDIS_SERVICE = f"{STACK}_redis"


@dataclass(frozen=True)
class RedisSeen:
    """The Redis container found running on the survivor's own engine, and the run id of its
    process: the same run id later means the same process, so its data never went away."""

    node: str
    container: str
    run_id: str


@dataclass(frozen=True)
class Assessment:
    """What :func:`detect_quorum_loss` found, for the later steps of the run."""

    servers: list[str]                    # params' names, in order
    addresses: dict[str, str]             # name -> IPv4, servers that exist
    silent: dict[str, str]                # name -> why it counts as dead
    missing: list[str]                    # in params, not in the Hetzner project
    survivor: str | None                  # the manager that answers
    quorum_lost: bool                     # the survivor's swarm reports the deadline
    whole: bool                           # nothing to recover
    refusals: list[str]
    redis: RedisSeen | None = None
    detected_at: float = 0.0
    total: bool = False                   # no engine answers: a new swarm is made

    @property
    def to_replace(self) -> list[str]:
        return sorted(set(self.silent) | set(self.missing))


def assess(names: list[str], power: dict[str, str], states: dict[str, dict[str, Any]],
           entries: list[dict[str, Any]] | None, scenario: str = SCENARIO) -> Assessment:
    """The verdict from facts alone: ``power`` (server name -> Hetzner status), ``states``
    (name -> swarm state of each engine that answered), ``entries`` (the swarm's node list,
    None when it could not be read), for ``scenario`` (quorum-lost or total-loss)."""
    missing = [n for n in names if n not in power]
    silent = {n: ("off in Hetzner (fenced)" if power[n] == "off" else
                  f"{power[n]} in Hetzner, but its engine does not answer over SSH")
              for n in names if n in power and n not in states}
    lost = sorted(n for n, st in states.items() if no_quorum(st.get("error") or ""))
    # A manager that reports the lost quorum counts whatever its local state says.
    managers = sorted(n for n, st in states.items()
                      if n in lost or (st.get("state") == "active" and st.get("manager")))
    refusals = []
    if not states and scenario == TOTAL:
        pass  # every server gone: what total-loss rebuilds
    elif not states:
        gone = [f"{n}: {why}" for n, why in silent.items()] + [f"{n}: missing" for n in missing]
        refusals.append(f"no server's engine answers ({'; '.join(gone)}): every manager is "
                        "gone, that is scenario total-loss, not quorum-lost")
    elif not managers:
        refusals.append(f"the servers that answer ({', '.join(sorted(states))}) are not "
                        "managers of a swarm: there is no state to recover a swarm from")
    elif lost and len(managers) > 1:
        refusals.append(
            f"{len(managers)} managers answer ({', '.join(managers)}) but none has quorum: "
            "that is a partition, not dead servers. A new cluster forced now would split the "
            "swarm in two; heal the network first (the swarm then regains its quorum)")
    elif lost and scenario == TOTAL:
        refusals.append(
            f"{', '.join(lost)} answers with the lost quorum: a manager survived, that is "
            "scenario quorum-lost (it keeps the swarm's state; a total-loss rebuild would throw "
            "it away)")
    survivor = (lost[0] if lost and len(managers) == 1 else
                manager_name({n: states[n] for n in names if n in states}))
    whole = (not lost and not silent and not missing and entries is not None and all(
        any(e["hostname"] == n and e["role"] == "manager" and e["state"] == "ready"
            and e.get("reachability") == "reachable" for e in entries) for n in names)
        and all(e["state"] == "ready" for e in entries))
    return Assessment(names, {}, silent, missing, survivor, bool(lost), whole, refusals,
                      total=not states and not refusals)


def no_quorum(error: str) -> bool:
    return any(words in error for words in NO_QUORUM)


def _redis_on(node: str, client: Any) -> RedisSeen | None:
    """The running Redis container on this engine (the swarm's API is not needed)."""
    for container in docker_swarm.containers_of_service(client, REDIS_SERVICE):
        if docker_swarm.container_running(client, container):
            return RedisSeen(node, container, _run_id(client, container))
    return None


def _run_id(client: Any, container: str) -> str:
    """Redis' ``run_id`` (INFO server): a new one for every start of the process."""
    try:
        code, out = docker_swarm.exec_output(client, container, ["redis-cli", "INFO", "server"])
    except CaseraError:
        return ""
    found = re.search(r"^run_id:(\w+)", out, re.MULTILINE)
    return found.group(1) if code == 0 and found else ""


def _engine(ctx: RunContext, name: str, ip: str) -> Any:
    """The run's Docker client on one node (not the whole cluster's state: without quorum
    every ``docker info`` costs dockerd's 20 s timeout)."""
    s = ctx.params.ssh
    return docker_pool(ctx).get(ip, s.port, s.admin_user, s.private_key_file,
                                s.connect_timeout_s, known_hosts=known_hosts(ctx), node=name)


def assessment(ctx: RunContext) -> Assessment:
    found = ctx.shared.get("quorum")
    if not isinstance(found, Assessment):
        raise StepFailed("run the quorum check first (quorum_recovery.detect_quorum_loss): it "
                         "decides which servers are dead and which one survives")
    return found


def _await_verdict(ctx: RunContext, cluster: Any, timeout: float) -> None:
    """When too few managers answer to hold a majority but the one that answers still reports
    no error, its swarm has not noticed yet (Raft's leader steps down, or an election times
    out, some seconds after the others died): ask it again until it reports the lost quorum,
    updating ``cluster.states``. More managers answering, or none: nothing to wait for."""
    managers = [n for n, st in cluster.states.items() if st.get("manager")]
    if not managers or len(managers) * 2 > len(ctx.params.server_names()) or any(
            no_quorum(st.get("error") or "") for st in cluster.states.values()):
        return
    name = managers[0]

    def reported() -> dict[str, Any] | None:
        state = docker_swarm.swarm_state(cluster.clients[name])
        return state if no_quorum(state.get("error") or "") else None

    try:
        cluster.states[name] = wait_for(
            f"{name}'s swarm to report the lost quorum ({len(managers)} of "
            f"{len(ctx.params.server_names())} managers answer)", reported, timeout)
    except WaitTimeout:
        # It keeps answering: it leads alone (an earlier run forced the new cluster).
        return


def detect_quorum_loss(ctx: RunContext, scenario: str = SCENARIO,
                       timeout: float = 45) -> StepResult:
    """Read only: which servers answer, whether the one manager left has lost its quorum,
    and where Redis ran. Refuses before any change a partition, and what the other scenario
    recovers (quorum-lost: every server gone; total-loss: a manager survived). On a whole
    swarm it says so and every later step of the scenario changes nothing."""
    p = ctx.params
    with timed(StepResult("quorum", f"{len(p.server_names())} managers",
                          dry_run=ctx.dry_run)) as result:
        hz = hetzner.for_env(p, ctx.secrets)
        servers = {s.name: s for s in hz.servers.list(p.cluster_label)}
        # Every engine at once; a manager without quorum answers `docker info` only after
        # dockerd's 20 s request timeout, with the deadline as its swarm error.
        cluster = reachable_cluster(ctx)
        _await_verdict(ctx, cluster, timeout)
        lost = any(no_quorum(st.get("error") or "") for st in cluster.states.values())
        entries = None
        if cluster.leader is not None and not lost:
            try:
                entries = docker_swarm.nodes(cluster.manager)
            except CaseraError as exc:
                result.note("swarm node list", str(exc)[:200])
        facts = assess(p.server_names(), {n: s.status for n, s in servers.items()},
                       cluster.states, entries, scenario)
        redis = None
        if facts.survivor and not facts.whole and facts.survivor in cluster.clients:
            redis = _redis_on(facts.survivor, cluster.clients[facts.survivor])
        facts = dataclasses.replace(facts, redis=redis, detected_at=time.time(),
                                    addresses={n: s.ipv4 for n, s in servers.items()
                                               if s.ipv4})
        ctx.shared["quorum"] = facts
        for name in p.server_names():
            state = cluster.states.get(name)
            result.note(name, "missing from the Hetzner project" if name in facts.missing
                        else f"dead: {facts.silent[name]}" if name in facts.silent
                        else f"answers: swarm {state['state'] if state else '?'}, "
                        + ("manager" if state and state.get("manager") else "not a manager")
                        + (f", error: {state['error'][:160]}" if state and state.get("error")
                           else ""))
        if facts.refusals:
            result.check(f"scenario {scenario} applies", False,
                         "; ".join(facts.refusals) + "; nothing was changed")
            return result
        if facts.whole:
            result.reason = (f"the swarm is whole: {len(facts.servers)} ready, reachable "
                             "managers and a leader; nothing to recover")
            return result
        if facts.total:
            result.note("every server gone", "; ".join(
                f"{n}: {facts.silent.get(n, 'missing')}" for n in facts.servers))
            result.reason = (f"total loss: {', '.join(facts.to_replace)} gone; the run makes "
                             "new servers and a new swarm")
            return result
        result.check("a manager answers", facts.survivor is not None,
                     facts.survivor or "none")
        if facts.quorum_lost and facts.survivor:
            error = cluster.states[facts.survivor].get("error") or ""
            result.note("quorum lost", f"{facts.survivor} answers, its swarm reports "
                        f"'{error[:200]}'; dead: {', '.join(facts.to_replace)}")
        else:
            result.note("quorum", f"held (led from {facts.survivor}): an earlier run forced "
                        "the new cluster, or one manager is down; the rest of the run "
                        f"replaces {', '.join(facts.to_replace) or 'nothing'}")
        result.note("redis", f"runs on {redis.node} (container {redis.container[:12]}, run id "
                    f"{redis.run_id[:12] or '?'}): its data stays where it is" if redis else
                    f"not running on {facts.survivor}: it ran on a dead server, the run "
                    "restores the newest B2 snapshot (the Redis runbook's restore)")
        result.reason = (f"quorum lost: {facts.survivor} survives, "
                         f"{', '.join(facts.to_replace)} dead" if facts.quorum_lost else
                         f"quorum held; {', '.join(facts.to_replace)} to replace")
    return result


def _whole(ctx: RunContext, name: str, target: str, facts: Assessment) -> StepResult | None:
    """The 0-change result of a step on a swarm found whole, else None."""
    if not facts.whole:
        return None
    return dr.skipped(ctx, name, target, "the swarm was whole at the start of this run: "
                      "nothing to recover")


def fence_dead_servers(ctx: RunContext, timeout: float = 120) -> StepResult:
    """Power off every dead server through the Hetzner API before anything is forced, so a
    server that only looked dead (a partition, a hung kernel) cannot come back and carry on
    as a second swarm. Undo: power it on (only after it has been replaced or deleted)."""
    facts = assessment(ctx)
    target = ", ".join(facts.silent) or "no dead server"
    if (done := _whole(ctx, "fence", target, facts)) is not None:
        return done
    with timed(StepResult("fence", target, dry_run=ctx.dry_run)) as result:
        hz = hetzner.for_env(ctx.params, ctx.secrets)
        plan = Plan(gate_title="Hetzner: power off the dead servers (the fence: they cannot "
                    "come back as a second swarm)")
        for name in facts.silent:
            server = hz.servers.get(name)
            if server is not None and server.status != "off":
                # The Redis runbook's fence: power off, waited for.
                plan.add(f"~ server {name}: power off ({server.status} -> off)",
                         partial(redis_failover._power_off, hz, server, timeout),
                         destructive=True)
        if not plan:
            result.reason = "every dead server is off already"
        if apply(ctx, result, plan).dry_run:
            return result
        for name in facts.silent:
            now = hz.servers.get(name)
            result.check(f"{name} off", now is None or now.status == "off",
                         now.status if now else "gone")
    return result


def _leading_alone(client: Any, name: str) -> list[dict[str, Any]] | None:
    """The node list once ``name`` answers it as the leader (the new cluster is up)."""
    try:
        entries = docker_swarm.nodes(client)
    except CaseraError:
        return None
    return entries if any(e["hostname"] == name and e["leader"] for e in entries) else None


# Swarm's gossip (libnetwork's NetworkDB over memberlist): how overlay peers learn where each
# other's tasks are. https://docs.docker.com/engine/swarm/swarm-tutorial/#open-protocols-and-ports-between-the-hosts
GOSSIP_PORT = 7946


def _gossip_listening(ctx: RunContext, name: str, ip: str) -> bool:
    """Whether dockerd on ``name`` listens for gossip (its listeners read over SSH, as the
    SSH hardening check reads sshd's: the Cloud Firewall lets only the nodes reach 7946)."""
    listeners = ssh.run(node_ssh(ctx, name, ip), LISTENERS_COMMAND)
    return GOSSIP_PORT in listening_ports(listeners, "dockerd")


def _restart_engine(ctx: RunContext, name: str, ip: str, client: Any, timeout: float) -> None:
    """``systemctl restart docker`` on ``name``, then wait until its engine answers as an
    active swarm node again and listens for gossip. Seen here after every force: the engine
    leaves the gossip cluster and never rejoins it until restarted (moby/moby#36860)."""
    ssh.run(node_ssh(ctx, name, ip), "sudo -n systemctl restart docker", timeout=timeout)

    def back() -> bool:
        return docker_swarm.swarm_state(client)["state"] == "active" and _gossip_listening(
            ctx, name, ip)

    wait_for(f"{name}'s engine back in the swarm and listening for gossip on {GOSSIP_PORT}",
             back, timeout, interval=2)


def force_new_cluster(ctx: RunContext, timeout: float = 120) -> StepResult:
    """``docker swarm init --force-new-cluster`` on the survivor, behind the gate: it becomes
    the only manager of the same swarm, with its services, secrets, configs and networks.
    Only after the fence: every dead server must be off. The address it advertises is read
    back (Docker keeps the old one whatever ``--advertise-addr`` says, docker/for-linux#523)
    and must be the survivor's address in the Hetzner API, which is where the swarm step
    joins the new managers (never the join command Docker prints)."""
    facts = assessment(ctx)
    survivor = facts.survivor or "-"
    if (done := _whole(ctx, "force new cluster", survivor, facts)) is not None:
        return done
    with timed(StepResult("force new cluster", survivor, dry_run=ctx.dry_run)) as result:
        if not facts.quorum_lost:
            result.reason = ("no manager survived: the swarm step makes a new swarm"
                             if facts.total else "the swarm has its quorum: nothing to force")
            return result
        hz = hetzner.for_env(ctx.params, ctx.secrets)
        if not ctx.dry_run:
            on = [n for n in facts.silent if (s := hz.servers.get(n)) and s.status != "off"]
            if on:
                raise StepFailed(f"{', '.join(on)} not off: fence them first (the fence "
                                 "step); nothing was changed")
        ip = facts.addresses[survivor]
        client = _engine(ctx, survivor, ip)
        plan = Plan(gate_title=f"Swarm: force a new cluster on {survivor} (the dead managers "
                    "leave Raft; it becomes the only manager)")
        plan.add(f"~ docker swarm init --force-new-cluster on {survivor} ({ip}): the only "
                 "manager of the same swarm, its services, secrets and configs kept",
                 partial(docker_swarm.force_new_cluster, client, ip), destructive=True)
        plan.add(f"~ restart the Docker engine on {survivor}: after the force its gossip "
                 f"(TCP/UDP {GOSSIP_PORT}) stops listening, so no overlay traffic would reach "
                 "it from the managers that join (moby/moby#36860, docker/for-linux#495); "
                 "its tasks restart, Redis from its volume",
                 partial(_restart_engine, ctx, survivor, ip, client, timeout), destructive=True)
        if apply(ctx, result, plan).dry_run:
            return result
        entries = wait_for(f"{survivor} to lead the swarm alone",
                           lambda: _leading_alone(client, survivor), timeout)
        result.check("gossip listening", _gossip_listening(ctx, survivor, ip),
                     f"{survivor} listens on TCP {GOSSIP_PORT}: the overlay's peers find it")
        address = docker_swarm.advertised(client)
        result.check("advertised address", address == ip,
                     f"{address}: the survivor's address in Hetzner, so the managers that "
                     f"join at {ip} reach it over Raft too" if address == ip else
                     f"{address} kept from before (docker/for-linux#523), but the server is "
                     f"{ip} now: managers would join and then fail to reach it. Rebuild as "
                     "total-loss instead")
        q = scale.quorum(entries)
        result.check("leader", q.leader, q.text())
        stale = sorted(e["hostname"] for e in entries if e["state"] != "ready")
        result.note("entries of the dead", ", ".join(stale) + ": removed by the swarm step "
                    "when their replacements join" if stale else "none")
        result.reason = f"{survivor} leads the swarm alone"
    return result


def recover_redis(ctx: RunContext, timeout: float = 120) -> StepResult:
    """Redis after the new cluster. It ran on the survivor: it stays there with its volume
    (the engine's restart restarts it, and it reloads its own AOF: a new run id, the same
    data), waited for until it answers. It ran on a dead server:
    the Redis runbook's node-lost restore (the newest B2 snapshot written into the
    survivor's volume, then the label moved there); its RPO is the snapshot's age."""
    facts = assessment(ctx)
    if (done := _whole(ctx, "redis after quorum loss", "redis", facts)) is not None:
        return done
    if facts.redis is not None:
        with timed(StepResult("redis after quorum loss", facts.redis.node,
                              dry_run=ctx.dry_run)) as result:
            client = _engine(ctx, facts.redis.node, facts.addresses[facts.redis.node])
            # The engine's restart after the force restarts the survivor's tasks: Redis then
            # reloads its own AOF from its volume on the same node (everysec: up to a second
            # of writes). Waited for until it answers INFO.
            try:
                now = wait_for(f"Redis running and answering on {facts.redis.node}",
                               lambda: (seen := _redis_on(facts.redis.node, client)) and
                               seen.run_id and seen, timeout, interval=2)
            except WaitTimeout:
                now = None
            same = now is not None and now.run_id == facts.redis.run_id
            result.check("redis on its node", now is not None,
                         ("the same process as at the loss" if same else
                          f"restarted on {facts.redis.node} from its own volume (run id "
                          f"{facts.redis.run_id[:8]} -> {now.run_id[:8]})") if now else
                         f"no Redis container runs on {facts.redis.node}")
            ctx.shared["redis_placed_on"] = facts.redis.node
            result.reason = (f"Redis never stopped on {facts.redis.node}" if same else
                             f"Redis stays on {facts.redis.node} with its volume")
        return result
    survivor = facts.survivor or ""
    if ctx.dry_run and facts.quorum_lost:
        # Without quorum nothing of the swarm can be read; the run forces the cluster first.
        with timed(StepResult("redis restore", survivor, dry_run=True)) as result:
            plan = Plan()
            plan.add(f"+ the newest B2 snapshot into casera-redis-data on {survivor} (the "
                     "Redis runbook's node-lost restore, after the new cluster)")
            plan.add(f"~ label {REDIS_LABEL} -> {survivor}")
            apply(ctx, result, plan)
        return result
    cluster = reachable_cluster(ctx)
    labelled = sorted(e["hostname"] for e in docker_swarm.nodes(cluster.manager)
                      if e["labels"].get(REDIS_LABEL) == "true")
    lost = labelled[0] if labelled else ctx.params.server_names()[ctx.params.swarm.redis_node - 1]
    ctx.shared["redis_lost"] = {"node": lost, "detected_at": facts.detected_at,
                                "recovered": False}
    return redis_failover.restore_on_healthy_node(ctx, lost=lost, target=survivor)


def restore_redis_snapshot(ctx: RunContext) -> StepResult:
    """total-loss: the newest B2 snapshot (SHA-256 checked) written as the only file of
    ``casera-redis-data`` on the Redis node params name, BEFORE the stack step starts Redis
    there (it loads a lone ``dump.rdb`` with AOF off, then turns AOF on), so Redis never
    starts on an empty volume. Redis already running (an earlier run got that far): 0
    changes. The RPO of Redis is the snapshot's age at the loss."""
    from casera.steps import redis_backup
    from casera.steps.swarm import cluster_or_reason

    facts = assessment(ctx)
    p = ctx.params
    node = p.server_names()[p.swarm.redis_node - 1]
    if (done := _whole(ctx, "redis restore", node, facts)) is not None:
        return done
    with timed(StepResult("redis restore", node, dry_run=ctx.dry_run)) as result:
        # A dry run still has the dead servers (nothing deleted): planned on what the run
        # makes, a new server with an empty volume.
        cluster, result.reason = ((None, "dry run: planned on the new servers the run makes")
                                  if ctx.dry_run and facts.to_replace else
                                  cluster_or_reason(ctx))
        if cluster is not None and "redis" in stack_services(cluster.manager):
            result.reason = "Redis is deployed already (an earlier run restored it)"
            return result
        found = redis_backup.snapshots(ctx)
        if not found:
            raise StepFailed("no Redis snapshot in B2 to restore: the backup service never "
                             "uploaded; nothing was changed")
        newest = found[-1]
        age = facts.detected_at - newest.uploaded_ms / 1000
        plan = Plan(gate_title=f"Redis: restore {newest.name} (writes after it are lost)")
        redis = p.services.redis
        plan.add(f"+ {newest.name} ({age:.0f} s old at the loss, DBSIZE "
                 f"{newest.info.get('dbsize', '?')}) into {redis_failover.VOLUME} on {node}, "
                 "before the stack starts Redis there",
                 lambda: redis_failover.write_snapshot(
                     ctx, cluster.clients[node] if cluster else None, newest, redis.image,
                     redis.user), destructive=True)
        if apply(ctx, result, plan).dry_run:
            return result
        ctx.shared["redis_restore"] = {
            "source": "b2", "rpo_s": round(age, 1), "snapshot": newest.name, "node": node,
            "recorded": (newest.recorded("dbsize"), newest.recorded("dbsize_after"))}
        result.note("RPO", f"{age:.0f} s: the snapshot's age at the loss (writes after "
                    f"{newest.info.get('taken_at', '?')} are lost)")
        result.reason = f"{newest.name} in place on {node}; the stack step starts Redis on it"
    return result


def recovery_context(ctx: RunContext) -> RunContext:
    """``ctx`` with ``swarm.redis_node`` set to the node Redis runs on after this run's Redis
    step, so the bootstrap's labels step keeps it there (a label moved to a new server would
    start Redis on an empty volume). Unchanged when Redis stayed where params say."""
    placed = ctx.shared.get("redis_placed_on")
    names = ctx.params.server_names()
    if not placed or placed not in names or names.index(placed) + 1 == ctx.params.swarm.redis_node:
        return ctx
    swarm = ctx.params.swarm.model_copy(update={"redis_node": names.index(placed) + 1})
    return dataclasses.replace(ctx, params=ctx.params.model_copy(update={"swarm": swarm}),
                               planned=ctx.planned, shared=ctx.shared)


def delete_dead_servers(ctx: RunContext, timeout: float = 300) -> StepResult:
    """The fenced dead servers deleted with their disks, and their host key pins removed,
    through the scale-in's own step, so the bootstrap's servers step makes new ones under the
    same names. Refused for a dead server that is not off (fence first)."""
    facts = assessment(ctx)
    if (done := _whole(ctx, "servers: delete", "no dead server", facts)) is not None:
        return done
    current = scale.current_servers(ctx)
    if not ctx.dry_run:
        hz = hetzner.for_env(ctx.params, ctx.secrets)
        on = [n for n in facts.silent if (s := hz.servers.get(n)) and s.status != "off"]
        if on:
            raise StepFailed(f"{', '.join(on)} not off: fence them first (the fence step); "
                             "nothing was changed")
    ctx.shared["scale_in"] = scale.Removal(
        remove=[n for n in facts.silent if n in current],
        gone=[n for n in facts.missing], servers=current)
    return scale.delete_servers(ctx, timeout)


def swarm_step(ctx: RunContext, scenario: str, step: Any, *args: Any) -> StepResult:
    """A step of the two swarm scenarios (quorum-lost, total-loss); in another scenario a
    0-change result saying whose step it is."""
    if scenario not in SWARM_SCENARIOS:
        return dr.skipped(ctx, dr.step_name(step), scenario,
                          f"a step of scenarios {' and '.join(SWARM_SCENARIOS)}; this run is "
                          f"{scenario}")
    return step(ctx, *args)


def rebuild(ctx: RunContext, scenario: str, step: Any, *args: Any) -> StepResult:
    """One of the bootstrap's own steps in a swarm scenario's run on a swarm that was not
    whole (it converges the servers as params say: new servers, SSH, join or a new swarm,
    labels, secrets, stack); otherwise a 0-change result saying why."""
    if scenario not in SWARM_SCENARIOS:
        return swarm_step(ctx, scenario, step, *args)
    facts = assessment(ctx)
    if (done := _whole(ctx, dr.step_name(step), "bootstrap step", facts)) is not None:
        return done
    if ctx.dry_run and facts.to_replace:
        # The dead servers still exist in a dry run (nothing was deleted): the bootstrap's
        # steps would plan against them, not against the new servers the run makes.
        return dr.skipped(ctx, dr.step_name(step), "bootstrap step",
                          f"dry run: the run deletes {', '.join(facts.to_replace)} and the "
                          "servers step makes them anew; this step then runs on them")
    return step(ctx, *args)


def ensure_secrets(ctx: RunContext) -> StepResult:
    """The bootstrap's Docker secrets step with the values from the operator's store (and
    the B2 key store): 0 changes where the swarm kept them (quorum-lost), every secret made
    again in a new swarm (total-loss)."""
    return ensure_swarm_secrets(ctx, stack_secret_values(ctx))


def ensure_allowlist(ctx: RunContext) -> StepResult:
    """The bootstrap's Neon allowlist step on the servers' addresses now (new servers may
    have new addresses)."""
    from casera.steps import access, database

    return database.ensure_ip_allowlist(ctx, list(access.node_addresses(ctx).values()))


def _references(services: dict[str, dict[str, Any]], key: str, id_key: str) -> dict[str, str]:
    """id -> name of every secret (``Secrets``) or config (``Configs``) a service mounts."""
    found = {}
    for service in services.values():
        spec = (service["spec"].get("TaskTemplate") or {}).get("ContainerSpec") or {}
        for ref in spec.get(key) or []:
            found[ref[id_key]] = ref.get(key[:-1] + "Name", "")
    return found


def verify_recovered(ctx: RunContext, timeout: float = 240) -> StepResult:
    """After the recovery: every server a ready, reachable manager and one leader; every
    service at its replicas; every secret and config a service mounts still in the swarm,
    each stack secret's newest version holding the operator's value (by digest); Redis the
    same process as at the loss, or restored; /readyz green through the LB. Reports the RTO
    (from the start of the run) and the RPO."""
    facts = assessment(ctx)
    p = ctx.params
    with timed(StepResult("swarm recovered", f"{len(p.server_names())} managers",
                          dry_run=ctx.dry_run)) as result:
        if ctx.dry_run:
            result.reason = "nothing recovered to verify in a dry run"
            return result
        client = reachable_cluster(ctx).manager
        entries = docker_swarm.nodes(client)
        q = scale.quorum(entries)
        names = set(p.server_names())
        result.check("managers", q.healthy and q.managers == len(names) and q.managers % 2 == 1
                     and {e["hostname"] for e in entries} == names, q.text())
        late = scale.not_ready(entries)
        result.check("nodes ready and active", not late,
                     f"all {len(entries)}" if not late else ", ".join(late))
        try:
            counts = wait_services_converged(client, p, timeout)
            short = ""
        except CaseraError as exc:
            counts, short = {}, str(exc)
        result.check("services at their replicas", bool(counts),
                     ", ".join(f"{k} {v}" for k, v in counts.items()) or
                     short.split("Not there yet: ")[-1])
        services = stack_services(client)
        mounted = _references(services, "Secrets", "SecretID")
        absent = sorted(n for i, n in mounted.items() if i not in docker_swarm.secret_ids(client))
        result.check("secrets mounted exist", bool(mounted) and not absent,
                     f"{len(mounted)} mounted by the stack" if not absent else
                     f"missing: {', '.join(absent)}")
        have = versions(client)
        differ = sorted(name for name, value in stack_secret_values(ctx).items()
                        if not have.get(name) or have[name][-1][2] != digest(name, value))
        result.check("secrets hold the operator's values", not differ,
                     "every stack secret's newest version, by digest" if not differ else
                     f"differ or missing: {', '.join(differ)}")
        configs = _references(services, "Configs", "ConfigID")
        lost = sorted(n for i, n in configs.items() if i not in docker_swarm.config_ids(client))
        result.check("configs mounted exist", not lost,
                     f"{len(configs)} mounted" + (" (the stack uses none)" if not configs
                                                  else "") if not lost else
                     f"missing: {', '.join(lost)}")
        restored = ctx.shared.get("redis_restore") or {}
        restarted = False
        if facts.total and restored.get("recorded"):
            low, high = sorted(v or 0 for v in restored["recorded"])
            loaded = redis_failover._keys_loaded(ctx, restored["node"])
            result.check("redis loaded the snapshot", loaded is not None and
                         low <= loaded <= high,
                         f"{loaded} keys loaded on {restored['node']} (its log); the snapshot "
                         f"recorded {low}" + (f"-{high}" if high != low else ""))
        if facts.redis is not None and not facts.whole:
            where = _engine(ctx, facts.redis.node, facts.addresses[facts.redis.node])
            now = _redis_on(facts.redis.node, where)
            same = now is not None and now.run_id == facts.redis.run_id
            restarted = now is not None and not same
            result.check("redis data intact", now is not None,
                         f"the same process on {facts.redis.node} since before the loss" if same
                         else f"restarted on {facts.redis.node}, reloaded from its own AOF "
                         "(everysec)" if now else f"no Redis on {facts.redis.node}")
        answered = wait_readyz_through_lb(ctx, timeout, "the database and Redis")
        result.check("/readyz through the LB", bool(answered), f"through {answered}")
        started = float(ctx.shared.get("dr_started") or facts.detected_at)
        if facts.whole:
            result.note("RTO", "not measured: nothing was recovered in this run")
        else:
            rto = time.time() - started
            ctx.shared["dr_rto_s"] = round(rto, 1)
            result.note("RTO", f"{rto:.0f} s from the start of the run to the swarm whole "
                        "and /readyz green through the LB")
        result.note("RPO", "Postgres 0 (Neon is outside the swarm); Redis " + (
            f"{restored.get('rpo_s')} s (restored from {restored.get('snapshot')})"
            if restored.get("source") == "b2" else "at most the last second of writes before "
            "its restart (AOF everysec, reloaded from its own volume)" if restarted else
            "0 (the same process served throughout)" if facts.redis is not None else
            "unchanged (nothing was lost)"))
        result.reason = ("swarm whole again" if not facts.whole
                         else "the swarm was whole: verified as it is")
    return result
