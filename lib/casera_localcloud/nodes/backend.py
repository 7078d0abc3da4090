"""Nodes as containers: the Hetzner emulator's ``NodeBackend``, plus the drills' hard faults.

A node is a container of the node image on the local engine, running its own dockerd and
sshd, on the ``casera-local`` bridge at a fixed address, with a named volume at
/var/lib/docker. How it is started follows docs/facts.md#this-machine-the-local-cloud:
``--privileged`` fails on these machines, so every capability but SYS_RESOURCE is added
instead.

Only the addresses are kept on disk (``local_cloud_home()/nodes/leases.json``): everything
else is read back from Docker (labels), so this state cannot drift from what really runs.
"""

from __future__ import annotations

import fcntl
import io
import ipaddress
import json
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import yaml
from docker.models.containers import Container

from casera.errors import CaseraError
from casera.progress import wait_for
from casera_localcloud import engine
from casera_localcloud.nodes import firewall, image, network

CONTAINER_PREFIX = "casera-node-"
# Label keys are data kept in the engine across sessions: they keep the name they had before
# the package was renamed, so `down` still finds what an older checkout made.
NODE_LABEL = "casera.localcloud.node"
# Docker 20.10 refuses BPF, PERFMON and CHECKPOINT_RESTORE by name, and this machine's bounding
# set lacks SYS_RESOURCE (which is why --privileged fails).
CAPABILITIES = (
    "AUDIT_CONTROL", "AUDIT_READ", "AUDIT_WRITE", "BLOCK_SUSPEND", "CHOWN", "DAC_OVERRIDE",
    "DAC_READ_SEARCH", "FOWNER", "FSETID", "IPC_LOCK", "IPC_OWNER", "KILL", "LEASE",
    "LINUX_IMMUTABLE", "MAC_ADMIN", "MAC_OVERRIDE", "MKNOD", "NET_ADMIN", "NET_BIND_SERVICE",
    "NET_BROADCAST", "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYSLOG",
    "SYS_ADMIN", "SYS_BOOT", "SYS_CHROOT", "SYS_MODULE", "SYS_NICE", "SYS_PACCT",
    "SYS_PTRACE", "SYS_RAWIO", "SYS_TIME", "SYS_TTY_CONFIG", "WAKE_ALARM",
)
# Long enough for dockerd to stop its containers and leave Swarm's Raft log consistent.
CLEAN_STOP_SECONDS = 40
BOOT_TIMEOUT = 120


@dataclass(frozen=True)
class NodeInfo:
    name: str
    ip: str
    state: str  # Docker's: running, exited, created, ...
    container: str
    partitioned: bool

    def describe(self) -> str:
        extra = ", partitioned" if self.partitioned else ""
        return f"node {self.name}: {self.ip}, {self.state}{extra} (container {self.container})"


def container_name(name: str) -> str:
    return CONTAINER_PREFIX + name


def volume_name(name: str) -> str:
    return f"{CONTAINER_PREFIX}{name}-docker"


def _tar(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A tar of ``{absolute path: (content, mode)}`` with its parent directories, owned by
    root, for put_archive at /. Extracting sets the parents' modes too, so they are given as
    Debian has them (0700 for /root and ~/.ssh, else 0755)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        dirs: set[str] = set()
        for path in files:
            parts = path.strip("/").split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        for directory in sorted(dirs):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o700 if directory in ("root", "root/.ssh") else 0o755
            info.mtime = int(time.time())
            tar.addfile(info)
        for path, (data, mode) in files.items():
            info = tarfile.TarInfo(path.strip("/"))
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Nodes:
    """Implements ``casera_localcloud.hetzner.backend.NodeBackend`` (see its contract)."""

    def __init__(self, client: docker.DockerClient | None = None) -> None:
        self._client = client
        self._lock = threading.Lock()

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = engine.client(timeout=300)
        return self._client

    # --- addresses -------------------------------------------------------------------------

    @contextmanager
    def _leases(self) -> Iterator[dict[str, str]]:
        """name -> IPv4, read and written under a lock that also holds across processes
        (the emulator and ``casera local`` may both create nodes)."""
        home = image.home()
        home.mkdir(parents=True, exist_ok=True)
        path = home / "leases.json"
        with self._lock, open(home / "leases.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            leases: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
            before = dict(leases)
            yield leases
            if leases != before:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(leases, indent=1, sort_keys=True))
                tmp.replace(path)

    def _allocate(self, name: str, proposed: str | None) -> str:
        """The proposed address if free, else this name's earlier address if free, else the
        lowest free one from .11, so a name keeps its address across delete and re-create."""
        subnet = ipaddress.ip_network(network.SUBNET)
        with self._leases() as leases:
            in_use = {info.ip: info.name for info in self.list_nodes()}

            def free(ip: str | None) -> bool:
                if not ip:
                    return False
                address = ipaddress.ip_address(ip)
                return (address in subnet and int(address) - int(subnet.network_address)
                        >= network.FIRST_HOST and address != subnet.broadcast_address
                        and in_use.get(ip, name) == name)

            def lease(ip: str) -> str:
                for other in [o for o, leased in leases.items() if leased == ip and o != name]:
                    del leases[other]
                leases[name] = ip
                return ip

            for candidate in (proposed, leases.get(name)):
                if candidate and free(candidate):
                    return lease(candidate)
            pool = [str(h) for h in list(subnet.hosts())[network.FIRST_HOST - 1:]]
            leased = {ip for other, ip in leases.items() if other != name}
            # Addresses of deleted nodes are kept for their names while the pool lasts.
            for taken in (leased | set(in_use), set(in_use)):
                for host in pool:
                    if host not in taken:
                        return lease(host)
        raise CaseraError(f"no free node address left in {network.SUBNET}")

    # --- lookups ---------------------------------------------------------------------------

    def _container(self, name: str) -> Container | None:
        try:
            return self.client.containers.get(container_name(name))
        except docker.errors.NotFound:
            return None

    def _require(self, name: str) -> Container:
        container = self._container(name)
        if container is None:
            raise CaseraError(f"node {name} does not exist (no container {container_name(name)})")
        return container

    def list_nodes(self) -> list[NodeInfo]:
        nodes = []
        for container in self.client.containers.list(
                all=True, filters={"label": f"{image.LABEL}=nodes"}):
            labels = container.labels
            nodes.append(NodeInfo(
                name=labels.get(NODE_LABEL, container.name),
                ip=labels.get("casera.localcloud.ip", "?"),
                state=container.status, container=container.name,
                partitioned=self._is_partitioned(container)))
        return sorted(nodes, key=lambda n: ipaddress.ip_address(n.ip) if n.ip != "?" else 0)

    def node_ip(self, name: str) -> str:
        return self._require(name).labels["casera.localcloud.ip"]

    @staticmethod
    def _is_partitioned(container: Container) -> bool:
        script = _read_file(container, firewall.PARTITION_SCRIPT) or ""
        return f"-A {firewall.PARTITION_IN_CHAIN}" in script

    # --- NodeBackend -----------------------------------------------------------------------

    def create_node(self, server: dict[str, Any], ssh_keys: list[str],
                    user_data: str | None) -> str:
        name = str(server["name"])
        existing = self._container(name)
        if existing is not None:
            if existing.attrs["State"].get("StartedAt", "").startswith("0001-"):
                # Created by a call that failed before the first boot: seeds may be missing.
                existing.remove(force=True)
            else:
                self.start_node(name)
                return existing.labels["casera.localcloud.ip"]
        proposed = ((server.get("public_net") or {}).get("ipv4") or {}).get("ip")
        ip = self._allocate(name, proposed)
        node_image = image.build_image(self.client).image
        with image.build_lock():  # two first creates must not both make the bridge
            network.ensure_network(self.client)
        container = self.client.containers.create(
            node_image,
            name=container_name(name),
            hostname=name,
            labels={image.LABEL: "nodes", NODE_LABEL: name, "casera.localcloud.ip": ip,
                    "casera.localcloud.server-id": str(server.get("id", ""))},
            cap_add=list(CAPABILITIES),
            security_opt=["seccomp=unconfined", "apparmor=unconfined"],
            cgroupns="host",
            volumes={volume_name(name): {"bind": "/var/lib/docker", "mode": "rw"},
                     "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}},
            # exec: dockerd and containerd keep runnable state under /run.
            tmpfs={"/run": "rw,exec,nosuid,nodev,mode=755"},
            network=network.NETWORK,
            # The internal bridge's DNS never answers outside names; without short timeouts a
            # Swarm task whose image is not in the local registry waits ~20 s in "Preparing"
            # for the pull attempt to fail before it uses the local copy.
            dns_opt=["timeout:1", "attempts:1"],
            networking_config={network.NETWORK: self.client.api.create_endpoint_config(
                ipv4_address=ip)},
            stop_signal="SIGTERM",
            # Only for `reboot` inside the node (exit status 100, see files/power.sh); a
            # clean stop exits 0 and `docker kill` counts as manual, so neither restarts.
            restart_policy={"Name": "on-failure"},
            detach=True,
        )
        container.put_archive("/", _tar(self._seed_files(server, ssh_keys, user_data)))
        container.start()
        self.wait_ready(name)
        return ip

    @staticmethod
    def _seed_files(server: dict[str, Any], ssh_keys: list[str],
                    user_data: str | None) -> dict[str, tuple[bytes, int]]:
        name = str(server["name"])
        keys = [key.strip() for key in ssh_keys if key.strip()]
        # cloud-init's NoCloud seed. public-keys in meta-data as Hetzner's metadata has them,
        # so user_data's disable_root treats root's keys as it does on Hetzner.
        meta = {"instance-id": f"hetzner-{server.get('id', name)}", "local-hostname": name,
                "public-keys": keys}
        seed = "/var/lib/cloud/seed/nocloud"
        return {
            # Hetzner puts the project's keys on root before cloud-init runs.
            "/root/.ssh/authorized_keys": ("".join(k + "\n" for k in keys).encode(), 0o600),
            f"{seed}/meta-data": (yaml.safe_dump(meta).encode(), 0o600),
            f"{seed}/user-data": ((user_data or "#cloud-config\n{}\n").encode(), 0o600),
            # Read by the node's dockerd start for its cgroup parent (see _remove_cgroups).
            "/etc/casera/node-name": (f"{name}\n".encode(), 0o644),
            # Nothing partitioned, no firewall until the emulator applies one.
            firewall.PARTITION_SCRIPT: (firewall.heal_script().encode(), 0o755),
        }

    def wait_ready(self, name: str, timeout: float = BOOT_TIMEOUT) -> None:
        """Until the node's entrypoint has run cloud-init (first boot) and started dockerd and
        sshd. Fails at once, with the node's log, if the container stops meanwhile."""
        container = self._require(name)

        def probe() -> str | None:
            container.reload()
            if container.status in ("exited", "dead"):
                return "stopped"
            code, _ = _exec(container, "test -e /run/casera/booted")
            return "ready" if code == 0 else None

        outcome = wait_for(f"node {name} to boot", probe, timeout, interval=0.5, show=False)
        if outcome != "ready":
            log = container.logs(tail=30).decode(errors="replace")
            raise CaseraError(f"node {name} stopped while booting; its last output:\n{log}")

    def start_node(self, name: str) -> None:
        container = self._require(name)
        if container.status != "running":
            container.start()
        self.wait_ready(name)

    def stop_node(self, name: str, hard: bool) -> None:
        container = self._container(name)
        if container is None or container.status not in ("running", "restarting", "paused"):
            return
        if hard:
            container.kill(signal="SIGKILL")
        else:
            container.stop(timeout=CLEAN_STOP_SECONDS)
        wait_for(f"node {name} to stop", lambda: _reloaded(container).status != "running",
                 CLEAN_STOP_SECONDS + 20, interval=0.3, show=False)

    def delete_node(self, name: str) -> None:
        container = self._container(name)
        if container is not None:
            container.remove(force=True)
        try:
            self.client.volumes.get(volume_name(name)).remove(force=True)
        except docker.errors.NotFound:
            pass
        _remove_cgroups(name)

    def apply_firewall(self, name: str, inbound_rules: list[dict[str, Any]] | None) -> None:
        self._install_script(name, firewall.FIREWALL_SCRIPT,
                             firewall.firewall_script(inbound_rules), "firewall")

    # --- drills ----------------------------------------------------------------------------

    def kill_node(self, name: str) -> None:
        """The node dies at once (SIGKILL to everything in it), no clean shutdown."""
        self.stop_node(name, hard=True)

    def partition_node(self, name: str) -> None:
        """The node stays up, reachable from the host, but cannot reach the other nodes."""
        self._install_script(name, firewall.PARTITION_SCRIPT,
                             firewall.partition_script(network.SUBNET, network.GATEWAY),
                             "partition")

    def heal_node(self, name: str) -> None:
        self._install_script(name, firewall.PARTITION_SCRIPT, firewall.heal_script(), "heal")

    def _install_script(self, name: str, path: str, script: str, what: str) -> None:
        """Store the script in the node (so its boot re-runs it) and run it if the node is up;
        a stopped node gets it at its next boot."""
        container = self._require(name)
        container.put_archive("/", _tar({path: (script.encode(), 0o755)}))
        container.reload()
        if container.status == "running":
            code, output = _exec(container, path)
            if code != 0:
                raise CaseraError(f"{what} rules on node {name} failed (exit {code}): "
                                  f"{output.strip()}")

    # --- helpers for tests and the CLI -----------------------------------------------------

    def run(self, name: str, command: str, timeout: float = 60) -> tuple[int, str]:
        """Run a shell command in the node as root (the console, not SSH)."""
        return _exec(self._require(name), command, timeout)


def cgroup_parents() -> list[Path]:
    """The ``casera-nodes`` cgroup of each hierarchy (one on cgroup v2, one per controller on
    v1): the nodes' dockerds put their containers under ``casera-nodes/<node>`` (cgroupns is
    the host's), so what a killed node leaves behind can be found and removed."""
    root = Path("/sys/fs/cgroup")
    if not root.is_dir():
        return []
    candidates = [root / "casera-nodes"] + [c / "casera-nodes" for c in root.iterdir()
                                            if c.is_dir()]
    return [c for c in candidates if c.is_dir()]


def _remove_cgroups(name: str) -> None:
    """Remove a deleted node's cgroups; they are empty once its container is gone."""
    for top in (parent / name for parent in cgroup_parents()):
        if not top.is_dir():
            continue
        dirs = [d for d in top.rglob("*") if d.is_dir()]
        for directory in sorted(dirs, key=lambda d: len(d.parts), reverse=True) + [top]:
            try:
                directory.rmdir()
            except OSError:  # still has tasks; not ours to kill
                pass


def _reloaded(container: Container) -> Container:
    container.reload()
    return container


def _exec(container: Container, command: str, timeout: float = 60) -> tuple[int, str]:
    # timeout(1) in the node: the Docker API has no exec timeout of its own.
    result = container.exec_run(["timeout", str(int(timeout)), "sh", "-c", command])
    return result.exit_code, result.output.decode(errors="replace")


def _read_file(container: Container, path: str) -> str | None:
    """A file's text from a node, running or not (exec needs a running one)."""
    try:
        stream, _ = container.get_archive(path)
    except docker.errors.NotFound:
        return None
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.extractfile(tar.getmembers()[0])
        return member.read().decode(errors="replace") if member else None
