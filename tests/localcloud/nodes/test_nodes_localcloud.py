"""Real nodes end to end: SSH, cloud-init, a 3-manager Swarm with overlay traffic, firewall
enforcement, partition/heal, quorum after a kill, power cycle, and a clean ``down``.

Tests run in file order and share three nodes (made once per module); each test leaves the
cluster healthy for the next one.
"""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from docker.models.containers import Container
from nodes_harness import SshKey, ssh, wait_ssh

from casera.progress import wait_for
from casera_localcloud import engine
from casera_localcloud.nodes import Nodes, network, service
from casera_localcloud.nodes.backend import CONTAINER_PREFIX, container_name

pytestmark = [pytest.mark.localcloud, pytest.mark.slow]

NAMES = ["casera-nt-1", "casera-nt-2", "casera-nt-3"]
ADMIN, PORT = "admin", 2222
TOOLS = "casera-test/busybox:1"

USER_DATA = """#cloud-config
users:
  - name: admin
    groups: [sudo, docker]
    shell: /bin/bash
    sudo: "ALL=(ALL) NOPASSWD:ALL"
    ssh_authorized_keys: [{key}]
write_files:
  - path: /etc/ssh/sshd_config.d/10-casera.conf
    content: |
      Port 2222
      PermitRootLogin prohibit-password
ssh_pwauth: false
disable_root: true
runcmd:
  - [sh, -c, "echo ran > /var/lib/casera-runcmd"]
  # The node emulates Ubuntu 24.04's socket-activated sshd: a new Port needs both.
  - [sh, -c, "systemctl daemon-reload && systemctl restart ssh.socket"]
"""


class Cluster:
    def __init__(self, nodes: Nodes, key: SshKey, ips: dict[str, str]) -> None:
        self.nodes, self.key, self.ips = nodes, key, ips

    def sh(self, name: str, command: str, timeout: float = 120) -> str:
        """Run as the cloud-init admin on 2222 and require success."""
        code, out = ssh(self.key, self.ips[name], command, PORT, ADMIN, timeout)
        assert code == 0, f"{name}: {command!r} exited {code}: {out}"
        return out.strip()

    def try_sh(self, name: str, command: str) -> tuple[int, str]:
        return ssh(self.key, self.ips[name], command, PORT, ADMIN)

    def ready_nodes(self, on: str) -> dict[str, str]:
        out = self.sh(on, "docker node ls --format '{{.Hostname}} {{.Status}}'")
        return dict(line.split() for line in out.splitlines())


@pytest.fixture(scope="module")
def cluster(node_image: str, ssh_key: SshKey) -> Cluster:
    nodes = Nodes(engine.client(timeout=300))
    for name in NAMES:  # leftovers of an interrupted run
        nodes.delete_node(name)
    user_data = USER_DATA.format(key=ssh_key.public)
    started = time.monotonic()
    with ThreadPoolExecutor(len(NAMES)) as pool:
        ips = dict(zip(NAMES, pool.map(
            lambda n: nodes.create_node({"name": n, "id": 9000 + NAMES.index(n)},
                                        [ssh_key.public], user_data), NAMES), strict=True))
        created = time.monotonic() - started
        list(pool.map(lambda n: wait_ssh(ssh_key, ips[n], PORT, ADMIN), NAMES))
    print(f"\n[nodes] three nodes created in {created:.1f} s, all answering SSH after "
          f"{time.monotonic() - started:.1f} s: {ips}")
    yield Cluster(nodes, ssh_key, ips)
    for name in NAMES:
        nodes.delete_node(name)


def test_plain_node_takes_the_project_key_on_22(node_image: str, ssh_key: SshKey) -> None:
    nodes = Nodes()
    name = "casera-nt-plain"
    nodes.delete_node(name)
    try:
        ip = nodes.create_node({"name": name, "id": 9100}, [ssh_key.public], None)
        wait_ssh(ssh_key, ip, 22, "root")
        code, out = ssh(ssh_key, ip, "hostname; docker info --format '{{.ServerVersion}}'")
        assert code == 0 and out.split() == [name, "20.10.24+dfsg1"], out
        # The traffic rule: the bridge is internal (Docker drops what nodes send beyond it);
        # checked on the network rather than by sending a packet out.
        assert engine.client().networks.get(network.NETWORK).attrs["Internal"] is True
    finally:
        nodes.delete_node(name)


def test_cloud_init_applied_users_files_runcmd(cluster: Cluster) -> None:
    for name, ip in cluster.ips.items():
        assert cluster.sh(name, "hostname") == name
        groups = cluster.sh(name, "id -nG").split()
        assert {"sudo", "docker"} <= set(groups), groups
        assert cluster.sh(name, "sudo -n cat /var/lib/casera-runcmd") == "ran"
        assert "status: done" in cluster.sh(name, "cloud-init status")
        sshd = cluster.sh(name, "sudo -n sshd -T")
        assert "port 2222" in sshd and "passwordauthentication no" in sshd
        # SSH moved: nothing listens on 22 any more.
        with pytest.raises(OSError):
            socket.create_connection((ip, 22), timeout=3).close()
        # disable_root: root's key still authenticates but only prints the notice.
        code, out = ssh(cluster.key, ip, "id -u", PORT, "root")
        assert "Please login as the user" in out and "0" not in out.split(), out


def test_docker_info_over_ssh(cluster: Cluster) -> None:
    for name in NAMES:
        info = cluster.sh(name, "docker info --format '{{.Name}} {{.Swarm.LocalNodeState}}'")
        assert info.split()[0] == name


def test_three_manager_swarm(cluster: Cluster) -> None:
    first, *others = NAMES
    cluster.sh(first, f"docker swarm init --advertise-addr {cluster.ips[first]}")
    token = cluster.sh(first, "docker swarm join-token -q manager")
    for name in others:
        cluster.sh(name, f"docker swarm join --advertise-addr {cluster.ips[name]} "
                         f"--token {token} {cluster.ips[first]}:2377")
    out = cluster.sh(first, "docker node ls --format '{{.Hostname}} {{.ManagerStatus}}'")
    statuses = dict(line.split() for line in out.splitlines())
    assert sorted(statuses.values()) == ["Leader", "Reachable", "Reachable"], out


def test_overlay_dnsrr_service_answers_across_nodes(cluster: Cluster) -> None:
    # Nothing can be pulled: each node builds a tiny image from its own busybox-static.
    # (Its wget segfaults with -T, so timeouts come from busybox's timeout applet.)
    for name in NAMES:
        cluster.sh(name, "rm -rf /tmp/bb && mkdir -p /tmp/bb/bin /tmp/bb/www && "
                         "cp /bin/busybox /tmp/bb/bin/ && ln -s busybox /tmp/bb/bin/sh && "
                         f"tar -C /tmp/bb -c . | docker import -c 'CMD [\"/bin/sh\"]' - {TOOLS}")
    first, _, last = NAMES
    cluster.sh(first, "docker network create -d overlay --attachable casera-test-net")
    cluster.sh(first, f"docker service create -d --name web --network casera-test-net "
                      f"--endpoint-mode dnsrr --constraint node.hostname=={last} "
                      f"--no-resolve-image {TOOLS} sh -c "
                      "'hostname > /www/index.html; busybox httpd -f -p 80 -h /www'")

    def answer() -> str | None:
        code, out = cluster.try_sh(first, f"docker run --rm --network casera-test-net {TOOLS} "
                                          "busybox timeout 10 busybox wget -qO- http://web/")
        return out.strip() if code == 0 else None

    # The task runs on the last node; the client container runs on the first.
    task_host = wait_for("the dnsrr service over the overlay", answer, 90, interval=2)
    assert task_host  # the task container's hostname: traffic crossed nodes via VXLAN


def _port_open(ip: str, port: int) -> bool:
    try:
        socket.create_connection((ip, port), timeout=3).close()
        return True
    except OSError:
        return False


def test_firewall_enforced_in_the_node(cluster: Cluster) -> None:
    first = NAMES[0]
    ip = cluster.ips[first]
    cluster.sh(first, "mkdir -p /tmp/www && echo ok > /tmp/www/index.html && "
                      "(busybox httpd -p 8080 -h /tmp/www; sudo -n busybox httpd -p 80 "
                      "-h /tmp/www)")
    assert _port_open(ip, 8080) and _port_open(ip, 80)  # before: both answer

    anywhere = ["0.0.0.0/0", "::/0"]
    node_ips = [f"{a}/32" for a in cluster.ips.values()]
    rules = [{"direction": "in", "protocol": "tcp", "port": p, "source_ips": anywhere,
              "destination_ips": [], "description": f"public {p}"}
             for p in ("22", "2222", "80", "443")]
    rules += [{"direction": "in", "protocol": proto, "port": port, "source_ips": node_ips,
               "destination_ips": [], "description": f"swarm {proto} {port}"}
              for proto, port in (("tcp", "2377"), ("tcp", "7946"), ("udp", "7946"),
                                  ("udp", "4789"), ("esp", None))]
    for name in NAMES:
        cluster.nodes.apply_firewall(name, rules)
    try:
        assert not _port_open(ip, 8080), "8080 is not in the rules but answered"
        assert _port_open(ip, 80)
        assert cluster.sh(first, "echo still-in") == "still-in"  # 2222 allowed
        ready = cluster.ready_nodes(first)
        assert set(ready.values()) == {"Ready"}, ready
        # Overlay traffic between nodes still flows through the firewall (udp 4789).
        out = cluster.sh(first, f"docker run --rm --network casera-test-net {TOOLS} "
                                "busybox timeout 10 busybox wget -qO- http://web/")
        assert out
        # Rules survive a power cycle (the entrypoint re-runs them before sshd starts).
        cluster.nodes.stop_node(first, hard=False)
        cluster.nodes.start_node(first)
        wait_ssh(cluster.key, ip, PORT, ADMIN)
        assert "CASERA-FIREWALL" in cluster.sh(first, "sudo -n iptables -t mangle -S PREROUTING")
    finally:
        for name in NAMES:
            cluster.nodes.apply_firewall(name, None)
    wait_for("all nodes Ready after the firewall test",
             lambda: set(cluster.ready_nodes(first).values()) == {"Ready"}, 90, interval=2)


def test_partition_and_heal(cluster: Cluster) -> None:
    first, _, last = NAMES
    cluster.nodes.partition_node(last)
    try:
        assert any(n.name == last and n.partitioned for n in cluster.nodes.list_nodes())
        # Still up and reachable from the host (the gateway), cut off from the other nodes.
        assert cluster.sh(last, "hostname") == last
        code, _ = cluster.try_sh(last, f"nc -z -w 3 {cluster.ips[first]} 2377")
        assert code != 0
        code, _ = cluster.try_sh(first, f"nc -z -w 3 {cluster.ips[last]} 2377")
        assert code != 0
        wait_for(f"{last} to be seen Down by the others",
                 lambda: cluster.ready_nodes(first).get(last) == "Down", 120, interval=3)
    finally:
        cluster.nodes.heal_node(last)
    wait_for(f"{last} Ready again after heal",
             lambda: cluster.ready_nodes(first).get(last) == "Ready", 120, interval=3)


def test_kill_manager_keeps_quorum_and_restart_rejoins(cluster: Cluster) -> None:
    leader_line = cluster.sh(NAMES[1], "docker node ls --format '{{.Hostname}} "
                                       "{{.ManagerStatus}}' | grep Leader")
    leader = leader_line.split()[0]
    survivor = next(n for n in NAMES if n != leader)
    cluster.nodes.kill_node(leader)
    state = {n.name: n.state for n in cluster.nodes.list_nodes()}
    assert state[leader] == "exited"

    def quorum() -> str | None:
        code, out = cluster.try_sh(survivor, "docker node ls --format "
                                             "'{{.Hostname}} {{.Status}} {{.ManagerStatus}}'")
        return out if code == 0 and "Leader" in out else None

    out = wait_for("the two surviving managers to elect a leader", quorum, 60, interval=2)
    assert leader not in [line.split()[0] for line in out.splitlines() if "Leader" in line]

    # Power on: its Swarm state and images are on its volume, so it rejoins by itself.
    cluster.nodes.start_node(leader)
    wait_ssh(cluster.key, cluster.ips[leader], PORT, ADMIN)
    assert TOOLS in cluster.sh(leader, "docker image ls --format '{{.Repository}}:{{.Tag}}'")
    wait_for(f"{leader} Ready again", lambda: cluster.ready_nodes(survivor).get(leader)
             == "Ready", 120, interval=3)


def test_clean_shutdown_is_seen_by_swarm(cluster: Cluster) -> None:
    first, _, last = NAMES
    cluster.nodes.stop_node(last, hard=False)
    wait_for(f"{last} Down after shutdown",
             lambda: cluster.ready_nodes(first).get(last) == "Down", 90, interval=3)
    cluster.nodes.start_node(last)
    wait_for(f"{last} Ready after power on",
             lambda: cluster.ready_nodes(first).get(last) == "Ready", 120, interval=3)


def test_systemctl_stops_docker_for_a_swarm_backup(cluster: Cluster) -> None:
    """The backup runbook stops Docker, archives /var/lib/docker/swarm, starts it again; the
    node's watchdog must not restart a Docker stopped on purpose."""
    first, _, last = NAMES
    cluster.sh(last, "sudo -n systemctl stop docker")
    time.sleep(6)  # longer than the watchdog's 5 s round
    assert cluster.try_sh(last, "docker info")[0] != 0
    cluster.sh(last, "sudo -n tar -C /var/lib/docker -czf /tmp/swarm.tgz swarm")
    cluster.sh(last, "sudo -n systemctl start docker")
    assert cluster.sh(last, "docker info --format '{{.Swarm.LocalNodeState}}'") == "active"
    wait_for(f"{last} Ready after its Docker restart",
             lambda: cluster.ready_nodes(first).get(last) == "Ready", 120, interval=3)


def test_reboot_and_poweroff_from_inside_the_node(cluster: Cluster) -> None:
    first, _, last = NAMES
    container = cluster.nodes.client.containers.get(container_name(last))
    booted_at = container.attrs["State"]["StartedAt"]
    cluster.try_sh(last, "sudo -n reboot")

    def rebooted() -> bool:
        container.reload()
        return container.status == "running" and container.attrs["State"]["StartedAt"] != \
            booted_at
    wait_for(f"{last} to reboot", rebooted, 90, interval=1)
    cluster.nodes.wait_ready(last)
    wait_ssh(cluster.key, cluster.ips[last], PORT, ADMIN)
    log = container.logs().decode()
    assert log.count("running cloud-init") == 1 and "rebooting" in log  # first boot only
    wait_for(f"{last} Ready after reboot",
             lambda: cluster.ready_nodes(first).get(last) == "Ready", 120, interval=3)

    cluster.try_sh(last, "sudo -n poweroff")
    wait_for(f"{last} to power off", lambda: _reloaded(container).status == "exited", 60)
    time.sleep(3)  # the restart policy must leave a powered-off node alone
    assert _reloaded(container).status == "exited"
    assert container.attrs["State"]["ExitCode"] == 0
    cluster.nodes.start_node(last)
    wait_for(f"{last} Ready after power on",
             lambda: cluster.ready_nodes(first).get(last) == "Ready", 120, interval=3)


def _reloaded(container: Container) -> Container:
    container.reload()
    return container


def test_down_leaves_nothing_behind(cluster: Cluster) -> None:
    client = engine.client()
    foreign = [n.name for n in cluster.nodes.list_nodes() if n.name not in NAMES]
    if foreign:
        pytest.skip(f"other sessions' nodes are running ({foreign}); down would remove them")
    lines = service.down(stop_engine=False)
    print("\n".join(lines))
    assert not client.containers.list(all=True, filters={"name": CONTAINER_PREFIX})
    assert not [v for v in client.volumes.list() if v.name.startswith(CONTAINER_PREFIX)]
    assert not client.networks.list(names=[network.NETWORK])
    # What the killed node's containers left in the host's cgroup tree is gone too.
    assert not [p for p in Path("/sys/fs/cgroup").glob("*/casera-nodes/casera-nt-*")]
    # up again for whoever runs next; it is cheap now (cached image)
    assert any("cached" in line for line in service.up())
