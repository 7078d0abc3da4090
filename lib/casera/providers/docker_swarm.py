"""Docker Engine and Swarm on a node, through the official ``docker`` SDK over SSH.

The SDK's own ``ssh://`` transport takes the key only from ``~/.ssh/config`` and rejects
unknown host keys, so this module gives it a paramiko client configured like
``providers.ssh`` (the key from params, the host key pinned in the environment's known_hosts)
and otherwise uses the SDK as is:
the transport runs ``docker system dial-stdio`` on the node, as the Docker CLI does.

The Engine API version is negotiated per node, never pinned: Docker Engine 29 (what Hetzner's
docker-ce app installs) refuses every client below API 1.44 ("client version 1.41 is too old.
Minimum supported API version is 1.44", moby/moby#51186; docs.docker.com/reference/api/engine:
"API version: 1.52 (minimum version 1.44)" for 29.0.4), while Debian bookworm's docker.io 20.10
on the local nodes speaks at most 1.41. No single pin serves both.

Facts come back as plain data (dicts and lists, the Engine API's own field names where the
steps read a spec), operations are functions of a client; the SDK's errors (``docker.errors``)
and the SSH transport's (paramiko, sockets) become :class:`~casera.errors.ProviderError` with
``system="docker"`` or ``"ssh"``. ``docker stack deploy`` is a CLI feature (the Engine API has
no stacks): :func:`stack_deploy` runs it on a manager over SSH through :func:`cli`.
"""

from __future__ import annotations

import functools
import io
import os
import tarfile
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

import docker
import docker.errors
import paramiko
from docker.constants import DEFAULT_DOCKER_API_VERSION, MINIMUM_DOCKER_API_VERSION
from docker.transport.sshconn import SSHHTTPAdapter
from docker.utils import version_lt

from casera.errors import CaseraError, ProviderError
from casera.providers import ssh

P = ParamSpec("P")
T = TypeVar("T")

# The newest Engine API this SDK release is written against (docker-py 7.1: 1.44). Speaking a
# newer one would send requests whose semantics the SDK does not know.
SDK_MAX_API_VERSION: str = DEFAULT_DOCKER_API_VERSION


class EngineAPIVersionError(CaseraError):
    """The engine and this SDK share no API version; the message says which side to upgrade."""


def negotiate_api_version(server: Mapping[str, Any], host: str = "the engine") -> str:
    """The API version to speak with an engine, from its unversioned ``GET /version`` answer.

    As the Docker CLI negotiates (moby client ``NegotiateAPIVersionPing``): the engine's newest
    version, capped at the newest this SDK knows. Unlike the CLI, a result below the engine's
    ``MinAPIVersion`` is refused here with a fix, instead of a 400 on the first real call.
    Debian's docker.io 20.10 (the local nodes) cannot refuse old clients itself: its minimum is
    the compiled-in 1.12 and only engines from 25 on read DOCKER_MIN_API_VERSION (moby#46887),
    so the refusal Docker 29 makes is reproduced by this check and by the unit tests' engine.
    """
    newest = str(server.get("ApiVersion") or "")
    if not newest:
        raise EngineAPIVersionError(f"{host}: GET /version has no ApiVersion ({dict(server)!r}); "
                                    "is this a Docker Engine?")
    minimum = str(server.get("MinAPIVersion") or MINIMUM_DOCKER_API_VERSION)
    chosen = SDK_MAX_API_VERSION if version_lt(SDK_MAX_API_VERSION, newest) else newest
    if version_lt(chosen, minimum):
        raise EngineAPIVersionError(
            f"{host}: Docker Engine {server.get('Version', '?')} accepts API {minimum} to "
            f"{newest}, but this docker SDK (docker-py {docker.__version__}) speaks at most "
            f"{SDK_MAX_API_VERSION}. Fix: upgrade the `docker` Python package (pip install -U "
            "docker) so it knows a version the engine accepts")
    if version_lt(chosen, MINIMUM_DOCKER_API_VERSION):
        raise EngineAPIVersionError(
            f"{host}: Docker Engine {server.get('Version', '?')} speaks at most API {newest}; "
            f"this SDK needs {MINIMUM_DOCKER_API_VERSION} or newer. Fix: upgrade Docker there")
    return chosen


def negotiate(client: docker.DockerClient, host: str = "the engine") -> str:
    """Ask the engine (unversioned ``GET /version``) and speak the negotiated version from now
    on. Returns that version."""
    chosen = negotiate_api_version(client.api.version(api_version=False), host)
    client.api._version = chosen
    return chosen


def mapped(call: Callable[P, T]) -> Callable[P, T]:
    """Raise the SDK's and the transport's errors as :class:`ProviderError`; the project's
    own errors (a changed host key, no common API version) pass through as themselves."""

    @functools.wraps(call)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return call(*args, **kwargs)
        except CaseraError:
            raise
        except docker.errors.APIError as exc:
            raise ProviderError("docker", f"{call.__name__}: {exc.explanation or exc}",
                                code=str(exc.status_code) if exc.status_code else None
                                ) from exc
        except docker.errors.DockerException as exc:
            raise ProviderError("docker", f"{call.__name__}: {exc}") from exc
        except ssh.SSH_ERRORS as exc:  # requests' connection errors are OSErrors too
            raise ProviderError("ssh", f"{call.__name__} (docker over SSH): "
                                f"{type(exc).__name__}: {exc}"[:400]) from exc

    return wrapper


class _KeyedSSHAdapter(SSHHTTPAdapter):
    def __init__(self, base_url: str, key_file: str, timeout: float,
                 host_key_policy: paramiko.MissingHostKeyPolicy) -> None:
        self._key_file = os.path.expanduser(key_file)
        self._connect_timeout = timeout
        self._host_key_policy = host_key_policy
        # The SDK keeps a pool of connections per URL, each an SSH session running
        # `docker system dial-stdio`; sshd allows 10 sessions per connection (MaxSessions),
        # so more pools than that make channel opens fail ("Secsh channel open FAILED").
        super().__init__(base_url, timeout=int(timeout) + 50, pool_connections=3,
                         max_pool_size=3)

    def _create_paramiko_client(self, base_url: str) -> None:
        super()._create_paramiko_client(base_url)
        self.ssh_params.update(key_filename=self._key_file, allow_agent=False,
                               look_for_keys=False, timeout=self._connect_timeout,
                               banner_timeout=self._connect_timeout,
                               auth_timeout=self._connect_timeout)
        # The SDK loaded ~/.ssh/known_hosts into its client; a fresh client holds no keys, so
        # every connection is decided by the pinned policy (providers.ssh) alone.
        self.ssh_client = paramiko.SSHClient()
        self.ssh_client.set_missing_host_key_policy(self._host_key_policy)


@mapped
def connect(host: str, port: int, user: str, key_file: str, timeout: float = 10.0, *,
            known_hosts: ssh.KnownHosts, node: str | None = None) -> docker.DockerClient:
    """A DockerClient for the engine on ``host``, reached as ``user`` over SSH on ``port``,
    speaking the API version negotiated with that engine."""
    # The SDK would negotiate in the constructor, before our SSH adapter is mounted; so it is
    # built with its own floor as a placeholder that no request uses, then asked below.
    client = docker.DockerClient(base_url="unix:///nonexistent",
                                 version=MINIMUM_DOCKER_API_VERSION)
    api = client.api
    adapter = _KeyedSSHAdapter(f"ssh://{user}@{host}:{port}", key_file, timeout,
                               known_hosts.policy(host, port, node))
    api.mount("http+docker://ssh", adapter)
    api._custom_adapter = adapter
    api.base_url = "http+docker://ssh"
    try:
        negotiate(client, f"docker on {host}")
    except BaseException:
        client.close()
        raise
    return client


def cli(command: str) -> str:
    """A ``docker ...`` command line for a node's shell. The node's CLI negotiates with its own
    engine unless DOCKER_API_VERSION pins it (an /etc/environment or profile left behind by an
    old tool), so the pin is cleared for our commands."""
    return f"env -u DOCKER_API_VERSION docker {command}"


# --- facts -----------------------------------------------------------------------------------

@mapped
def swarm_state(client: docker.DockerClient) -> dict[str, Any]:
    """The node's view of the swarm: LocalNodeState, NodeID, ControlAvailable, Cluster id."""
    info = client.info().get("Swarm", {})
    return {"state": info.get("LocalNodeState", "inactive"), "node_id": info.get("NodeID"),
            "manager": bool(info.get("ControlAvailable")),
            "cluster_id": (info.get("Cluster") or {}).get("ID"),
            "managers": info.get("Managers", 0), "nodes": info.get("Nodes", 0),
            "error": info.get("Error", "")}


@mapped
def join_tokens(client: docker.DockerClient) -> dict[str, str]:
    """Only managers can read them; never print: a manager token lets anyone join."""
    return dict(client.swarm.attrs["JoinTokens"])


@mapped
def nodes(client: docker.DockerClient) -> list[dict[str, Any]]:
    """Swarm nodes as plain data: hostname, id, role, state, availability, leader, address,
    labels, reachability."""
    out = []
    for node in client.nodes.list():
        attrs = node.attrs
        manager = attrs.get("ManagerStatus") or {}
        out.append({
            # A node still joining has no description yet (seen right after a join the engine
            # stopped waiting for): it is listed without a hostname rather than failing the list.
            "id": attrs["ID"], "hostname": (attrs.get("Description") or {}).get("Hostname", ""),
            "role": attrs["Spec"].get("Role"), "state": attrs["Status"].get("State"),
            "availability": attrs["Spec"].get("Availability"),
            "addr": attrs["Status"].get("Addr"), "labels": attrs["Spec"].get("Labels") or {},
            "leader": bool(manager.get("Leader")), "reachability": manager.get("Reachability"),
            "version": attrs.get("Version", {}).get("Index"),
        })
    return out


@mapped
def services(client: docker.DockerClient, label: str | None = None) -> list[dict[str, Any]]:
    """Services (all, or those carrying ``label``, ``key`` or ``key=value``) as plain data:
    id, name, spec (the Engine API's ServiceSpec), previous_spec, update_state."""
    found = (client.services.list(filters={"label": label}) if label
             else client.services.list())
    out = []
    for service in found:
        attrs = service.attrs
        out.append({"id": attrs["ID"], "name": service.name, "spec": attrs.get("Spec") or {},
                    "previous_spec": attrs.get("PreviousSpec"),
                    "update_state": (attrs.get("UpdateStatus") or {}).get("State", "")})
    return out


@mapped
def tasks(client: docker.DockerClient, filters: dict[str, Any] | None = None
          ) -> list[dict[str, Any]]:
    """Swarm tasks as the Engine API lists them (``GET /tasks``), optionally filtered
    (``service``, ``desired-state``, ``node``, ``label``)."""
    return list(client.api.tasks(filters=filters) if filters else client.api.tasks())


@mapped
def secrets(client: docker.DockerClient, label: str) -> list[dict[str, Any]]:
    """Docker secrets carrying ``label``: id, name, labels, created (RFC 3339; values are
    never readable)."""
    return [{"id": s.id, "name": s.name, "labels": s.attrs["Spec"].get("Labels") or {},
             "created": s.attrs.get("CreatedAt", "")}
            for s in client.secrets.list(filters={"label": label})]


@mapped
def config_ids(client: docker.DockerClient) -> set[str]:
    """Ids of every Docker config in the swarm (their data is not read)."""
    return {c.id for c in client.configs.list()}


@mapped
def secret_ids(client: docker.DockerClient) -> set[str]:
    """Ids of every Docker secret in the swarm (values are never readable)."""
    return {s.id for s in client.secrets.list()}


@mapped
def network(client: docker.DockerClient, name: str) -> dict[str, Any] | None:
    """The network named exactly ``name`` (the API's name filter matches substrings),
    inspected: Id, Name, Driver, Options, Labels; None when there is none."""
    for found in client.api.networks(names=[name]):
        if found.get("Name") == name:
            return dict(client.api.inspect_network(found["Id"]))
    return None


@mapped
def volume_names(client: docker.DockerClient) -> list[str]:
    return [v["Name"] for v in client.api.volumes().get("Volumes") or []]


@mapped
def container_ids(client: docker.DockerClient, label: str) -> list[str]:
    """Running containers on this engine carrying ``label`` (``key=value``)."""
    return [c["Id"] for c in client.api.containers(filters={"label": label})]


# --- operations --------------------------------------------------------------------------------

@mapped
def swarm_init(client: docker.DockerClient, address: str) -> str:
    """Make this node the first manager of a new swarm, advertised and listening on
    ``address``; returns its node id."""
    return str(client.swarm.init(advertise_addr=address, listen_addr=f"{address}:2377"))


@mapped
def force_new_cluster(client: docker.DockerClient, address: str) -> str:
    """``docker swarm init --force-new-cluster`` on a manager that lost its quorum: it becomes
    the only manager of the same swarm (services, secrets, configs and networks kept, the
    other managers dropped from Raft). Docker ignores ``advertise_addr`` here and keeps the
    address the node had (docker/for-linux#523): callers read it back (:func:`advertised`).
    Returns the node id."""
    # The low-level call: docker-py's ``client.swarm`` inspects the swarm as soon as it is
    # made, which fails on a manager without quorum ("The swarm does not have a leader").
    answer = client.api.init_swarm(advertise_addr=address, listen_addr=f"{address}:2377",
                                   force_new_cluster=True)
    return str(answer)


@mapped
def advertised(client: docker.DockerClient) -> str:
    """The address this manager advertises to the swarm (``docker info``: Swarm.NodeAddr)."""
    return str((client.info().get("Swarm") or {}).get("NodeAddr") or "")


# What the engine answers (503) when its own wait for a join (swarmConnectTimeout, 20 s) runs
# out while the join goes on: moby daemon/cluster/errors.go, errSwarmJoinTimeoutReached
# ("... The attempt to join the swarm will continue in the background. Use the "docker info"
# command to see the current swarm status of your node.").
JOIN_GOES_ON = "attempt to join the swarm will continue in the background"


@mapped
def swarm_join(client: docker.DockerClient, manager_address: str, token: str,
               address: str) -> bool:
    """Join the swarm ``manager_address`` leads. False when the engine stopped waiting (its
    20 s) but goes on joining in the background: the caller waits for the node to show up,
    as ``docker info`` would tell an operator to."""
    try:
        client.swarm.join(remote_addrs=[f"{manager_address}:2377"], join_token=token,
                          advertise_addr=address, listen_addr=f"{address}:2377")
    except docker.errors.APIError as exc:
        if exc.status_code == 503 and JOIN_GOES_ON in str(exc.explanation or ""):
            return False
        raise
    return True


@mapped
def remove_node(client: docker.DockerClient, node_id: str, demote: bool) -> None:
    """Remove a node's entry from the swarm; a manager is demoted first (a manager entry
    cannot be removed, and a down manager still counts towards the quorum)."""
    node = client.nodes.get(node_id)
    if demote:
        try:
            node.update(dict(node.attrs["Spec"], Role="worker"))
        except docker.errors.NotFound as exc:
            # A manager dropped from Raft by `swarm init --force-new-cluster` keeps its
            # manager entry, but demoting it fails ("can't find manager in raft memberlist");
            # not being a Raft member, it can be removed as it is.
            if "raft memberlist" not in str(exc):
                raise
        node.reload()
    node.remove(force=True)


@mapped
def set_node_availability(client: docker.DockerClient, node_id: str, availability: str) -> None:
    """``active``, ``pause`` or ``drain`` (drain: Swarm moves the node's tasks elsewhere)."""
    node = client.nodes.get(node_id)
    node.update(dict(node.attrs["Spec"], Availability=availability))


@mapped
def demote_node(client: docker.DockerClient, node_id: str) -> None:
    """Make a manager a worker: it leaves the Raft group (the quorum is counted without it)."""
    node = client.nodes.get(node_id)
    node.update(dict(node.attrs["Spec"], Role="worker"))


@mapped
def leave_swarm(client: docker.DockerClient) -> None:
    """On the node itself: leave the swarm. Not forced: Docker refuses a manager that leaves
    without ``--force``, which is the guard wanted here (demote it first)."""
    client.swarm.leave(force=False)


@mapped
def force_update(client: docker.DockerClient, service_id: str) -> None:
    """``docker service update --force``: replace every task under the service's own
    update_config (parallelism, order, delay), so the scheduler places them afresh."""
    client.services.get(service_id).force_update()


@mapped
def set_node_labels(client: docker.DockerClient, node_id: str, labels: dict[str, str]) -> None:
    """Replace the node's labels with ``labels`` (the rest of its spec as it is)."""
    node = client.nodes.get(node_id)
    node.update(dict(node.attrs["Spec"], Labels=labels))


@mapped
def create_overlay(client: docker.DockerClient, name: str, encrypted: bool,
                   labels: dict[str, str]) -> str:
    """An attachable swarm-scoped overlay network; returns its id."""
    created = client.networks.create(name, driver="overlay", attachable=True, scope="swarm",
                                     labels=labels,
                                     options={"encrypted": "true"} if encrypted else None)
    return str(created.id)


@mapped
def create_secret(client: docker.DockerClient, name: str, data: bytes,
                  labels: dict[str, str]) -> str:
    return str(client.secrets.create(name=name, data=data, labels=labels).id)


@mapped
def remove_secret(client: docker.DockerClient, secret_id: str) -> None:
    """Remove a Docker secret (the manager refuses one a service still mounts)."""
    client.api.remove_secret(secret_id)


@mapped
def create_global_probe(client: docker.DockerClient, image: str, name: str,
                        command: list[str], network_id: str, labels: dict[str, str],
                        user: str) -> str:
    """A global service (one task per node) that is never restarted, on ``network_id``, with
    DNS round robin (no virtual IP needed); returns its id."""
    service = client.services.create(
        image, name=name, mode=docker.types.ServiceMode("global"), command=command,
        networks=[network_id], endpoint_spec=docker.types.EndpointSpec(mode="dnsrr"),
        labels=labels, user=user, restart_policy=docker.types.RestartPolicy(condition="none"))
    return str(service.id)


@mapped
def remove_service(client: docker.DockerClient, service_id: str) -> None:
    client.api.remove_service(service_id)


@mapped
def exec_exit_code(client: docker.DockerClient, container_id: str, command: list[str]) -> int:
    """Run ``command`` in a running container and return its exit code (output discarded)."""
    exec_id = client.api.exec_create(container_id, command)["Id"]
    client.api.exec_start(exec_id)
    return int(client.api.exec_inspect(exec_id)["ExitCode"])


def stack_deploy(conn: ssh.Connection, stack_file: str, stack: str,
                 timeout: float = 300) -> None:
    """``docker stack deploy`` of the file already on the manager, run there over SSH."""
    ssh.run(conn, cli(f"stack deploy --with-registry-auth -c {stack_file} {stack}"),
            timeout=timeout)


class Pool(ssh.ConnectionPool[docker.DockerClient]):
    """The Docker clients one run keeps open, one per engine, so its steps do not open an SSH
    transport and negotiate the API again for every call."""

    def _connect(self, host: str, port: int, user: str, key_file: str, timeout: float,
                 known_hosts: ssh.KnownHosts, node: str | None) -> docker.DockerClient:
        return connect(host, port, user, key_file, timeout, known_hosts=known_hosts, node=node)

    def _alive(self, client: docker.DockerClient, timeout: float) -> bool:
        return _alive(client, timeout)


def _alive(client: docker.DockerClient, timeout: float) -> bool:
    adapter = getattr(client.api, "_custom_adapter", None)
    ssh_client = getattr(adapter, "ssh_client", None)
    return ssh_client is not None and ssh.transport_alive(ssh_client.get_transport(), timeout)


@mapped
def exec_output(client: docker.DockerClient, container_id: str, command: list[str],
                ) -> tuple[int, str]:
    """Run ``command`` in a running container: (exit code, stdout and stderr as text)."""
    exec_id = client.api.exec_create(container_id, command)["Id"]
    output = client.api.exec_start(exec_id)
    return int(client.api.exec_inspect(exec_id)["ExitCode"]), output.decode(errors="replace")


@mapped
def gateway_address(client: docker.DockerClient, container_id: str) -> str | None:
    """The container's address on its node's ``docker_gwbridge``: every task on an overlay
    network has one, and the node itself (so an SSH tunnel to the node) can reach it."""
    containers = client.api.inspect_network("docker_gwbridge").get("Containers") or {}
    entry = containers.get(container_id)
    return entry["IPv4Address"].split("/")[0] if entry and entry.get("IPv4Address") else None


@mapped
def container_addresses(client: docker.DockerClient, container_id: str) -> set[str]:
    """The container's IPv4 addresses on every network it is attached to."""
    networks = (client.api.inspect_container(container_id).get("NetworkSettings") or {}
                ).get("Networks") or {}
    return {n["IPAddress"] for n in networks.values() if n.get("IPAddress")}


@mapped
def create_pinned_service(client: docker.DockerClient, name: str, image: str,
                          args: list[str], node: str, network_id: str, user: str,
                          volume: str, target: str, labels: dict[str, str],
                          restart: str = "none") -> str:
    """One replica on node ``node`` (by hostname) with named volume ``volume`` at ``target``,
    on ``network_id`` with DNS round robin; ``restart`` is Swarm's restart condition (none:
    a temporary helper a step watches and removes; on-failure: one that stays); returns its
    id."""
    service = client.services.create(
        image, name=name, args=args, networks=[network_id], user=user, labels=labels,
        endpoint_spec=docker.types.EndpointSpec(mode="dnsrr"),
        constraints=[f"node.hostname == {node}"],
        mounts=[docker.types.Mount(target=target, source=volume, type="volume")],
        restart_policy=docker.types.RestartPolicy(condition=restart))
    return str(service.id)


def _ensure_image(client: docker.DockerClient, image: str) -> None:
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        client.api.pull(image)  # by digest when the reference has one


@mapped
def empty_volume(client: docker.DockerClient, image: str, volume: str,
                 keep: str | None = None) -> None:
    """Delete everything in the named volume (but the top-level file ``keep``), with a
    short-lived container of ``image``. Emptied rather than removed: Docker refuses to remove
    a volume that any container still references, and Swarm keeps the exited containers of
    old tasks."""
    _ensure_image(client, image)
    spare = ["-not", "-path", f"/data/{keep}"] if keep else []
    container = client.containers.create(
        image, entrypoint=["find", "/data", "-mindepth", "1", *spare, "-delete"], command=[],
        user="root", volumes={volume: {"bind": "/data", "mode": "rw"}}, network_mode="none")
    _run_once(container, f"emptying volume {volume}")


def _run_once(container: Any, what: str, archive: bytes | None = None) -> None:
    """Start a created helper container (after copying ``archive`` into its /data), wait
    for it, and remove it; a non-zero exit raises, quoting its output."""
    try:
        if archive is not None and not container.put_archive("/data", archive):
            raise ProviderError("docker", f"{what}: copying into the volume failed")
        container.start()
        code = int(container.wait(timeout=60).get("StatusCode", 1))
        if code != 0:
            raise ProviderError("docker", f"{what} exited {code}: "
                                f"{container.logs().decode(errors='replace')[-300:]}")
    finally:
        container.remove(force=True)


@mapped
def container_running(client: docker.DockerClient, container_id: str) -> bool:
    try:
        return bool(client.api.inspect_container(container_id)["State"]["Running"])
    except docker.errors.NotFound:
        return False


@mapped
def container_log_tail(client: docker.DockerClient, container_id: str, lines: int = 200) -> str:
    return client.api.logs(container_id, tail=lines).decode(errors="replace")


@mapped
def containers_of_service(client: docker.DockerClient, service_name: str) -> list[str]:
    """Ids of this engine's containers (running or not) of the swarm service ``service_name``."""
    return [c["Id"] for c in client.api.containers(
        all=True, filters={"label": f"com.docker.swarm.service.name={service_name}"})]


@mapped
def write_into_volume(client: docker.DockerClient, image: str, volume: str, file_name: str,
                      data: bytes, owner: str) -> None:
    """Put ``data`` as ``/<volume>/<file_name>`` (mode 0644, owned by ``owner`` as the image
    knows it) with a short-lived container of ``image`` that mounts the named volume
    (created here if it does not exist): Docker copies into a created container's volumes."""
    _ensure_image(client, image)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo(file_name)
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    container = client.containers.create(
        image, entrypoint=["chown", owner, f"/data/{file_name}"], command=[], user="root",
        volumes={volume: {"bind": "/data", "mode": "rw"}}, network_mode="none")
    _run_once(container, f"writing {file_name} into volume {volume}", archive.getvalue())


@mapped
def service_spec(client: docker.DockerClient, service_id: str) -> tuple[int, dict[str, Any]]:
    """(version, spec) of a service exactly as stored: no defaults inserted, so sending it
    back changes nothing the orchestrator compares (no task is replaced)."""
    found = client.api.inspect_service(service_id)
    return int(found["Version"]["Index"]), dict(found.get("Spec") or {})


@mapped
def update_service_spec(client: docker.DockerClient, service_id: str, version: int,
                        spec: dict[str, Any]) -> None:
    """Send ``spec`` as the service's whole new spec (the low-level call: docker-py's
    ``Service.update`` cannot add or remove secrets, docker-py#2908). Swarm keeps the spec
    it replaces as PreviousSpec."""
    client.api.update_service(
        service_id, version, task_template=spec.get("TaskTemplate"), name=spec.get("Name"),
        labels=spec.get("Labels") or {}, mode=spec.get("Mode"),
        update_config=spec.get("UpdateConfig"), rollback_config=spec.get("RollbackConfig"),
        endpoint_spec=spec.get("EndpointSpec"))


@mapped
def swarm_spec(client: docker.DockerClient) -> tuple[int, dict[str, Any]]:
    """(version, spec) of the swarm (a manager's view): Orchestration, Labels, Raft, ..."""
    found = client.api.inspect_swarm()
    return int(found["Version"]["Index"]), dict(found.get("Spec") or {})


@mapped
def update_swarm_spec(client: docker.DockerClient, version: int, spec: dict[str, Any]) -> None:
    """Send the whole swarm spec back changed (docker-py's ``Swarm.update`` builds a partial
    spec from its arguments, which would reset every setting it does not name)."""
    client.api.update_swarm(version, swarm_spec=spec)


@mapped
def container_envs(client: docker.DockerClient) -> list[dict[str, Any]]:
    """Every container on this engine, running or not, as ``docker inspect`` has it: id,
    name, running, its swarm service's name (if any), and Config.Env. The env holds values:
    callers scan it and report names only."""
    out = []
    for found in client.api.containers(all=True):
        attrs = client.api.inspect_container(found["Id"])
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        out.append({"id": attrs["Id"], "name": attrs.get("Name", "").lstrip("/"),
                    "running": bool((attrs.get("State") or {}).get("Running")),
                    "service": labels.get("com.docker.swarm.service.name", ""),
                    "task": labels.get("com.docker.swarm.task.id", ""),
                    "env": list((attrs.get("Config") or {}).get("Env") or [])})
    return out


@mapped
def remove_container(client: docker.DockerClient, container_id: str) -> None:
    client.api.remove_container(container_id)
