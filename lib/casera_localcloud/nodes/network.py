"""The nodes' bridge: ``casera-local``, 10.77.0.0/24, the host at the gateway 10.77.0.1.

``internal``: Docker gives the nodes no default route and drops whatever they send beyond the
subnet, so nodes cannot reach the outside world (the workplace's traffic rule). They still
reach the host at the gateway, where the registry's node listener and PgBouncer live.
"""

from __future__ import annotations

import subprocess

import docker
import docker.errors
import docker.types

NETWORK = "casera-local"
BRIDGE = "casera-local"  # the host interface too, so iptables rules can name it
SUBNET = "10.77.0.0/24"
GATEWAY = "10.77.0.1"
FIRST_HOST = 11
LABEL = "casera.localcloud.part"


def ensure_network(client: docker.DockerClient) -> str:
    try:
        network = client.networks.get(NETWORK)
    except docker.errors.NotFound:
        ipam = docker.types.IPAMConfig(pool_configs=[
            docker.types.IPAMPool(subnet=SUBNET, gateway=GATEWAY)])
        client.networks.create(
            NETWORK, driver="bridge", internal=True, ipam=ipam, labels={LABEL: "nodes"},
            options={"com.docker.network.bridge.name": BRIDGE})
        made = f"network {NETWORK}: created ({SUBNET}, gateway {GATEWAY}, internal)"
    else:
        config = network.attrs["IPAM"]["Config"] or [{}]
        if config[0].get("Subnet") != SUBNET:
            raise docker.errors.APIError(
                f"network {NETWORK} exists with subnet {config[0].get('Subnet')}, not {SUBNET};"
                " remove it (casera local down) and run up again")
        made = f"network {NETWORK}: exists"
    return made + "; " + ensure_forwarding()


def _forward_rule() -> list[str]:
    return ["DOCKER-USER", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"]


def ensure_forwarding() -> str:
    """Once any dockerd has run, the host's FORWARD policy is DROP
    (docs/facts.md#this-machine-the-local-cloud). Docker adds a node-to-node ACCEPT for its own
    bridges today; this rule in DOCKER-USER (the chain Docker leaves to us and evaluates
    first) keeps nodes talking if that ever changes."""
    check = subprocess.run(["iptables", "-w", "5", "-C", *_forward_rule()],
                           capture_output=True, check=False)
    if check.returncode == 0:
        return "node-to-node forwarding allowed"
    subprocess.run(["iptables", "-w", "5", "-I", *_forward_rule()[:1], "1",
                    *_forward_rule()[1:]], check=True, capture_output=True)
    return "node-to-node forwarding allowed (rule added to DOCKER-USER)"


def remove_network(client: docker.DockerClient) -> str:
    while subprocess.run(["iptables", "-w", "5", "-D", *_forward_rule()],
                         capture_output=True, check=False).returncode == 0:
        pass
    try:
        client.networks.get(NETWORK).remove()
    except docker.errors.NotFound:
        return f"network {NETWORK}: not there"
    return f"network {NETWORK}: removed"
