"""The Casera stack: render the stack file from params, ``docker stack deploy`` it on a
manager, wait until every service runs its replicas, then verify what the seed promises.

``docker stack deploy`` is a CLI feature (the Engine API has no stacks), so the file goes to a
manager over SSH and the CLI runs there; everything read back goes through the Docker SDK.
The rendered file is kept on the manager: an identical file on a converged stack is
"0 changes".
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from casera.context import RunContext
from casera.db_roles import app_role
from casera.errors import CaseraError, WaitTimeout
from casera.operator_secrets import MASK, Secret
from casera.params import Params
from casera.plan import Plan, apply
from casera.progress import wait_for
from casera.providers import docker_swarm, ssh
from casera.result import StepResult, timed
from casera.stack import (
    DOZZLE_PORT,
    SECRET_ENV_VARS,
    SECRETS,
    SecretsSource,
    file_forms,
    render_stack,
    secret_env_in,
    settings_from_params,
)
from casera.steps.access import node_ssh
from casera.steps.swarm import Cluster, DockerClient, cluster_or_reason, connect_cluster
from casera.steps.swarm_secrets import db_role_of, stack_secret_names, stack_secret_values

STACK = "casera"
REMOTE_FILE = "casera-stack.yml"
SERVICES = ("api", "worker", "admin", "redis", "dozzle", "backup")


def stack_services(client: DockerClient) -> dict[str, dict[str, Any]]:
    """The stack's services by their name in the stack file, as the provider's plain data."""
    return {s["name"].removeprefix(f"{STACK}_"): s for s in docker_swarm.services(
        client, label=f"com.docker.stack.namespace={STACK}")}


def running_tasks(client: DockerClient) -> dict[str, list[dict[str, Any]]]:
    """service id -> its tasks that run now: one read for every service at once."""
    by_service: dict[str, list[dict[str, Any]]] = {}
    for task in docker_swarm.tasks(client, {"desired-state": "running"}):
        if task["Status"]["State"] == "running":
            by_service.setdefault(task["ServiceID"], []).append(task)
    return by_service


def _rolled(task: dict[str, Any], template: dict[str, Any]) -> bool:
    """The task runs the service's current image, env and secret mounts (versions, owner and
    mode): the secret migration's second roll changes only the env."""
    have, want = task["Spec"].get("ContainerSpec") or {}, template.get("ContainerSpec") or {}
    return all(have.get(key) == want.get(key) for key in ("Image", "Env")) and (
        _mounts(have) == _mounts(want))


def _mounts(container: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((ref.get("SecretID", ""), json.dumps(ref.get("File") or {}, sort_keys=True))
                  for ref in container.get("Secrets") or [])


def services_gap(client: DockerClient, params: Params) -> list[str]:
    """What keeps the stack from converged, a line per service (empty when converged):
    running tasks against params' replicas, and tasks still on an older spec."""
    services = stack_services(client)
    running = running_tasks(client)
    gap = []
    for name in SERVICES:
        service = services.get(name)
        if service is None:
            gap.append(f"{name}: not deployed")
            continue
        tasks = running.get(service["id"], [])
        wanted = getattr(params.services, name).replicas
        old = sum(not _rolled(t, service["spec"]["TaskTemplate"]) for t in tasks)
        if len(tasks) != wanted or old:
            gap.append(f"{name}: {len(tasks)} of {wanted} running"
                       + (f", {old} on an older spec" if old else ""))
    return gap


def services_converged(client: DockerClient, params: Params) -> dict[str, int] | None:
    """service -> running tasks, once every service runs exactly its replicas, each on the
    service's current image and secrets: right after `docker stack deploy` the old tasks
    still run, and a rolling update (a new secret version) is not done until they are gone."""
    if services_gap(client, params):
        return None
    running, services = running_tasks(client), stack_services(client)
    return {name: len(running.get(services[name]["id"], [])) for name in SERVICES}


def wait_services_converged(client: DockerClient, params: Params, timeout: float,
                            what: str = "every service at its replica count") -> dict[str, int]:
    """:func:`services_converged`, waited for; the timeout names each service still short
    (a bare "timed out" sent a rehearsal's reader to the node logs)."""
    try:
        return wait_for(what, lambda: services_converged(client, params), timeout)
    except WaitTimeout as exc:
        try:
            gap = "; ".join(services_gap(client, params)) or "converged just now"
        except Exception as read:  # noqa: BLE001 - the timeout is the news; say why no detail
            gap = f"(could not read the services: {type(read).__name__}: {read})"
        raise WaitTimeout(f"{exc}. Not there yet: {gap}") from exc


def converged(ctx: RunContext, client: DockerClient) -> dict[str, int] | None:
    """service -> running tasks once every service runs its replicas on its current spec."""
    return services_converged(client, ctx.params)


def wait_converged(ctx: RunContext, client: DockerClient, timeout: float) -> dict[str, int]:
    return wait_services_converged(client, ctx.params, timeout,
                                   "every service at its replica count, each task on the "
                                   "current spec")


def legacy_env(client: DockerClient) -> dict[str, list[str]]:
    """service -> the names of the secret env vars its spec still carries (legacy)."""
    return {name: found for name, service in stack_services(client).items()
            if (found := secret_env_in(service["spec"]["TaskTemplate"].get("ContainerSpec")))}


def render_for(ctx: RunContext, cluster: Cluster, conn: ssh.Connection,
               source: SecretsSource, names: dict[str, str] | None = None
               ) -> tuple[str, list[str]]:
    """The stack file params render, with its secrets as ``source`` says, and the forms of
    the secret values it may hold (to mask in anything shown). In a dry run before the
    secrets step, v1 stands in for versions not made yet (shown as such). ``names``
    overrides the Docker secret versions (the rotation's first roll)."""
    gid = int(ssh.run(conn, "stat -c %g /var/run/docker.sock"))
    if source != "legacy_env" and names is None:
        try:
            names = stack_secret_names(cluster.manager)
        except LookupError:
            if not ctx.dry_run:
                raise
            names = {n: f"casera_{n}_v1" for n in SECRETS}
    names = names or {}
    values = stack_secret_values(ctx) if source != "docker_secrets" else None
    # DB_USER goes with the password: the role of the db_password version mounted (its
    # label), or, for env values and versions made before the label, the app's credential.
    db_user = (db_role_of(cluster.manager, names.get("db_password"))
               if source != "legacy_env" else None) or app_role(ctx)
    text = render_stack(settings_from_params(ctx.params, secrets=names,
                                             docker_socket_gid=gid, secrets_source=source,
                                             secret_values=values, db_user=db_user))
    masks = sorted({form for value in (values or {}).values()
                    for form in file_forms(value.reveal())}, key=len, reverse=True)
    return text, masks


def deployed_file(conn: ssh.Connection) -> str:
    return ssh.run(conn, f"cat {REMOTE_FILE} 2>/dev/null || true")


def deploy_text(conn: ssh.Connection, text: str) -> None:
    """``docker stack deploy`` of ``text``, kept on the manager as the deployed file (mode
    0600: a legacy file holds secret values)."""
    ssh.put_text(conn, text, REMOTE_FILE)
    ssh.run(conn, f"chmod 600 {REMOTE_FILE}")
    docker_swarm.stack_deploy(conn, REMOTE_FILE, STACK)


def ensure_stack(ctx: RunContext, timeout: float = 600) -> StepResult:
    """The stack deployed from params, every service at its replica count."""
    p = ctx.params
    source = p.stack.secrets_source
    with timed(StepResult("stack", STACK, dry_run=ctx.dry_run)) as result:
        plan = Plan()
        cluster, result.reason = cluster_or_reason(ctx)
        if cluster is None:
            plan.add(f"+ stack {STACK}: " + ", ".join(
                f"{n} x{getattr(p.services, n).replicas}" for n in SERVICES))
            apply(ctx, result, plan)
            return result
        client, leader = cluster.manager, str(cluster.leader)
        conn = node_ssh(ctx, leader, cluster.nodes[leader])
        if source == "docker_secrets" and (legacy := legacy_env(client)):
            # Deploying over it would drop the env vars and add the mounts in one roll, with
            # none of the migration's checks (every task reads the file first).
            raise CaseraError(
                "the running stack still has secret values in env vars ("
                + "; ".join(f"{svc}: {', '.join(names)}" for svc, names in legacy.items())
                + f"), and params say stack.secrets_source: docker_secrets. Run the secret "
                f"migration first (casera run secret-migration --env {ctx.env}), or set "
                f"stack.secrets_source: legacy_env in params/{ctx.env}.yaml to keep it")
        if source == "legacy_env":
            plan.show("  (params say stack.secrets_source: legacy_env: secret values go in "
                      "env vars, none are mounted)")
        text, masks = render_for(ctx, cluster, conn, source)
        deployed = deployed_file(conn)
        if deployed.strip() == text.strip() and services_converged(client, p):
            result.reason = "deployed file unchanged and every service at its replicas"
        else:
            plan.add(f"~ docker stack deploy {STACK}" if deployed else
                     f"+ docker stack deploy {STACK}", lambda: deploy_text(conn, text))
            for line in _file_diff(deployed, text, masks):
                plan.show(line)
        if apply(ctx, result, plan).dry_run:
            return result
        counts = wait_services_converged(client, p, timeout)
        for name, count in counts.items():
            wanted = getattr(p.services, name).replicas
            result.check(f"{name} replicas", count == wanted,
                         f"{count} running, params say {wanted}")
    return result


_LEGACY_LINE = re.compile(
    r"^(\s*(?:" + "|".join(SECRET_ENV_VARS) + r"):)\s.*$", re.MULTILINE)


def _file_diff(old: str, new: str, masks: list[str] = []) -> list[str]:  # noqa: B006
    """The changed lines, up to 20; any secret value in them (a legacy file) masked. Both
    texts are masked before the diff, so a value that changed shows as an unchanged line."""
    raw_differs = old != new
    for form in masks:
        old, new = old.replace(form, MASK), new.replace(form, MASK)
    # A value the store no longer has (a deployed legacy file from before a change) is not
    # in masks: every legacy env line's value is masked by its name as well.
    old, new = _LEGACY_LINE.sub(rf"\1 {MASK}", old), _LEGACY_LINE.sub(rf"\1 {MASK}", new)
    changed = [line for line in difflib.unified_diff(old.splitlines(), new.splitlines(),
                                                     lineterm="", n=0)
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    if raw_differs and not changed:
        return ["  (only secret values differ; not shown)"]
    return [f"  {line}" for line in changed[:20]] + (
        [f"  ... {len(changed) - 20} more changed lines"] if len(changed) > 20 else [])


Finding = tuple[str, bool, str]  # a check: name, ok, detail


def verify_stack(ctx: RunContext, secret_values: dict[str, Secret]) -> StepResult:
    """Placement, non-root users, no secret values in any service's environment, the api
    answering /readyz on every node that runs it, and Dozzle answering inside its node
    (through an SSH tunnel) while closed from outside every node.

    The swarm is read once; the probes over the network (readyz, the tunnel, a TCP connect
    to every node, the redis node's volumes) run at once, and the checks are written in a
    fixed order afterwards."""
    p = ctx.params
    with timed(StepResult("stack checks", STACK, dry_run=ctx.dry_run)) as result:
        if ctx.dry_run:
            result.reason = "nothing deployed in a dry run"
            return result
        cluster = connect_cluster(ctx)
        nodes, clients, client = cluster.nodes, cluster.clients, cluster.manager
        swarm_nodes = {e["id"]: e for e in docker_swarm.nodes(client)}
        services = stack_services(client)
        running = running_tasks(client)

        def hosts_of(name: str) -> list[str]:
            service = services.get(name)
            return sorted(swarm_nodes[t["NodeID"]]["hostname"]
                          for t in running.get(service["id"], [])) if service else []

        redis_host = p.server_names()[p.swarm.redis_node - 1]
        dozzle, api_hosts = hosts_of("dozzle"), hosts_of("api")
        with ThreadPoolExecutor(8) as pool:
            volumes = pool.submit(docker_swarm.volume_names, clients[redis_host])
            readyz = {name: pool.submit(_readyz, ctx, name, nodes[name],
                                        p.swarm.api_published_port)
                      for name in sorted(set(api_hosts))}
            tunnels = {name: pool.submit(_dozzle_through_tunnel, ctx, name, nodes[name])
                       for name in dozzle}
            outside = {name: pool.submit(ssh.probe_port, ip, DOZZLE_PORT, 3.0)
                       for name, ip in nodes.items()}
            findings = _placement(p, services, hosts_of, swarm_nodes, redis_host, volumes,
                                  len(nodes), secret_values)
            findings += [future.result() for future in readyz.values()]
            findings += _dozzle(nodes, dozzle, tunnels, outside)
        for name, ok, detail in findings:
            result.check(name, ok, detail)
    return result


def _placement(p: Params, services: dict[str, dict[str, Any]],
               hosts_of: Callable[[str], list[str]], swarm_nodes: dict[str, dict[str, Any]],
               redis_host: str, volumes: Future[list[str]], node_count: int,
               secret_values: dict[str, Secret]) -> list[Finding]:
    found: list[Finding] = []
    redis = hosts_of("redis")
    found.append(("redis on its labelled node", redis == [redis_host],
                  f"on {', '.join(redis) or 'no node'}, label casera.redis on {redis_host}"))
    has_volume = "casera-redis-data" in volumes.result()
    found.append(("redis volume on that node", has_volume,
                  "casera-redis-data" if has_volume else "missing"))
    dozzle = hosts_of("dozzle")
    managers = {e["hostname"] for e in swarm_nodes.values() if e["role"] == "manager"}
    found.append(("dozzle on a manager", bool(dozzle) and set(dozzle) <= managers,
                  ", ".join(dozzle)))
    api_hosts = hosts_of("api")
    spread = len(set(api_hosts)) == min(node_count, p.services.api.replicas)
    found.append(("api spread over the nodes", spread,
                  f"{len(api_hosts)} tasks on {len(set(api_hosts))} nodes"))
    leaked = []
    for name, service in services.items():
        spec = service["spec"]["TaskTemplate"]["ContainerSpec"]
        env = " ".join(spec.get("Env") or [])
        leaked += [f"{name}:{secret}" for secret, value in secret_values.items()
                   if value.reveal() in env]
        user = spec.get("User") or ""
        found.append((f"{name} non-root", bool(user) and user.split(":")[0] not in
                      ("0", "root"), f"user {user or '(image default)'}"))
    if p.stack.secrets_source == "legacy_env":
        found.append(("secret values in service environments", True,
                      "params say stack.secrets_source: legacy_env, so they are there by "
                      f"design ({', '.join(leaked) or 'none found'}); "
                      "runbooks/secret-migration.ipynb moves them to Docker secrets"))
    else:
        found.append(("no secret values in service environments", not leaked,
                      "checked every service's Env against every secret value"
                      if not leaked else f"FOUND in {', '.join(leaked)} (values not shown)"))
    return found


def _readyz(ctx: RunContext, name: str, ip: str, port: int) -> Finding:
    """Through an SSH tunnel to the node's own port: the firewall lets only the load
    balancer reach it from outside (origin lock-down), and this says whether the api on
    that node is ready, not whether this machine may reach it."""
    conn = node_ssh(ctx, name, ip)

    def ready() -> str | None:
        status, body = ssh.http_through_tunnel(conn, port, "/readyz")
        return body if status == 200 else None

    try:
        body = wait_for(f"/readyz on {name}:{port} (through SSH)", ready, 60, show=False)
        return f"api /readyz on {name}", body is not None, body[:80]
    except WaitTimeout as exc:
        return f"api /readyz on {name}", False, str(exc)[:160]


def _dozzle_through_tunnel(ctx: RunContext, name: str, ip: str) -> Finding:
    """Dozzle's /healthcheck on ``name``'s loopback, through an SSH tunnel, for up to 60 s."""
    conn = node_ssh(ctx, name, ip)
    last = ["no answer yet"]

    def answer() -> tuple[int, str] | None:
        try:
            status, body = ssh.http_through_tunnel(conn, DOZZLE_PORT, "/healthcheck")
        except CaseraError as exc:
            last[0] = str(exc)[:160]
            return None
        last[0] = f"HTTP {status} {body}".strip()
        return (status, body) if status == 200 else None

    try:
        found = wait_for(f"Dozzle through an SSH tunnel to {name}", answer, 60, show=False)
    except WaitTimeout:
        found = None
    # Named without the node: Swarm picks the manager, the check's name stays stable.
    return ("dozzle answers through an SSH tunnel", found is not None and found[0] == 200,
            f"GET /healthcheck on {name}'s 127.0.0.1:{DOZZLE_PORT}: {last[0]}"
            + ("" if found else " (for 60 s; is the task running? does sshd allow "
               "TCP forwarding?)"))


def _dozzle(nodes: dict[str, str], dozzle_hosts: list[str],
            tunnels: dict[str, Future[Finding]],
            outside: dict[str, Future[tuple[bool, str]]]) -> list[Finding]:
    """Both halves of "internal only", each a real probe: Dozzle answers HTTP on its node's
    loopback through an SSH tunnel, and port 9999 of every node is closed to this machine."""
    found: list[Finding] = []
    if not dozzle_hosts:
        found.append(("dozzle answers through an SSH tunnel", False,
                      "no running Dozzle task to reach"))
    found += [tunnels[name].result() for name in dozzle_hosts]
    for name, ip in nodes.items():
        answers, detail = outside[name].result()
        where = " (Dozzle runs here)" if name in dozzle_hosts else ""
        found.append((f"dozzle :{DOZZLE_PORT} closed from outside on {name}", not answers,
                      f"TCP to {ip}:{DOZZLE_PORT} from this machine: "
                      + ("REACHABLE from outside" if answers else detail) + where))
    return found
