"""Docker Engine and Swarm on a node, through the official ``docker`` SDK over SSH.

The SDK's own ``ssh://`` transport takes the key only from ``~/.ssh/config`` and rejects
unknown host keys, so this module gives it a paramiko client configured like
``providers.ssh`` (the key from params, the host key pinned in the environment's known_hosts)
and otherwise uses the SDK as is:
the transport runs ``docker system dial-stdio`` on the node, as the Docker CLI does.
"""

from __future__ import annotations

import os
from typing import Any

import docker
import paramiko
from docker.transport.sshconn import SSHHTTPAdapter

from casera.providers import ssh

# Docker 20.10 (Debian bookworm's docker.io, the local nodes) speaks API 1.41; newer engines
# (Hetzner's docker-ce image) still accept it. Pinning avoids a version round-trip per client.
API_VERSION = "1.41"


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
    """A DockerClient for the engine on ``host``, reached as ``user`` over SSH on ``port``."""
    client = docker.DockerClient(base_url="unix:///nonexistent", version=API_VERSION)
    api = client.api
    adapter = _KeyedSSHAdapter(f"ssh://{user}@{host}:{port}", key_file, timeout,
                               known_hosts.policy(host, port, node))
    api.mount("http+docker://ssh", adapter)
    api._custom_adapter = adapter
    api.base_url = "http+docker://ssh"
    return client


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
