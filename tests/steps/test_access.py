"""Host key pinning and the SSH hardening's parsing, without nodes (the real nodes are in
tests/localcloud/nodes/test_nodes_ssh.py): the known_hosts file, the user data that carries
each server's host key, and the servers step pinning exactly the key it handed over, also
when Hetzner rate limits make hcloud replay the create."""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import paramiko
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parents[1] / "localcloud" / "hetzner"))
from hetzner_harness import TOKEN, Running, start, stop_and_check  # noqa: E402

from casera.context import RunContext  # noqa: E402
from casera.errors import ProviderError  # noqa: E402
from casera.operator_secrets import SecretStore  # noqa: E402
from casera.params import load_params  # noqa: E402
from casera.providers import ssh  # noqa: E402
from casera.steps import access, servers, ssh_key  # noqa: E402
from casera_localcloud.hetzner.fake_backend import FakeNodeBackend  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _pkey(host_key: ssh.HostKey) -> paramiko.PKey:
    key_type, b64 = host_key.public.split()[:2]
    return paramiko.PKey.from_type_string(key_type, base64.b64decode(b64))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "project"
    (root / "params").mkdir(parents=True)
    monkeypatch.setenv("CASERA_PROJECT_DIR", str(root))
    return root


def test_known_hosts_lives_beside_the_params(project: Path) -> None:
    assert ssh.KnownHosts.for_env("staging").path == project / "params" / "staging.known_hosts"


def test_pin_verify_and_replace(project: Path) -> None:
    known = ssh.KnownHosts.for_env("staging")
    one, two = ssh.new_host_key("casera-1"), ssh.new_host_key("casera-2")
    known.pin("casera-1", "192.0.2.10", 2222, [one.public])
    known.pin("casera-2", "192.0.2.11", 2222, [two.public])
    text = known.path.read_text()
    assert f"casera-1,[192.0.2.10]:2222 {one.public}" in text
    assert "PRIVATE" not in text and one.private.reveal() not in text
    # By address, whatever the port: moving ssh.port does not orphan a pin.
    assert known.verify("192.0.2.10", 22, _pkey(one)) == "casera-1"
    with pytest.raises(ssh.HostKeyError) as caught:
        known.verify("192.0.2.10", 2222, _pkey(two))
    message = str(caught.value)
    assert "HOST KEY CHANGED for node casera-1 (192.0.2.10:2222)" in message
    assert two.fingerprint in message and one.fingerprint in message and "Fix:" in message
    with pytest.raises(ssh.HostKeyError, match=r"192\.0\.2\.99:2222 is not pinned.*Fix:"):
        known.verify("192.0.2.99", 2222, _pkey(one))
    # A re-created casera-1 (new key, new address) replaces its old line, and only that one.
    again = ssh.new_host_key("casera-1")
    known.pin("casera-1", "192.0.2.12", 2222, [again.public])
    assert known.names() == {"casera-1": "192.0.2.12", "casera-2": "192.0.2.11"}
    assert known.for_address("192.0.2.10") == []
    # An address Hetzner hands on to a new server loses the old server's pin.
    known.pin("casera-3", "192.0.2.11", 2222, [ssh.new_host_key("casera-3").public])
    assert "casera-2" not in known.names()
    assert known.path.read_text().count("# Host keys") == 1


def test_openssh_reads_the_file_too(project: Path) -> None:
    known = ssh.KnownHosts.for_env("staging")
    key = ssh.new_host_key("casera-1")
    known.pin("casera-1", "192.0.2.10", 2222, [key.public])
    found = subprocess.run(["ssh-keygen", "-F", "[192.0.2.10]:2222", "-f", str(known.path)],
                           capture_output=True, text=True, check=False)
    assert found.returncode == 0 and key.public.split()[1] in found.stdout, found
    printed = subprocess.run(["ssh-keygen", "-lf", str(known.path)], capture_output=True,
                             text=True, check=True).stdout
    assert key.fingerprint.split()[1] in printed


def test_a_malformed_line_is_a_clear_error(project: Path) -> None:
    known = ssh.KnownHosts.for_env("staging")
    known.path.write_text("|1|hashed|name ssh-ed25519 AAAA\n")
    with pytest.raises(ssh.HostKeyError, match=r"staging\.known_hosts:1: not a plain"):
        known.pins()


def _ctx(tmp_path: Path, endpoint: str = "http://127.0.0.1:9/v1") -> RunContext:
    key = tmp_path / "operator_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
    params = load_params("local", path=REPO / "params" / "local.yaml", overrides={
        "hetzner.api_endpoint": endpoint, "hetzner.ssh_public_key_file": f"{key}.pub",
        "ssh.private_key_file": str(key)})
    secrets = SecretStore("local", environ={"CASERA_HCLOUD_TOKEN": TOKEN},
                          file=tmp_path / "none.env")
    return RunContext(env="local", params=params, secrets=secrets, interactive=False)


def test_user_data_carries_the_host_key_and_moves_the_socket(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    host_key = ssh.new_host_key("casera-local-1")
    text = servers.render_user_data(ctx.params, "ssh-ed25519 AAAAoperator op", host_key)
    data = yaml.safe_load(text)
    assert data["ssh_keys"]["ed25519_private"].strip() == host_key.private.reveal().strip()
    assert data["ssh_keys"]["ed25519_public"] == host_key.public
    assert data["ssh_deletekeys"] is True and data["ssh_pwauth"] is False
    assert "Port 2222" in data["write_files"][0]["content"]
    (command,) = data["runcmd"]
    script = command[2]
    # Ubuntu 24.04: a Port reaches ssh.socket only through daemon-reload + restart ssh.socket.
    assert script.index("sshd -t") < script.index("systemctl daemon-reload") \
        < script.index("systemctl restart ssh.socket")
    assert repr(host_key.private) != host_key.private.reveal()


def test_sshd_and_listener_parsing() -> None:
    sshd_t = "port 2222\nport 22\npermitrootlogin no\nlistenaddress [::]:2222\n"
    assert access.sshd_ports(sshd_t) == {22, 2222}
    ss_out = "\n".join([
        'LISTEN 0 128 0.0.0.0:2222 0.0.0.0:* users:(("sshd",pid=71,fd=3))',
        'LISTEN 0 4096 *:22 *:* users:(("sshd",pid=1200,fd=3),("systemd",pid=1,fd=52))',
        'LISTEN 0 4096 [::]:2377 [::]:* users:(("dockerd",pid=40,fd=12))',
        'LISTEN 0 128 [::]:2222 [::]:* users:(("sshd",pid=71,fd=4))',
    ])
    assert access.listening_ports(ss_out) == {22, 2222}
    assert access.listening_ports(ss_out, "dockerd") == {2377}


def test_probe_port_tells_open_from_refused() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert ssh.probe_port("127.0.0.1", port, 1)[0] is True
    assert ssh.probe_port("127.0.0.1", port, 1) == (False, "refused")


@pytest.mark.parametrize("attempt, ok, said", [
    (ssh.PasswordAttempt("refused_by_method", ("publickey",)), True,
     "refused by method: sshd offers only publickey"),
    (ssh.PasswordAttempt("refused_by_method", ("publickey", "keyboard-interactive")), False,
     "still offers keyboard-interactive"),
    (ssh.PasswordAttempt("wrong_password"), False, "ASKED for casera's password"),
    (ssh.PasswordAttempt("accepted"), False, "was ACCEPTED"),
])
def test_only_a_refusal_by_method_is_green(attempt: ssh.PasswordAttempt, ok: bool,
                                           said: str) -> None:
    found, detail = access.password_check(attempt, "casera")
    assert found is ok and said in detail, detail


def test_ssh_failures_are_provider_errors_naming_the_node(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    known = ssh.KnownHosts(tmp_path / "none.known_hosts")
    conn = ssh.connect("127.0.0.1", port, "casera", str(tmp_path / "no-key"), 2,
                       known_hosts=known, node="casera-1")
    with pytest.raises(ProviderError, match=f"casera@127.0.0.1:{port}") as caught:
        ssh.run(conn, "true")
    assert caught.value.system == "ssh"
    with pytest.raises(ProviderError, match=f"127.0.0.1:{port}"):
        ssh.password_attempt(known, "127.0.0.1", port, "casera", 2, "casera-1")
    with pytest.raises(ProviderError, match=f"casera@127.0.0.1:{port}"):
        ssh.Pool().get("127.0.0.1", port, "casera", str(tmp_path / "no-key"), 2,
                       known_hosts=known, node="casera-1")
    assert ssh.key_login(known, "127.0.0.1", port, "root", str(tmp_path / "no-key"), 2)[0] \
        == "error"


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Running]:
    running = start(tmp_path / "hetzner", FakeNodeBackend())
    try:
        yield running
    finally:
        stop_and_check(running)


def _pins_match_user_data(ctx: RunContext, backend: FakeNodeBackend) -> None:
    known = access.known_hosts(ctx)
    assert sorted(known.names()) == ctx.params.server_names()
    for name, node in backend.nodes.items():
        data = yaml.safe_load(node["user_data"])
        private = paramiko.Ed25519Key.from_private_key_file(
            _write(Path(known.path.parent) / f".{name}.key", data["ssh_keys"]["ed25519_private"]))
        (pin,) = known.for_address(node["ip"])
        assert pin.name == name and pin.key_b64 == private.get_base64()


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_servers_step_pins_the_key_it_hands_over(tmp_path: Path, project: Path,
                                                 emulator: Running) -> None:
    ctx = _ctx(tmp_path, emulator.url)
    ssh_key.ensure_ssh_key(ctx)
    plan = servers.ensure_servers(replace(ctx, dry_run=True))
    assert all("pinned in local.known_hosts" in line for line in plan.diff)
    assert not access.known_hosts(ctx).path.exists()
    # Rate limits make hcloud replay creates: the replayed body carries the same key.
    # Seeded and only on POSTs (the creates whose replay is the point): unseeded faults on
    # every GET too could exhaust hcloud-python's 5 retries on one request now and then.
    before = emulator.raw("POST", "/_emulator/faults", json={
        "rate_limit_share": 0.3, "seed": 7, "methods": ["POST"]}).json()["faults"]["injected"]
    result = servers.ensure_servers(ctx)
    injected = emulator.raw("POST", "/_emulator/faults", json={"rate_limit_share": 0.0}
                            ).json()["faults"]["injected"] - before
    assert injected > 0, "no rate limit was injected: the replay path went untested"
    assert result.ok and result.changed == 3
    emulator.idle()
    _pins_match_user_data(ctx, emulator.backend)
    # A server deleted outside the run is re-created with a new key, and only it is re-pinned.
    before = access.known_hosts(ctx).path.read_text()
    api = emulator.client()
    api.servers.delete(api.servers.get_by_name("casera-local-2")).wait_until_finished()
    emulator.idle()
    assert servers.ensure_servers(ctx).changed == 1
    emulator.idle()
    after = access.known_hosts(ctx).path.read_text()
    changed = set(after.splitlines()) ^ set(before.splitlines())
    assert changed and all("casera-local-2" in line for line in changed)
    _pins_match_user_data(ctx, emulator.backend)
