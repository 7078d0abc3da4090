"""Docker Swarm across the servers: every node a manager, node labels, the overlay network.

Every server is a manager (the seed: 3 managers tolerate 1 loss). A node already in this
swarm is left alone; a node in another swarm is never touched (the step fails and says so);
a replaced server leaves a "down" entry under its hostname, which is demoted and removed
before the new server joins, so the manager count stays what params say.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import docker

from casera.context import RunContext
from casera.errors import StepFailed, WaitTimeout
from casera.gate import confirm
from casera.progress import wait_for
from casera.providers import docker_swarm, ssh
from casera.result import StepResult, timed
from casera.steps.access import node_addresses

REDIS_LABEL = "casera.redis"
DOZZLE_LABEL = "casera.dozzle"


def docker_clients(ctx: RunContext, stack: ExitStack,
                   nodes: dict[str, str] | None = None) -> dict[str, docker.DockerClient]:
    """name -> Docker client over SSH, closed when ``stack`` closes."""
    s = ctx.params.ssh
    clients = {}
    for name, ip in (nodes or node_addresses(ctx)).items():
        client = docker_swarm.connect(ip, s.port, s.admin_user, s.private_key_file,
                                      s.connect_timeout_s, node=name,
                                      known_hosts=ssh.KnownHosts.for_env(ctx.params.env))
        stack.callback(client.close)
        clients[name] = client
    return clients


def manager_name(clients: dict[str, docker.DockerClient],
                 states: dict[str, dict[str, Any]]) -> str | None:
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
    clients: dict[str, docker.DockerClient]
    states: dict[str, dict[str, Any]]
    leader: str | None

    @property
    def manager(self) -> docker.DockerClient:
        if self.leader is None:
            raise StepFailed("no swarm manager answers: run the swarm step first")
        return self.clients[self.leader]


def connect_cluster(ctx: RunContext, stack: ExitStack,
                    nodes: dict[str, str] | None = None) -> Cluster:
    nodes = nodes if nodes is not None else node_addresses(ctx)
    clients = docker_clients(ctx, stack, nodes)
    states = {name: docker_swarm.swarm_state(client) for name, client in clients.items()}
    return Cluster(nodes, clients, states, manager_name(clients, states))


def manager_client(ctx: RunContext, stack: ExitStack) -> docker.DockerClient:
    """A Docker client on an active manager; raises when no swarm answers."""
    return connect_cluster(ctx, stack).manager


def ensure_swarm(ctx: RunContext, timeout: float = 120) -> StepResult:
    """One swarm, every server a manager, initialised on the first server when none exists."""
    with timed(StepResult("swarm", f"{len(ctx.params.server_names())} managers",
                          dry_run=ctx.dry_run)) as result, ExitStack() as stack:
        nodes = node_addresses(ctx)
        if ctx.dry_run and not nodes:
            result.changed = len(ctx.params.server_names())
            result.diff = [f"+ swarm init on {ctx.params.server_names()[0]}"] + [
                f"+ {n} joins as manager" for n in ctx.params.server_names()[1:]]
            return result
        cluster = connect_cluster(ctx, stack, nodes)
        clients, states, leader = cluster.clients, cluster.states, cluster.leader
        if leader is None:
            first = next(iter(nodes))
            result.diff.append(f"+ swarm init on {first} (advertise {nodes[first]})")
            result.changed += 1
            if not ctx.dry_run:
                clients[first].swarm.init(advertise_addr=nodes[first],
                                          listen_addr=f"{nodes[first]}:2377")
                states[first] = docker_swarm.swarm_state(clients[first])
            leader = first
        cluster_id = states[leader]["cluster_id"]
        foreign = [n for n, st in states.items() if st["state"] == "active"
                   and st["cluster_id"] not in (None, cluster_id)]
        if foreign:
            raise StepFailed(f"{', '.join(foreign)} belong to another swarm; this step will not "
                             "take them over. Check which swarm is the real one, then "
                             "`docker swarm leave --force` on the others by hand")
        joining = [n for n, st in states.items() if st["state"] == "inactive" and n != leader]
        # In a dry run on a fresh cluster the leader is only planned: nothing to clean yet.
        active = states[leader]["state"] == "active"
        stale = _stale_entries(clients[leader], joining) if active else []
        result.diff += [f"- stale swarm entry {e['hostname']} ({e['id'][:12]}, {e['state']})"
                        for e in stale]
        result.diff += [f"+ {n} joins as manager via {leader}" for n in joining]
        result.changed += len(stale) + len(joining)
        if not result.changed:
            result.reason = "every server is already a manager of this swarm"
        if ctx.dry_run:
            return result
        if stale:
            confirm(ctx, "Remove swarm entries of replaced servers",
                    [f"- {e['hostname']} {e['id'][:12]} ({e['state']})" for e in stale])
            for entry in stale:
                _remove_node(clients[leader], entry)
        if joining:
            token = docker_swarm.join_tokens(clients[leader])["Manager"]
            for name in joining:
                clients[name].swarm.join(remote_addrs=[f"{nodes[leader]}:2377"],
                                         join_token=token, advertise_addr=nodes[name],
                                         listen_addr=f"{nodes[name]}:2377")
        _verify_managers(ctx, clients[leader], nodes, result, timeout)
    return result


def _stale_entries(client: docker.DockerClient, joining: list[str]) -> list[dict[str, Any]]:
    """Entries of hostnames about to (re)join, or that are down while another entry of the
    same hostname is ready: both are what a replaced server leaves behind."""
    entries = docker_swarm.nodes(client)
    ready = {e["hostname"] for e in entries if e["state"] == "ready"}
    return [e for e in entries if e["state"] != "ready" and
            (e["hostname"] in joining or e["hostname"] in ready)]


def _remove_node(client: docker.DockerClient, entry: dict[str, Any]) -> None:
    node = client.nodes.get(entry["id"])
    if entry["role"] == "manager":
        spec = dict(node.attrs["Spec"], Role="worker")
        node.update(spec)
        node.reload()
    node.remove(force=True)


def _verify_managers(ctx: RunContext, client: docker.DockerClient, nodes: dict[str, str],
                     result: StepResult, timeout: float) -> None:
    wanted = set(nodes)

    def converged() -> list[dict[str, Any]] | None:
        entries = [e for e in docker_swarm.nodes(client) if e["hostname"] in wanted]
        ok = [e for e in entries if e["role"] == "manager" and e["state"] == "ready"
              and e["reachability"] == "reachable"]
        return entries if len(ok) == len(wanted) else None

    entries = wait_for(f"{len(wanted)} reachable managers", converged, timeout)
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
    with timed(StepResult("swarm health", "all nodes", dry_run=ctx.dry_run)) as result, \
            ExitStack() as stack:
        nodes = node_addresses(ctx)
        if ctx.dry_run and not nodes:
            result.reason = "no servers yet"
            return result
        cluster = connect_cluster(ctx, stack, nodes)
        states = cluster.states
        clusters = {st["cluster_id"] for st in states.values()}
        result.check("one swarm", len(clusters) == 1 and None not in clusters,
                     f"{len(clusters)} cluster id(s) among {len(nodes)} nodes")
        for name, state in states.items():
            result.check(f"{name} manager", state["manager"],
                         f"{state['state']}, sees {state['managers']} managers"
                         + (f", error {state['error']}" if state["error"] else ""))
        if cluster.leader:
            _verify_managers(ctx, cluster.manager, nodes, result, 30)
    return result


def desired_node_labels(ctx: RunContext, names: list[str]) -> dict[str, dict[str, str]]:
    """Redis on ``swarm.redis_node``; Dozzle allowed on every manager when params say so."""
    redis_host = ctx.params.server_names()[ctx.params.swarm.redis_node - 1]
    labels: dict[str, dict[str, str]] = {}
    for name in names:
        labels[name] = {}
        if name == redis_host:
            labels[name][REDIS_LABEL] = "true"
        if ctx.params.swarm.dozzle_on_managers:
            labels[name][DOZZLE_LABEL] = "true"
    return labels


def ensure_node_labels(ctx: RunContext) -> StepResult:
    """Our labels exactly as params say; labels we do not own are left alone."""
    with timed(StepResult("node labels", f"{REDIS_LABEL}, {DOZZLE_LABEL}",
                          dry_run=ctx.dry_run)) as result, ExitStack() as stack:
        nodes = node_addresses(ctx)
        cluster = connect_cluster(ctx, stack, nodes) if nodes else None
        if cluster is None or cluster.leader is None:
            if not ctx.dry_run:
                result.reason = "no swarm yet"
                return result
            # The dry run's swarm step planned the swarm: every node will join unlabelled, so
            # the plan is each desired label on each server, as the run will then set them.
            result.reason = "planned on the swarm the earlier step would make"
            entries = [{"hostname": name, "state": "ready", "labels": {}, "id": None}
                       for name in ctx.params.server_names()]
        else:
            entries = docker_swarm.nodes(cluster.manager)
        desired = desired_node_labels(ctx, list(nodes) or ctx.params.server_names())
        for entry in entries:
            if entry["hostname"] not in desired or entry["state"] != "ready":
                continue
            current = entry["labels"]
            want = {k: v for k, v in current.items() if k not in (REDIS_LABEL, DOZZLE_LABEL)}
            want.update(desired[entry["hostname"]])
            if want == current:
                continue
            for key in sorted(set(want) | set(current)):
                if want.get(key) != current.get(key):
                    sign = "-" if key not in want else "+" if key not in current else "~"
                    result.diff.append(f"{sign} {entry['hostname']} {key}="
                                       f"{want.get(key, current.get(key))}")
            result.changed += 1
            if not ctx.dry_run:
                node = cluster.manager.nodes.get(entry["id"])
                node.update(dict(node.attrs["Spec"], Labels=want))
        if not result.changed:
            result.reason = "labels as params say"
        if not ctx.dry_run:
            client = cluster.manager
            now = {e["hostname"]: e["labels"] for e in docker_swarm.nodes(client)}
            redis_nodes = [h for h, lab in now.items() if lab.get(REDIS_LABEL) == "true"]
            result.check("redis pinned to one node", len(redis_nodes) == 1,
                         ", ".join(redis_nodes) or "none")
    return result


def ensure_overlay_network(ctx: RunContext) -> StepResult:
    """The attachable overlay network, encrypted when params say so (never silently not)."""
    sw = ctx.params.swarm
    with timed(StepResult("overlay network", sw.overlay_network, dry_run=ctx.dry_run)) as result, \
            ExitStack() as stack:
        nodes = node_addresses(ctx)
        if ctx.dry_run and not nodes:
            result.changed, result.diff = 1, [f"+ overlay {sw.overlay_network} encrypted="
                                              f"{sw.overlay_encrypted}"]
            return result
        cluster = connect_cluster(ctx, stack, nodes)
        if cluster.leader is None:
            result.changed, result.reason = 1, "no swarm yet"
            return result
        client = cluster.manager
        found = [n for n in client.networks.list(names=[sw.overlay_network])
                 if n.name == sw.overlay_network]
        if found:
            options = found[0].attrs.get("Options") or {}
            encrypted = "encrypted" in options
            if encrypted != sw.overlay_encrypted:
                raise StepFailed(
                    f"network {sw.overlay_network} exists with encrypted={encrypted}, params say "
                    f"{sw.overlay_encrypted}. A network's encryption cannot change in place: "
                    "remove the stack, `docker network rm` it, and re-run")
            result.reason = "exists as params say"
        else:
            result.changed = 1
            result.diff.append(f"+ overlay {sw.overlay_network} (attachable, "
                               f"encrypted={sw.overlay_encrypted})")
            if not ctx.dry_run:
                client.networks.create(sw.overlay_network, driver="overlay", attachable=True,
                                       scope="swarm", labels={"casera.env": ctx.env},
                                       options={"encrypted": "true"} if sw.overlay_encrypted
                                       else None)
        if not ctx.dry_run:
            network = client.networks.get(sw.overlay_network)
            encrypted = "encrypted" in (network.attrs.get("Options") or {})
            result.check("encryption as params say", encrypted == sw.overlay_encrypted,
                         f"network option encrypted {'set' if encrypted else 'absent'}, params "
                         f"say {sw.overlay_encrypted}")
        result.note("encryption",
                    "ON: IPsec (ESP) between nodes" if sw.overlay_encrypted else
                    f"OFF, as params/{ctx.env}.yaml says (swarm.overlay_encrypted: false): "
                    "traffic between nodes on this network is NOT encrypted")
    return result


PROBE_SERVICE = "casera-overlay-probe"
PROBE_PORT = 8099
_FETCH = ("import sys, urllib.request; "
          "urllib.request.urlopen(sys.argv[1], timeout=3).read(); print('ok')")


def _probe_tasks(service: Any, network_id: str) -> dict[str, str] | None:
    """node id -> task address on the overlay, once every probe task runs."""
    addresses: dict[str, str] = {}
    for task in service.tasks(filters={"desired-state": "running"}):
        if task["Status"]["State"] != "running":
            return None
        for attachment in task.get("NetworksAttachments") or []:
            if attachment["Network"]["ID"] == network_id and attachment.get("Addresses"):
                addresses[task["NodeID"]] = attachment["Addresses"][0].split("/")[0]
    return addresses


def _fetches(container: Any, url: str) -> bool:
    return container.exec_run(["python3", "-c", _FETCH, url]).exit_code == 0


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
        cluster = connect_cluster(ctx, stack)
        nodes, clients, manager = cluster.nodes, cluster.clients, cluster.manager
        for old in manager.services.list(filters={"name": PROBE_SERVICE}):
            old.remove()
        network = manager.networks.get(sw.overlay_network)
        service = manager.services.create(
            sw.probe_image, name=PROBE_SERVICE, mode=docker.types.ServiceMode("global"),
            command=["python3", "-m", "http.server", str(PROBE_PORT)],
            networks=[network.id], endpoint_spec=docker.types.EndpointSpec(mode="dnsrr"),
            labels={"casera.probe": "overlay"}, user="65534:65534",
            restart_policy=docker.types.RestartPolicy(condition="none"))
        stack.callback(service.remove)
        ids = {e["hostname"]: e["id"] for e in docker_swarm.nodes(manager)
               if e["state"] == "ready"}

        def every_node_has_a_task() -> dict[str, str] | None:
            found = _probe_tasks(service, network.id)
            return found if found and all(ids.get(n) in found for n in nodes) else None

        addresses = wait_for(f"a probe task on each of {len(nodes)} nodes",
                             every_node_has_a_task, timeout)
        label = f"com.docker.swarm.service.name={PROBE_SERVICE}"
        for source, client in clients.items():
            container = wait_for(f"the probe container on {source}", lambda c=client: next(
                iter(c.containers.list(filters={"label": label})), None), 30)
            for target in nodes:
                if target == source:
                    continue
                url = f"http://{addresses[ids[target]]}:{PROBE_PORT}/"
                try:
                    fetched = wait_for(f"{source} -> {target} over {sw.overlay_network}",
                                       lambda u=url, c=container: _fetches(c, u), 20,
                                       show=False)
                    result.check(f"{source} -> {target}", fetched is True, f"HTTP to {url}")
                except WaitTimeout:
                    result.check(f"{source} -> {target}", False,
                                 f"no answer from {url} within 20 s"
                                 + ("; the overlay is encrypted: does the firewall pass ESP "
                                    "(IP protocol 50) between the nodes?"
                                    if sw.overlay_encrypted else ""))
        result.reason = ("encrypted overlay carries traffic" if sw.overlay_encrypted else
                         "traffic crosses the overlay UNENCRYPTED (params: "
                         "swarm.overlay_encrypted false)")
    return result
