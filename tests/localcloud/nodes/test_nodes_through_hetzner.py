"""The nodes driven the way the runbooks drive them: hcloud-python against the Hetzner
emulator, whose backend is ``casera_localcloud.nodes.backend()``. Servers by label, a
firewall by label selector, power off/on, delete; checked on the real containers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hcloud import Client
from hcloud.firewalls.domain import FirewallResource, FirewallResourceLabelSelector, FirewallRule
from hcloud.images.domain import Image
from hcloud.server_types.domain import ServerType
from nodes_harness import SshKey, ssh, wait_ssh

from casera_localcloud import nodes as nodes_part
from casera_localcloud.nodes import network

pytestmark = [pytest.mark.localcloud, pytest.mark.slow]
hetzner_server = pytest.importorskip("casera_localcloud.hetzner.server")

TOKEN = "nodes-test-token"
NAMES = ["casera-hz-1", "casera-hz-2", "casera-hz-3"]
LABEL = "cluster=casera-nodes-test"


def _free_port_range(count: int) -> range:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        start = sock.getsockname()[1]
    return range(start, start + count)


@pytest.fixture(scope="module")
def hcloud_client(node_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    backend = nodes_part.backend()
    for name in NAMES:
        backend.delete_node(name)
    state: Path = tmp_path_factory.mktemp("hetzner")
    app = hetzner_server.create_app(state, backend, node_network=network.SUBNET,
                                    lb_ports=_free_port_range(3))
    server = hetzner_server.EmulatorHTTPServer(app, "127.0.0.1", 0, TOKEN)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = Client(TOKEN, api_endpoint=f"http://127.0.0.1:{server.server_address[1]}/v1",
                    poll_interval=0.5)
    try:
        yield client
    finally:
        server.shutdown_all()
        for name in NAMES:
            backend.delete_node(name)


def test_servers_firewall_and_power_through_hcloud(hcloud_client: Client,
                                                   ssh_key: SshKey) -> None:
    client = hcloud_client
    key = client.ssh_keys.create(name="casera-nodes-test", public_key=ssh_key.public)
    rules = [FirewallRule(direction="in", protocol="tcp", port=port,
                          source_ips=["0.0.0.0/0", "::/0"]) for port in ("22", "80")]
    selector = FirewallResource(type="label_selector",
                                label_selector=FirewallResourceLabelSelector(selector=LABEL))
    firewall = client.firewalls.create(name="casera-nodes-test", rules=rules,
                                       resources=[selector]).firewall
    started = time.monotonic()
    created = [client.servers.create(name=name, server_type=ServerType(name="cx33"),
                                     image=Image(name="docker-ce"), ssh_keys=[key],
                                     labels=dict([LABEL.split("=")]))
               for name in NAMES]
    for answer in created:
        answer.action.wait_until_finished(max_retries=240)
    servers = {s.name: s for s in client.servers.get_all(label_selector=LABEL)}
    assert sorted(servers) == NAMES
    ips = {name: s.public_net.ipv4.ip for name, s in servers.items()}
    for name in NAMES:
        wait_ssh(ssh_key, ips[name], 22, "root")
    print(f"\n[nodes] three servers through hcloud answering SSH in "
          f"{time.monotonic() - started:.1f} s: {ips}")

    backend = nodes_part.backend()
    first = NAMES[0]
    code, out = ssh(ssh_key, ips[first], "hostname; docker info --format '{{.Name}}'")
    assert code == 0 and out.split() == [first, first], out
    # The label-selected firewall is enforced inside each node: 8080 listens but is dropped.
    for name in NAMES:
        _, chain = backend.run(name, "iptables -t mangle -S CASERA-FIREWALL")
        assert "--dport 22" in chain and chain.rstrip().endswith("-j DROP"), chain
    backend.run(first, "mkdir -p /tmp/w && (busybox httpd -p 8080 -h /tmp/w; "
                       "busybox httpd -p 80 -h /tmp/w)")
    with pytest.raises(OSError):
        socket.create_connection((ips[first], 8080), timeout=3).close()
    socket.create_connection((ips[first], 80), timeout=3).close()

    # set_rules follows into the node.
    for action in client.firewalls.set_rules(firewall, rules + [FirewallRule(
            direction="in", protocol="tcp", port="8080", source_ips=["0.0.0.0/0"])]):
        action.wait_until_finished(max_retries=60)
    socket.create_connection((ips[first], 8080), timeout=3).close()

    # Power off stops the container; power on brings it back with the firewall re-applied.
    servers[first].power_off().wait_until_finished(max_retries=120)
    assert {n.name: n.state for n in backend.list_nodes()}[first] == "exited"
    servers[first].power_on().wait_until_finished(max_retries=240)
    wait_ssh(ssh_key, ips[first], 22, "root")
    _, chain = backend.run(first, "iptables -t mangle -S CASERA-FIREWALL")
    assert "--dport 8080" in chain, chain

    for server in servers.values():
        server.delete().wait_until_finished(max_retries=120)
    remaining = {n.name for n in backend.list_nodes()}
    assert not remaining & set(NAMES)
