"""Docker Swarm across the servers: every node a manager, node labels, the overlay network.

Every server is a manager (the seed: 3 managers tolerate 1 loss), except one that
``swarm.workers`` names (the scale-out's extra worker: an even node count whose managers stay
odd). A node already in this
swarm is left alone; a node in another swarm is never touched (the step fails and says so);
a replaced server leaves a "down" entry under its hostname, which is demoted and removed
before the new server joins, so the manager count stays what params say.
"""

from __future__ import annotations

import functools
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from casera.context import RunContext
from casera.errors import StepFailed, WaitTimeout
from casera.plan import Plan, apply
from casera.progress import wait_for
from casera.providers import docker_swarm
from casera.result import StepResult, timed
from casera.steps.access import docker_pool, known_hosts, node_addresses, parallel

REDIS_LABEL = "casera.redis"
DOZZLE_LABEL = "casera.dozzle"

# A Docker client (docker.DockerClient); steps hold it and hand it back to the provider.
DockerClient = Any


def _clients(ctx: RunContext, nodes: dict[str, str], connect: Any) -> dict[str, DockerClient]:
    s = ctx.params.ssh
    known = known_hosts(ctx)
    made = parallel(lambda item: connect(item[1], s.port, s.admin_user, s.private_key_file,
                                         s.connect_timeout_s, known_hosts=known, node=item[0]),
                    list(nodes.items()))
    return dict(zip(nodes, made, strict=True))


def docker_clients(ctx: RunContext, stack: ExitStack,
                   nodes: dict[str, str] | None = None) -> dict[str, DockerClient]:
    """name -> a Docker client of the caller's own (not the run's shared one, so a thread may
    use it alone), closed when ``stack`` closes."""
    clients = _clients(ctx, nodes if nodes is not None else node_addresses(ctx),
                       docker_swarm.connect)
    for client in clients.values():
        stack.callback(client.close)
    return clients


def manager_name(states: dict[str, dict[str, Any]]) -> str | None:
    """A node that is an active manager of the swarm (the first in params order)."""
    for name, state in states.items():
        if state["state"] == "active" and state["manager"]:
            return name
    return None


@dataclass
class Cluster:
    """The servers as Docker sees them: addresses, a client per node, each node's swarm
    state, and an active manager (None before the swarm exists)."""

    nodes: dict[str, str]
    clients: dict[str, DockerClient]
    states: dict[str, dict[str, Any]]
    leader: str | None

    @property
    def manager(self) -> DockerClient:
        if self.leader is None:
            raise StepFailed("no swarm manager answers: run the swarm step first")
        return self.clients[self.leader]


def connect_cluster(ctx: RunContext, nodes: dict[str, str] | None = None) -> Cluster:
    """Every server's engine (the run's shared clients, opened at once) and its swarm state."""
    nodes = nodes if nodes is not None else node_addresses(ctx)
    clients = _clients(ctx, nodes, docker_pool(ctx).get)
    states = dict(zip(clients, parallel(docker_swarm.swarm_state, list(clients.values())),
                      strict=True))
    return Cluster(nodes, clients, states, manager_name(states))


def cluster_or_reason(ctx: RunContext, need_swarm: bool = True) -> tuple[Cluster | None, str]:
    """The connected cluster, or why there is none: "no servers yet" or, when ``need_swarm``,
    "no swarm yet". Only a dry run gets the reason (it plans on what its earlier steps would
    make, see ``ctx.planned``); a run raises, naming the step to run first."""
    nodes = node_addresses(ctx)
    if nodes:
        cluster = connect_cluster(ctx, nodes)
        if cluster.leader is not None or not need_swarm:
            return cluster, ""
        reason = "no swarm yet"
    else:
        reason = "no servers yet"
    if not ctx.dry_run:
        raise StepFailed(f"{reason}: run the servers and swarm steps of the bootstrap first")
    return None, f"{reason}: planned on what the earlier steps would make"


def manager_client(ctx: RunContext, stack: ExitStack | None = None) -> DockerClient:
    """The run's Docker client on an active manager; raises when no swarm answers. (``stack``
    is not used: the client stays open for the rest of the run.)"""
    return connect_cluster(ctx).manager


def ensure_swarm(ctx: RunContext, timeout: float = 120) -> StepResult:
    """One swarm, every server a manager (a server ``swarm.workers`` names: a worker),
    initialised on the first server when none exists."""
    workers = ctx.params.swarm.workers

    def role(name: str) -> str:
        return "worker" if name in workers else "manager"

    with timed(StepResult("swarm", f"{len(ctx.params.manager_names())} managers" + (
            f", {len(workers)} worker" if workers else ""), dry_run=ctx.dry_run)) as result:
        plan = Plan(gate_title="Remove swarm entries of replaced servers")
        cluster, result.reason = cluster_or_reason(ctx, need_swarm=False)
        if cluster is None:
            first, *others = ctx.params.server_names()
            plan.add(f"+ swarm init on {first}")
            for name in others:
                plan.add(f"+ {name} joins as {role(name)}")
            apply(ctx, result, plan)
            return result
        nodes, clients, states, leader = (cluster.nodes, cluster.clients, cluster.states,
                                          cluster.leader)
        if leader is None:
            leader = next(iter(nodes))
            plan.add(f"+ swarm init on {leader} (advertise {nodes[leader]})",
                     functools.partial(docker_swarm.swarm_init, clients[leader], nodes[leader]))
        cluster_id = states[leader]["cluster_id"]  # None until the init above
        foreign = [n for n, st in states.items() if st["state"] == "active"
                   and st["cluster_id"] not in (None, cluster_id)]
        if foreign:
            raise StepFailed(f"{', '.join(foreign)} belong to another swarm; this step will not "
                             "take them over. Check which swarm is the real one, then "
                             "`docker swarm leave --force` on the others by hand")
        joining = [n for n, st in states.items() if st["state"] == "inactive" and n != leader]
        # Before the init there is nothing to clean yet.
        if states[leader]["state"] == "active":
            for entry in _stale_entries(clients[leader], joining):
                plan.add(f"- stale swarm entry {entry['hostname']} ({entry['id'][:12]}, "
                         f"{entry['state']})", functools.partial(
                             docker_swarm.remove_node, clients[leader], entry["id"],
                             demote=entry["role"] == "manager"), destructive=True)
        # Read after the init (made first): only then does the new swarm have a token.
        tokens = functools.cache(lambda: docker_swarm.join_tokens(clients[leader]))
        for name in joining:
            plan.add(f"+ {name} joins as {role(name)} via {leader}", functools.partial(
                lambda n: _join(clients[leader], clients[n], n, nodes[leader], nodes[n],
                                tokens()[role(n).capitalize()], role(n), timeout),
                name))
        if ctx.dry_run:
            # Servers the dry run's server step planned (a scale-out): the run joins them too.
            for name in [n for n in ctx.planned.get("servers", []) if n not in nodes]:
                plan.add(f"+ {name} joins as {role(name)} via {leader} (planned server)")
        if not plan:
            result.reason = "every server is already in this swarm"
        if apply(ctx, result, plan).dry_run:
            return result
        _verify_managers(clients[leader], nodes, result, timeout, workers)
    return result


def _join(leader: DockerClient, client: DockerClient, name: str, leader_addr: str, addr: str,
          token: str, role: str, timeout: float) -> None:
    """``name`` joins, then is waited for as a ready worker or a reachable manager before the
    next one joins: managers one at a time, as Docker's admin guide adds them. A Raft member
    still catching up holds up the next member's change, and the engine's own 20 s wait then
    runs out (seen under bench_dr's probe after a force-new-cluster): the join goes on in the
    background, and this waits for it instead of failing the run."""
    finished = docker_swarm.swarm_join(client, leader_addr, token, addr)

    def in_swarm() -> dict[str, Any] | None:
        return next((e for e in docker_swarm.nodes(leader) if e["hostname"] == name
                     and e["role"] == role and e["state"] == "ready"
                     and (role == "worker" or e["reachability"] == "reachable")), None)

    wait_for(f"{name} in the swarm as a " + ("ready worker" if role == "worker" else
             "reachable manager") + ("" if finished else " (the engine stopped waiting after "
                                     "20 s; the join goes on in the background)"),
             in_swarm, timeout)


def _stale_entries(client: DockerClient, joining: list[str]) -> list[dict[str, Any]]:
    """Entries of hostnames about to (re)join, or that are down while another entry of the
    same hostname is ready: both are what a replaced server leaves behind."""
    entries = docker_swarm.nodes(client)
    ready = {e["hostname"] for e in entries if e["state"] == "ready"}
    return [e for e in entries if e["state"] != "ready" and
            (e["hostname"] in joining or e["hostname"] in ready)]


def _verify_managers(client: DockerClient, nodes: dict[str, str], result: StepResult,
                     timeout: float, workers: list[str] | None = None) -> None:
    """Every node but ``workers`` a ready, reachable manager; each of ``workers`` a ready
    worker."""
    wanted = set(nodes) - set(workers or [])
    wanted_workers = set(nodes) & set(workers or [])

    def is_worker(e: dict[str, Any]) -> bool:
        return e["hostname"] in wanted_workers and e["role"] == "worker" and (
            e["state"] == "ready")

    def converged() -> list[dict[str, Any]] | None:
        entries = [e for e in docker_swarm.nodes(client) if e["hostname"] in nodes]
        ok = [e for e in entries if e["hostname"] in wanted and e["role"] == "manager"
              and e["state"] == "ready" and e["reachability"] == "reachable"]
        fine = len(ok) == len(wanted) and sum(map(is_worker, entries)) == len(wanted_workers)
        return entries if fine else None

    entries = wait_for(f"{len(wanted)} reachable managers" + (
        f" and {len(wanted_workers)} ready worker" if wanted_workers else ""), converged, timeout)
    if wanted_workers:
        ready_workers = sorted(e["hostname"] for e in entries if is_worker(e))
        result.check("workers", set(ready_workers) == wanted_workers,
                     f"{len(ready_workers)} of {len(wanted_workers)} ready: "
                     f"{', '.join(ready_workers) or 'none'}")
    leaders = [e["hostname"] for e in entries if e["leader"]]
    ready = sorted(e["hostname"] for e in entries if e["role"] == "manager"
                   and e["state"] == "ready" and e["reachability"] == "reachable")
    result.check("managers", set(ready) == wanted,
                 f"{len(ready)} of {len(wanted)} ready and reachable: {', '.join(ready)}")
    result.check("one leader", len(leaders) == 1, f"leader {', '.join(leaders) or 'none'}")
    result.check("odd manager count", len(wanted) % 2 == 1,
                 f"{len(wanted)} managers tolerate {(len(wanted) - 1) // 2} failure(s)")


def verify_swarm(ctx: RunContext) -> StepResult:
    """Seen from every node: the same swarm, every server a ready, reachable manager."""
    with timed(StepResult("swarm health", "all nodes", dry_run=ctx.dry_run)) as result:
        cluster, result.reason = cluster_or_reason(ctx, need_swarm=False)
        if cluster is None or (ctx.dry_run and cluster.leader is None):
            # A dry run before the swarm exists: nothing to check yet.
            result.reason = result.reason or "no swarm yet: nothing to check in a dry run"
            return result
        states = cluster.states
        clusters = {st["cluster_id"] for st in states.values()}
        result.check("one swarm", len(clusters) == 1 and None not in clusters,
                     f"{len(clusters)} cluster id(s) among {len(cluster.nodes)} nodes")
        for name, state in states.items():
            worker = name in ctx.params.swarm.workers
            result.check(f"{name} {'worker' if worker else 'manager'}",
                         state["state"] == "active" if worker else state["manager"],
                         f"{state['state']}, " + ("a worker" if not state["manager"] else
                                                  f"sees {state['managers']} managers")
                         + (f", error {state['error']}" if state["error"] else ""))
        if cluster.leader:
            _verify_managers(cluster.manager, cluster.nodes, result, 30,
                             ctx.params.swarm.workers)
    return result


def desired_node_labels(ctx: RunContext, names: list[str]) -> dict[str, dict[str, str]]:
    """Redis on ``swarm.redis_node``; Dozzle allowed on every manager when params say so."""
    redis_host = ctx.params.server_names()[ctx.params.swarm.redis_node - 1]
    labels: dict[str, dict[str, str]] = {}
    for name in names:
        labels[name] = {}
        if name == redis_host:
            labels[name][REDIS_LABEL] = "true"
        if ctx.params.swarm.dozzle_on_managers and name not in ctx.params.swarm.workers:
            labels[name][DOZZLE_LABEL] = "true"
    return labels


def ensure_node_labels(ctx: RunContext) -> StepResult:
    """Our labels exactly as params say; labels we do not own are left alone."""
    with timed(StepResult("node labels", f"{REDIS_LABEL}, {DOZZLE_LABEL}",
                          dry_run=ctx.dry_run)) as result:
        cluster, result.reason = cluster_or_reason(ctx)
        if cluster is None:
            # The dry run's swarm step planned the swarm: every node will join unlabelled, so
            # the plan is each desired label on each server, as the run will then set them.
            entries = [{"hostname": name, "state": "ready", "labels": {}, "id": None}
                       for name in ctx.params.server_names()]
        else:
            entries = docker_swarm.nodes(cluster.manager)
            if ctx.dry_run:
                # Planned servers (a scale-out's dry run) join unlabelled, as above.
                entries += [{"hostname": name, "state": "ready", "labels": {}, "id": None}
                            for name in ctx.planned.get("servers", [])
                            if name not in cluster.nodes]
        desired = desired_node_labels(ctx, list(cluster.nodes) + [
            n for n in ctx.planned.get("servers", []) if n not in cluster.nodes]
            if cluster and ctx.dry_run else list(cluster.nodes) if cluster
            else ctx.params.server_names())
        plan = Plan()
        for entry in entries:
            if entry["hostname"] not in desired or entry["state"] != "ready":
                continue
            current = entry["labels"]
            want = {k: v for k, v in current.items() if k not in (REDIS_LABEL, DOZZLE_LABEL)}
            want.update(desired[entry["hostname"]])
            if want == current:
                continue
            lines = [f"{'-' if key not in want else '+' if key not in current else '~'} "
                     f"{entry['hostname']} {key}={want.get(key, current.get(key))}"
                     for key in sorted(set(want) | set(current))
                     if want.get(key) != current.get(key)]
            # One change per node (one update of its spec), however many labels it moves.
            plan.add(lines[0], functools.partial(docker_swarm.set_node_labels,
                                                 cluster.manager if cluster else None,
                                                 entry["id"], want))
            for line in lines[1:]:
                plan.show(line)
        if not plan and cluster is not None:
            result.reason = "labels as params say"
        if apply(ctx, result, plan).dry_run:
            return result
        now = {e["hostname"]: e["labels"] for e in docker_swarm.nodes(cluster.manager)}
        redis_nodes = [h for h, lab in now.items() if lab.get(REDIS_LABEL) == "true"]
        result.check("redis pinned to one node", len(redis_nodes) == 1,
                     ", ".join(redis_nodes) or "none")
    return result


def ensure_overlay_network(ctx: RunContext) -> StepResult:
    """The attachable overlay network, encrypted when params say so (never silently not)."""
    sw = ctx.params.swarm
    with timed(StepResult("overlay network", sw.overlay_network, dry_run=ctx.dry_run)) as result:
        cluster, result.reason = cluster_or_reason(ctx)
        found = docker_swarm.network(cluster.manager, sw.overlay_network) if cluster else None
        plan = Plan()
        if found is not None:
            encrypted = "encrypted" in (found.get("Options") or {})
            if encrypted != sw.overlay_encrypted:
                raise StepFailed(
                    f"network {sw.overlay_network} exists with encrypted={encrypted}, params say "
                    f"{sw.overlay_encrypted}. A network's encryption cannot change in place: "
                    "remove the stack, `docker network rm` it, and re-run")
            result.reason = "exists as params say"
        else:
            plan.add(f"+ overlay {sw.overlay_network} (attachable, "
                     f"encrypted={sw.overlay_encrypted})", functools.partial(
                         docker_swarm.create_overlay, cluster.manager if cluster else None,
                         sw.overlay_network, sw.overlay_encrypted, {"casera.env": ctx.env}))
        applied = apply(ctx, result, plan)
        if not applied.dry_run:
            network = docker_swarm.network(cluster.manager, sw.overlay_network) or {}
            encrypted = "encrypted" in (network.get("Options") or {})
            result.check("encryption as params say", bool(network) and
                         encrypted == sw.overlay_encrypted,
                         f"network option encrypted {'set' if encrypted else 'absent'}, params "
                         f"say {sw.overlay_encrypted}" if network else "network not found")
        result.note("encryption",
                    "ON: IPsec (ESP) between nodes" if sw.overlay_encrypted else
                    f"OFF, as params/{ctx.env}.yaml says (swarm.overlay_encrypted: false): "
                    "traffic between nodes on this network is NOT encrypted")
    return result


PROBE_SERVICE = "casera-overlay-probe"
PROBE_PORT = 8099
_FETCH = ("import sys, urllib.request; "
          "urllib.request.urlopen(sys.argv[1], timeout=3).read(); print('ok')")


def _probe_tasks(tasks: list[dict[str, Any]], network_id: str) -> dict[str, str] | None:
    """node id -> task address on the overlay, once every probe task runs."""
    addresses: dict[str, str] = {}
    for task in tasks:
        if task["Status"]["State"] != "running":
            return None
        for attachment in task.get("NetworksAttachments") or []:
            if attachment["Network"]["ID"] == network_id and attachment.get("Addresses"):
                addresses[task["NodeID"]] = attachment["Addresses"][0].split("/")[0]
    return addresses


def verify_overlay_traffic(ctx: RunContext, timeout: float = 120) -> StepResult:
    """A short-lived probe on the overlay: one task per node, and every node's task fetches
    from every other node's task. Catches a firewall without ESP when the overlay is
    encrypted, and a broken VXLAN path when it is not. Removes the probe afterwards."""
    sw = ctx.params.swarm
    with timed(StepResult("overlay traffic", sw.overlay_network,
                          dry_run=ctx.dry_run)) as result, ExitStack() as stack:
        if ctx.dry_run:
            result.reason = "probe not run in a dry run"
            return result
        cluster = connect_cluster(ctx)
        nodes, clients, manager = cluster.nodes, cluster.clients, cluster.manager
        for old in docker_swarm.services(manager, label="casera.probe"):
            if old["name"] == PROBE_SERVICE:
                docker_swarm.remove_service(manager, old["id"])
        network = docker_swarm.network(manager, sw.overlay_network)
        if network is None:
            raise StepFailed(f"no network {sw.overlay_network}: run the overlay network step")
        service_id = docker_swarm.create_global_probe(
            manager, sw.probe_image, PROBE_SERVICE,
            ["python3", "-m", "http.server", str(PROBE_PORT)], network["Id"],
            {"casera.probe": "overlay"}, "65534:65534")
        stack.callback(docker_swarm.remove_service, manager, service_id)
        ids = {e["hostname"]: e["id"] for e in docker_swarm.nodes(manager)
               if e["state"] == "ready"}

        def every_node_has_a_task() -> dict[str, str] | None:
            found = _probe_tasks(docker_swarm.tasks(manager, {
                "service": service_id, "desired-state": "running"}), network["Id"])
            return found if found and all(ids.get(n) in found for n in nodes) else None

        addresses = wait_for(f"a probe task on each of {len(nodes)} nodes",
                             every_node_has_a_task, timeout)
        label = f"com.docker.swarm.service.name={PROBE_SERVICE}"

        def from_node(source: str) -> list[tuple[str, bool, str]]:
            """Every fetch from ``source``'s probe task; the nodes are probed at once, each
            pair waited for on its own (a pair that fails costs its 20 s, not everyone's)."""
            client = clients[source]
            container = wait_for(f"the probe container on {source}", lambda: next(
                iter(docker_swarm.container_ids(client, label)), None), 30, show=False)
            found = []
            for target in nodes:
                if target == source:
                    continue
                url = f"http://{addresses[ids[target]]}:{PROBE_PORT}/"
                try:
                    fetched = wait_for(f"{source} -> {target} over {sw.overlay_network}",
                                       lambda u=url: docker_swarm.exec_exit_code(
                                           client, container, ["python3", "-c", _FETCH, u]
                                       ) == 0, 20, show=False)
                    found.append((f"{source} -> {target}", fetched is True, f"HTTP to {url}"))
                except WaitTimeout:
                    found.append((f"{source} -> {target}", False,
                                  f"no answer from {url} within 20 s"
                                  + ("; the overlay is encrypted: does the firewall pass ESP "
                                     "(IP protocol 50) between the nodes?"
                                     if sw.overlay_encrypted else "")))
            return found

        for pairs in parallel(from_node, list(clients)):
            for name, ok, detail in pairs:
                result.check(name, ok, detail)
        result.reason = ("encrypted overlay carries traffic" if sw.overlay_encrypted else
                         "traffic crosses the overlay UNENCRYPTED (params: "
                         "swarm.overlay_encrypted false)")
    return result
