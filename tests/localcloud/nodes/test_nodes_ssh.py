"""SSH on real nodes as on Hetzner's Ubuntu 24.04 image: socket activation and pinned host keys.

Two nodes of their own (``casera-ssh-*``, so this runs beside other tests' nodes):
- ``naive`` moves SSH the way that fails on Ubuntu 24.04 (Port in a drop-in, then
  ``systemctl restart ssh``): port 22 must stay open and 2222 closed, until the socket is
  reconfigured the way Ubuntu requires;
- ``runbook`` boots the runbook's own user data (``render_user_data``): the access steps then
  pass against it, survive a hard kill and restart, and refuse it once its host key is swapped.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from nodes_harness import SshKey

from casera.context import RunContext
from casera.errors import ProviderError
from casera.operator_secrets import SecretStore
from casera.params import load_params
from casera.progress import wait_for
from casera.providers import docker_swarm, ssh
from casera.steps import access, swarm
from casera.steps.servers import render_user_data
from casera_localcloud import engine
from casera_localcloud.nodes import Nodes

pytestmark = [pytest.mark.localcloud, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
NAIVE, RUNBOOK = "casera-ssh-naive", "casera-ssh-runbook"
PORT = 2222
SERVER_IDS = {NAIVE: 9301, RUNBOOK: 9302}

NAIVE_USER_DATA = """#cloud-config
write_files:
  - path: /etc/ssh/sshd_config.d/10-casera.conf
    content: |
      Port 2222
runcmd:
  - [sh, -c, "systemctl restart ssh"]
"""


class Env:
    def __init__(self, nodes: Nodes, ctx: RunContext, ips: dict[str, str],
                 host_key: ssh.HostKey) -> None:
        self.nodes, self.ctx, self.ips, self.host_key = nodes, ctx, ips, host_key

    @property
    def known(self) -> ssh.KnownHosts:
        return access.known_hosts(self.ctx)


def _answers_ssh(ip: str, port: int) -> bool:
    """An SSH banner on ip:port (the node has no firewall here, so closed means refused)."""
    try:
        with socket.create_connection((ip, port), timeout=3) as sock:
            sock.settimeout(3)
            return sock.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def _sshd_ports(nodes: Nodes, name: str) -> set[int]:
    code, out = nodes.run(name, "ss -Hltnp")
    assert code == 0, out
    return access.listening_ports(out)


@pytest.fixture(scope="module")
def env(node_image: str, ssh_key: SshKey, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("ssh-project")
    (root / "params").mkdir()
    key_file = root / "operator_ed25519"
    key_file.write_text(ssh_key.pem)
    key_file.chmod(0o600)
    mp = pytest.MonkeyPatch()
    # The pins go to the scratch project's params/local.known_hosts, never the checkout's.
    mp.setenv("CASERA_PROJECT_DIR", str(root))
    secrets = SecretStore("local", environ={}, file=root / "none.env")
    params = load_params("local", path=REPO / "params" / "local.yaml", secrets=secrets,
                         overrides={"ssh.private_key_file": str(key_file),
                                    "ssh.port": PORT, "ssh.connect_timeout_s": 3})
    ctx = RunContext(env="local", params=params, secrets=secrets, interactive=False)
    nodes = Nodes(engine.client(timeout=300))
    for name in (NAIVE, RUNBOOK):
        nodes.delete_node(name)
    host_key = ssh.new_host_key(RUNBOOK)
    user_data = {NAIVE: NAIVE_USER_DATA,
                 RUNBOOK: render_user_data(params, ssh_key.public, host_key)}
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        ips = dict(zip(user_data, pool.map(
            lambda n: nodes.create_node({"name": n, "id": SERVER_IDS[n]}, [ssh_key.public],
                                        user_data[n]), user_data), strict=True))
    print(f"\n[ssh] two nodes booted in {time.monotonic() - started:.1f} s: {ips}")
    access.known_hosts(ctx).pin(RUNBOOK, ips[RUNBOOK], PORT, [host_key.public])
    # The steps find the servers through the Hetzner API; here there is none, only the node.
    mp.setattr(access, "node_addresses", lambda _ctx: {RUNBOOK: ips[RUNBOOK]})
    try:
        yield Env(nodes, ctx, ips, host_key)
    finally:
        mp.undo()
        for name in (NAIVE, RUNBOOK):
            nodes.delete_node(name)


def test_naive_port_change_leaves_22_open_as_on_ubuntu_24_04(env: Env) -> None:
    ip = env.ips[NAIVE]
    code, out = env.nodes.run(NAIVE, "sshd -T | grep '^port '; cloud-init status")
    assert code == 0 and "port 2222" in out and "status: done" in out, out
    # sshd's config says 2222, yet the socket kept 22: restarting ssh does not move it.
    wait_for("sshd on the naive node", lambda: _sshd_ports(env.nodes, NAIVE), 20,
             interval=0.3, show=False)
    assert _sshd_ports(env.nodes, NAIVE) == {22}
    assert _answers_ssh(ip, 22) and not _answers_ssh(ip, PORT)
    # daemon-reload alone re-runs the generator but moves nothing yet.
    code, out = env.nodes.run(NAIVE, "systemctl daemon-reload && systemctl restart ssh")
    assert code == 0, out
    assert _sshd_ports(env.nodes, NAIVE) == {22}
    # What Ubuntu requires: the socket restarted after the reload (sshd restarts with it).
    code, out = env.nodes.run(NAIVE, "systemctl restart ssh.socket; "
                                     "systemctl is-active ssh.socket")
    assert code == 0 and out.strip() == "active", out
    assert _sshd_ports(env.nodes, NAIVE) == {PORT}
    assert _answers_ssh(ip, PORT) and not _answers_ssh(ip, 22)
    # Turning the socket off is not emulated, and says so instead of pretending.
    code, out = env.nodes.run(NAIVE, "systemctl disable --now ssh.socket")
    assert code != 0 and "not emulated" in out


def test_runbook_user_data_passes_the_hardening_checks(env: Env) -> None:
    ip = env.ips[RUNBOOK]
    waited = access.wait_for_ssh(env.ctx, patience=60)
    assert waited.ok, waited
    result = access.verify_ssh_hardening(env.ctx)
    print(result)
    assert result.ok, result
    by_name = {c.name: c for c in result.checks}
    # Measured from outside: 22 refused (no firewall on this node), root and passwords refused.
    assert by_name[f"{RUNBOOK} port 22 closed from outside"].detail.endswith("refused")
    assert "refused by method" in by_name[f"{RUNBOOK} password login refused (casera)"].detail
    assert by_name[f"{RUNBOOK} sshd listens only on {PORT}"].ok
    # The node holds exactly the key the runbook made (cloud-init generated none besides).
    code, out = env.nodes.run(RUNBOOK, "cat /etc/ssh/ssh_host_*_key.pub")
    assert code == 0 and out.split()[:2] == env.host_key.public.split()[:2], out
    assert not _answers_ssh(ip, 22)


def test_a_run_reuses_its_connection_and_a_failed_command_says_where(env: Env) -> None:
    ip = env.ips[RUNBOOK]
    conn = access.node_ssh(env.ctx, RUNBOOK, ip)
    assert access.node_ssh(env.ctx, RUNBOOK, ip) is conn  # the step after reuses it
    with pytest.raises(ProviderError, match=rf"casera@{ip}:{PORT}: `sh -c 'exit 3'` exited 3"
                       ) as caught:
        ssh.run(conn, "sh -c 'exit 3'")
    assert caught.value.system == "ssh" and caught.value.code == "3"
    assert ssh.run(conn, "echo still open") == "still open"
    # Docker too: one client per engine for the whole run.
    engines = swarm.docker_pool(env.ctx)
    s = env.ctx.params.ssh
    client = engines.get(ip, PORT, s.admin_user, s.private_key_file, 3, known_hosts=env.known,
                         node=RUNBOOK)
    assert engines.get(ip, PORT, s.admin_user, s.private_key_file, 3, known_hosts=env.known,
                       node=RUNBOOK) is client
    assert docker_swarm.swarm_state(client)["state"] == "inactive"


def test_a_killed_node_comes_back_on_the_port_with_the_same_key(env: Env) -> None:
    before = access.node_ssh(env.ctx, RUNBOOK, env.ips[RUNBOOK])
    env.nodes.kill_node(RUNBOOK)
    env.nodes.start_node(RUNBOOK)
    # At boot the generator reads the Port cloud-init wrote on the first boot.
    assert env.nodes.run(RUNBOOK, "cat /run/casera/ssh.socket.listen")[1].split() == [str(PORT)]
    assert access.wait_for_ssh(env.ctx, patience=60).ok
    assert not _answers_ssh(env.ips[RUNBOOK], 22)
    # The run's connection died with the node: the pool notices and logs in again.
    after = access.node_ssh(env.ctx, RUNBOOK, env.ips[RUNBOOK])
    assert after is not before and ssh.run(after, "id -un") == env.ctx.params.ssh.admin_user
    s = env.ctx.params.ssh
    client = swarm.docker_pool(env.ctx).get(env.ips[RUNBOOK], PORT, s.admin_user,
                                            s.private_key_file, 3, known_hosts=env.known,
                                            node=RUNBOOK)
    assert docker_swarm.swarm_state(client)["state"] == "inactive"


def test_a_swapped_host_key_is_refused_on_every_path(env: Env) -> None:
    s = env.ctx.params.ssh
    ip = env.ips[RUNBOOK]
    code, out = env.nodes.run(RUNBOOK, "rm -f /etc/ssh/ssh_host_ed25519_key* && ssh-keygen -q "
                                       "-t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key && "
                                       "systemctl restart ssh")
    assert code == 0, out
    wait_for("sshd after the key swap", lambda: _answers_ssh(ip, PORT), 20, interval=0.3,
             show=False)
    with pytest.raises(ssh.HostKeyError, match=f"HOST KEY CHANGED for node {RUNBOOK}"):
        with ssh.connect(ip, PORT, s.admin_user, s.private_key_file, 3,
                         known_hosts=env.known, node=RUNBOOK) as conn:
            ssh.run(conn, "true")
    with pytest.raises(ssh.HostKeyError, match=RUNBOOK):
        docker_swarm.connect(ip, PORT, s.admin_user, s.private_key_file, 3,
                             known_hosts=env.known, node=RUNBOOK)
    # The runbook's steps stop at once, naming the node; no waiting, no reset of the server.
    started = time.monotonic()
    with pytest.raises(ssh.HostKeyError, match=f"node {RUNBOOK}.*Fix:"):
        access.wait_for_ssh(env.ctx, patience=60)
    assert time.monotonic() - started < 20
    with pytest.raises(ssh.HostKeyError, match=RUNBOOK):
        access.verify_ssh_hardening(env.ctx)
    # Nothing is learnt on the way: the pin is still the key the runbook made.
    assert [p.key_b64 for p in env.known.for_address(ip)] == [env.host_key.public.split()[1]]


def test_an_unpinned_node_is_refused(env: Env) -> None:
    s = env.ctx.params.ssh
    other = ssh.KnownHosts(env.known.path.with_name("empty.known_hosts"))
    with pytest.raises(ssh.HostKeyError, match="not pinned"), \
            ssh.connect(env.ips[RUNBOOK], PORT, s.admin_user, s.private_key_file, 3,
                        known_hosts=other, node=RUNBOOK) as conn:
        ssh.run(conn, "true")
    assert not other.path.exists()  # refusing learns nothing either
