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
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import docker
import paramiko
from docker.constants import DEFAULT_DOCKER_API_VERSION, MINIMUM_DOCKER_API_VERSION
from docker.transport.sshconn import SSHHTTPAdapter
from docker.utils import version_lt

from casera.errors import CaseraError
from casera.providers import ssh

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


def swarm_state(client: docker.DockerClient) -> dict[str, Any]:
    """The node's view of the swarm: LocalNodeState, NodeID, ControlAvailable, Cluster id."""
    info = client.info().get("Swarm", {})
    return {"state": info.get("LocalNodeState", "inactive"), "node_id": info.get("NodeID"),
            "manager": bool(info.get("ControlAvailable")),
            "cluster_id": (info.get("Cluster") or {}).get("ID"),
            "managers": info.get("Managers", 0), "nodes": info.get("Nodes", 0),
            "error": info.get("Error", "")}


def join_tokens(client: docker.DockerClient) -> dict[str, str]:
    """Only managers can read them; never print: a manager token lets anyone join."""
    return dict(client.swarm.attrs["JoinTokens"])


def nodes(client: docker.DockerClient) -> list[dict[str, Any]]:
    """Swarm nodes as plain data: hostname, id, role, state, availability, leader, address,
    labels, reachability."""
    out = []
    for node in client.nodes.list():
        attrs = node.attrs
        manager = attrs.get("ManagerStatus") or {}
        out.append({
            "id": attrs["ID"], "hostname": attrs["Description"]["Hostname"],
            "role": attrs["Spec"].get("Role"), "state": attrs["Status"].get("State"),
            "availability": attrs["Spec"].get("Availability"),
            "addr": attrs["Status"].get("Addr"), "labels": attrs["Spec"].get("Labels") or {},
            "leader": bool(manager.get("Leader")), "reachability": manager.get("Reachability"),
            "version": attrs.get("Version", {}).get("Index"),
        })
    return out
