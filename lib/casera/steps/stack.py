"""The Casera stack: render the stack file from params, ``docker stack deploy`` it on a
manager, wait until every service runs its replicas, then verify what the seed promises.

``docker stack deploy`` is a CLI feature (the Engine API has no stacks), so the file goes to a
manager over SSH and the CLI runs there; everything read back goes through the Docker SDK.
The rendered file is kept on the manager: an identical file on a converged stack is
"0 changes".
"""

from __future__ import annotations

import io
import socket
import urllib.error
import urllib.request
from contextlib import ExitStack
from typing import Any

import docker
import paramiko
from fabric import Connection

from casera.context import RunContext
from casera.errors import WaitTimeout
from casera.operator_secrets import Secret
from casera.params import Params
from casera.progress import wait_for
from casera.providers import docker_swarm, ssh
from casera.result import StepResult, timed
from casera.stack import DOZZLE_PORT, SECRETS, render_stack, settings_from_params
from casera.steps.access import node_addresses
from casera.steps.swarm import connect_cluster
from casera.steps.swarm_secrets import current_names

STACK = "casera"
REMOTE_FILE = "casera-stack.yml"


def stack_services(client: docker.DockerClient) -> dict[str, Any]:
    return {s.name.removeprefix(f"{STACK}_"): s for s in client.services.list(
        filters={"label": f"com.docker.stack.namespace={STACK}"})}


def _rolled(task: dict[str, Any], template: dict[str, Any]) -> bool:
    """The task runs the service's current image and secret versions."""
    have, want = task["Spec"].get("ContainerSpec") or {}, template.get("ContainerSpec") or {}
    return have.get("Image") == want.get("Image") and (
        {s.get("SecretID") for s in have.get("Secrets") or []}
        == {s.get("SecretID") for s in want.get("Secrets") or []})


def _converged(client: docker.DockerClient, params: Params) -> dict[str, int] | None:
    """service -> running tasks, once every service runs exactly its replicas, each on the
    service's current image and secrets: right after `docker stack deploy` the old tasks
    still run, and a rolling update (a new secret version) is not done until they are gone."""
    services = stack_services(client)
    counts = {}
    for name in ("api", "worker", "admin", "redis", "dozzle"):
        service = services.get(name)
        if service is None:
            return None
        template = service.attrs["Spec"]["TaskTemplate"]
        running = [t for t in service.tasks(filters={"desired-state": "running"})
                   if t["Status"]["State"] == "running"]
        counts[name] = len(running)
        if len(running) != getattr(params.services, name).replicas or not all(
                _rolled(t, template) for t in running):
            return None
    return counts


def ensure_stack(ctx: RunContext, timeout: float = 600) -> StepResult:
    """The stack deployed from params, every service at its replica count."""
    p = ctx.params
    with timed(StepResult("stack", STACK, dry_run=ctx.dry_run)) as result, \
            ExitStack() as stack:
        nodes = node_addresses(ctx)
        if ctx.dry_run and not nodes:
            result.changed = 1
            result.diff = [f"+ stack {STACK}: " + ", ".join(
                f"{n} x{getattr(p.services, n).replicas}" for n in
                ("api", "worker", "admin", "redis", "dozzle"))]
            return result
        cluster = connect_cluster(ctx, stack, nodes)
        if cluster.leader is None:
            result.changed, result.reason = 1, "no swarm yet"
            return result
        client = cluster.manager
        conn = stack.enter_context(ssh.connect(nodes[cluster.leader], p.ssh.port, p.ssh.admin_user,
                                               p.ssh.private_key_file, p.ssh.connect_timeout_s,
                                               known_hosts=ssh.KnownHosts.for_env(p.env),
                                               node=cluster.leader))
        gid = int(ssh.run(conn, "stat -c %g /var/run/docker.sock"))
        try:
            names = current_names(client, list(SECRETS))
        except LookupError as exc:
            if not ctx.dry_run:
                raise
            names = {n: f"casera_{n}_v1" for n in SECRETS}
            result.diff.append(f"  ({exc}; assuming v1)")
        text = render_stack(settings_from_params(p, secrets=names, docker_socket_gid=gid))
        deployed = ssh.run(conn, f"cat {REMOTE_FILE} 2>/dev/null || true")
        converged = _converged(client, p)
        if deployed.strip() == text.strip() and converged:
            result.reason = "deployed file unchanged and every service at its replicas"
        else:
            result.changed = 1
            result.diff.append(f"~ docker stack deploy {STACK}" if deployed else
                               f"+ docker stack deploy {STACK}")
            result.diff += _file_diff(deployed, text)
            if ctx.dry_run:
                return result
            conn.put(io.StringIO(text), REMOTE_FILE)
            ssh.run(conn, docker_swarm.cli(f"stack deploy --with-registry-auth -c {REMOTE_FILE} "
                                           f"{STACK}"), timeout=300)
        if ctx.dry_run:
            return result
        counts = wait_for("every service at its replica count",
                          lambda: _converged(client, p), timeout)
        for name, count in counts.items():
            wanted = getattr(p.services, name).replicas
            result.check(f"{name} replicas", count == wanted,
                         f"{count} running, params say {wanted}")
    return result


def _file_diff(old: str, new: str) -> list[str]:
    import difflib

    changed = [line for line in difflib.unified_diff(old.splitlines(), new.splitlines(),
                                                     lineterm="", n=0)
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    return [f"  {line}" for line in changed[:20]] + (
        [f"  ... {len(changed) - 20} more changed lines"] if len(changed) > 20 else [])


def verify_stack(ctx: RunContext, secret_values: dict[str, Secret]) -> StepResult:
    """Placement, non-root users, no secret values in any service's environment, and Dozzle
    answering inside its node (through an SSH tunnel) while closed from outside every node."""
    p = ctx.params
    with timed(StepResult("stack checks", STACK, dry_run=ctx.dry_run)) as result, \
            ExitStack() as stack:
        if ctx.dry_run:
            result.reason = "nothing deployed in a dry run"
            return result
        cluster = connect_cluster(ctx, stack)
        nodes, clients, client = cluster.nodes, cluster.clients, cluster.manager
        swarm_nodes = {e["id"]: e for e in docker_swarm.nodes(client)}
        services = stack_services(client)

        def hosts_of(name: str) -> list[str]:
            return sorted(swarm_nodes[t["NodeID"]]["hostname"] for t in services[name].tasks(
                filters={"desired-state": "running"}) if t["Status"]["State"] == "running")

        redis_host = p.server_names()[p.swarm.redis_node - 1]
        result.check("redis on its labelled node", hosts_of("redis") == [redis_host],
                     f"on {', '.join(hosts_of('redis'))}, label casera.redis on {redis_host}")
        volumes = [v.name for v in clients[redis_host].volumes.list()]
        result.check("redis volume on that node", "casera-redis-data" in volumes,
                     "casera-redis-data" if "casera-redis-data" in volumes else "missing")
        dozzle = hosts_of("dozzle")
        managers = {e["hostname"] for e in swarm_nodes.values() if e["role"] == "manager"}
        result.check("dozzle on a manager", bool(dozzle) and set(dozzle) <= managers,
                     ", ".join(dozzle))
        api_hosts = hosts_of("api")
        spread = len(set(api_hosts)) == min(len(nodes), p.services.api.replicas)
        result.check("api spread over the nodes", spread,
                     f"{len(api_hosts)} tasks on {len(set(api_hosts))} nodes")
        leaked = []
        for name, service in services.items():
            spec = service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
            env = " ".join(spec.get("Env") or [])
            leaked += [f"{name}:{secret}" for secret, value in secret_values.items()
                       if value.reveal() in env]
            user = spec.get("User") or ""
            result.check(f"{name} non-root", bool(user) and user.split(":")[0] not in
                         ("0", "root"), f"user {user or '(image default)'}")
        result.check("no secret values in service environments", not leaked,
                     "checked every service's Env against every secret value"
                     if not leaked else f"FOUND in {', '.join(leaked)} (values not shown)")
        for name in sorted(set(api_hosts)):
            url = f"http://{nodes[name]}:{p.swarm.api_published_port}/readyz"
            try:
                body = wait_for(f"{url} to answer", lambda u=url: _get(u), 60, show=False)
                result.check(f"api /readyz on {name}", body is not None, body[:80])
            except WaitTimeout as exc:
                result.check(f"api /readyz on {name}", False, str(exc)[:160])
        _check_dozzle(ctx, stack, result, nodes, dozzle)
    return result


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode(errors="replace") if response.status == 200 else None
    except urllib.error.HTTPError:
        return None


def tcp_probe(ip: str, port: int, timeout: float = 3.0) -> str:
    """What a TCP connect from this machine finds: ``open``, ``refused`` (the node answered
    that nothing listens there) or ``no answer`` (dropped on the way, silently, as the
    Hetzner firewall drops)."""
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "no answer"


def http_through_tunnel(conn: Connection, port: int, path: str,
                         timeout: float = 10.0) -> tuple[int, str]:
    """GET ``path`` from the node's own 127.0.0.1:``port`` over the SSH connection's
    direct-tcpip channel: exactly what ``ssh -L`` does for an operator. Returns the status
    and the first line of the body."""
    conn.open()
    transport = conn.client.get_transport()
    if transport is None:
        raise OSError("the SSH connection has no transport")
    channel = transport.open_channel("direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0),
                                     timeout=timeout)
    try:
        channel.settimeout(timeout)
        channel.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        raw = b""
        while len(raw) < 65536:
            chunk = channel.recv(4096)
            if not chunk:
                break
            raw += chunk
    finally:
        channel.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = status_line.split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise OSError(f"not an HTTP answer: {status_line[:80]!r}")
    first_line = next(iter(body.decode(errors="replace").strip().splitlines()), "")
    return int(parts[1]), first_line[:80]


def _check_dozzle(ctx: RunContext, stack: ExitStack, result: StepResult,
                  nodes: dict[str, str], dozzle_hosts: list[str]) -> None:
    """Both halves of "internal only", each a real probe: Dozzle answers HTTP on its node's
    loopback through an SSH tunnel, and port 9999 of every node is closed to this machine."""
    s = ctx.params.ssh
    if not dozzle_hosts:
        result.check("dozzle answers through an SSH tunnel", False,
                     "no running Dozzle task to reach")
    for name in dozzle_hosts:
        conn = stack.enter_context(ssh.connect(nodes[name], s.port, s.admin_user,
                                               s.private_key_file, s.connect_timeout_s,
                                               known_hosts=ssh.KnownHosts.for_env(ctx.params.env),
                                               node=name))

        last = ["no answer yet"]

        def answer(c: Connection = conn, last: list[str] = last) -> tuple[int, str] | None:
            try:
                status, body = http_through_tunnel(c, DOZZLE_PORT, "/healthcheck")
            except (OSError, paramiko.SSHException) as exc:
                last[0] = f"{type(exc).__name__}: {exc}"[:160]
                return None
            last[0] = f"HTTP {status} {body}".strip()
            return (status, body) if status == 200 else None

        try:
            found = wait_for(f"Dozzle through an SSH tunnel to {name}", answer, 60, show=False)
        except WaitTimeout:
            found = None
        # Named without the node: Swarm picks the manager, the check's name stays stable.
        result.check("dozzle answers through an SSH tunnel",
                     found is not None and found[0] == 200,
                     f"GET /healthcheck on {name}'s 127.0.0.1:{DOZZLE_PORT}: {last[0]}"
                     + ("" if found else " (for 60 s; is the task running? does sshd allow "
                        "TCP forwarding?)"))
    for name, ip in nodes.items():
        probe = tcp_probe(ip, DOZZLE_PORT)
        where = " (Dozzle runs here)" if name in dozzle_hosts else ""
        result.check(f"dozzle :{DOZZLE_PORT} closed from outside on {name}", probe != "open",
                     f"TCP to {ip}:{DOZZLE_PORT} from this machine: "
                     + ("REACHABLE from outside" if probe == "open" else probe) + where)
