"""``casera local up|down|status`` for the nodes part (docs/local-cloud-conventions.md)."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import docker.errors

from casera.paths import local_cloud_home
from casera_localcloud import engine
from casera_localcloud.nodes import image, network
from casera_localcloud.nodes.backend import CONTAINER_PREFIX, Nodes, cgroup_parents

IPVS_MISSING = ("limit: this kernel has no IPVS: Swarm virtual IPs and the ingress routing "
                "mesh carry no traffic here; services use endpoint_mode dnsrr and host-mode "
                "published ports")
ESP_MISSING = ("limit: this kernel has no ESP (IPsec): an encrypted overlay is created but "
               "carries no traffic here; the local cloud runs its overlays unencrypted")


def _kernel_config() -> dict[str, str]:
    """CONFIG_* of the running kernel, from /proc/config.gz or /boot; empty if neither."""
    release = os.uname().release
    for path in (Path("/proc/config.gz"), Path(f"/boot/config-{release}")):
        try:
            raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" \
                else path.read_bytes()
        except OSError:
            continue
        config = {}
        for line in raw.decode(errors="replace").splitlines():
            if line.startswith("CONFIG_") and "=" in line:
                key, _, value = line.partition("=")
                config[key] = value
        return config
    return {}


def kernel_limits() -> list[str]:
    """What this machine's kernel cannot do for Swarm
    (docs/facts.md#this-machine-the-local-cloud), said wherever the local cloud reports on
    itself so that no output pretends otherwise."""
    config = _kernel_config()
    if not config:
        return ["limit: kernel config unreadable; IPVS (Swarm VIPs, routing mesh) and ESP "
                "(encrypted overlays) may be missing: check before trusting either"]
    limits = []
    if config.get("CONFIG_IP_VS") not in ("y", "m"):
        limits.append(IPVS_MISSING)
    if config.get("CONFIG_INET_ESP") not in ("y", "m"):
        limits.append(ESP_MISSING)
    return limits


def up() -> list[str]:
    """Engine, bridge and node image; idempotent. Nodes themselves come from the Hetzner
    emulator (servers.create) or from ``Nodes().create_node``."""
    lines = [f"engine: {engine.ensure_engine()}"]
    client = engine.client(timeout=600)
    lines.append(network.ensure_network(client))
    lines.append(image.build_image(client).describe())
    lines.extend(f"node image {tag}: removed (older recipe)" for tag in image.remove_images(client))
    lines.extend(kernel_limits())
    return lines


def down(stop_engine: bool = True) -> list[str]:
    """Remove every node container, node volume and the bridge, then stop the engine if
    nothing else runs on it (``stop_engine=False`` leaves it for other parts' tests).
    Images and the rootfs tarball stay: they are the cache."""
    lines = []
    if not engine.is_running():
        if shutil.which("dockerd") is None or not (local_cloud_home() / "docker").exists():
            return ["engine never ran here: no nodes, network or volumes to remove"]
        # Stopped nodes survive in the engine's data (a reboot, a killed session): start the
        # engine to remove them, or the next `up` would find stale nodes.
        lines.append(f"engine: {engine.ensure_engine()} to remove what it holds")
    client = engine.client(timeout=120)
    nodes = Nodes(client)
    for node in nodes.list_nodes():
        nodes.delete_node(node.name)
        lines.append(f"node {node.name}: removed with its volume")
    for volume in client.volumes.list():
        if volume.name.startswith(CONTAINER_PREFIX) and volume.name.endswith("-docker"):
            try:
                volume.remove(force=True)
                lines.append(f"volume {volume.name}: removed (left by an earlier node)")
            except docker.errors.APIError as exc:
                lines.append(f"volume {volume.name}: not removed ({exc.explanation})")
    for parent in cgroup_parents():
        try:
            parent.rmdir()  # empty by now: delete_node removed each node's cgroups
        except OSError:
            pass
    lines.append(network.remove_network(client))
    others = client.containers.list(all=True)
    if not stop_engine:
        lines.append("engine: left running (asked to)")
    elif others:
        names = ", ".join(sorted(c.name for c in others))
        lines.append(f"engine: left running, other parts' containers remain ({names})")
    else:
        lines.append(f"engine: {engine.stop_engine()}")
    return lines


def status() -> list[str]:
    if not engine.is_running():
        return ["engine: not running", *kernel_limits()]
    client = engine.client(timeout=30)
    lines = [f"engine: running on {engine.DOCKER_HOST}"]
    try:
        client.networks.get(network.NETWORK)
        lines.append(f"network {network.NETWORK}: {network.SUBNET}, gateway {network.GATEWAY}, "
                     "internal (no route out)")
    except docker.errors.NotFound:
        lines.append(f"network {network.NETWORK}: missing (run casera local up)")
    try:
        client.images.get(image.image_tag())
        lines.append(f"node image {image.image_tag()}: built")
    except docker.errors.ImageNotFound:
        lines.append(f"node image {image.image_tag()}: not built (run casera local up)")
    nodes = Nodes(client).list_nodes()
    lines.extend(node.describe() for node in nodes)
    if not nodes:
        lines.append("nodes: none")
    lines.extend(kernel_limits())
    return lines
