"""Compute steps against the Hetzner emulator (fake node backend: no containers), through
the real hcloud client: first run creates, second changes nothing, dry run plans only, and
injected rate limits never duplicate a server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "localcloud" / "hetzner"))
from hetzner_harness import TOKEN, Running, start, stop_and_check  # noqa: E402

from casera.context import RunContext  # noqa: E402
from casera.operator_secrets import SecretStore  # noqa: E402
from casera.params import load_params  # noqa: E402
from casera.steps import compute  # noqa: E402
from casera_localcloud.hetzner.fake_backend import FakeNodeBackend  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Running]:
    # ensure_servers pins host keys in params/local.known_hosts: a scratch one, not the checkout's.
    monkeypatch.setenv("CASERA_PROJECT_DIR", str(tmp_path / "project"))
    running = start(tmp_path / "hetzner", FakeNodeBackend())
    try:
        yield running
    finally:
        stop_and_check(running)


def make_ctx(tmp_path: Path, emulator: Running, dry_run: bool = False) -> RunContext:
    key = tmp_path / "operator_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
    params = load_params("local", path=REPO / "params" / "local.yaml", overrides={
        "hetzner.api_endpoint": emulator.url,
        "hetzner.ssh_public_key_file": f"{key}.pub",
        "ssh.private_key_file": str(key),
    })
    secrets = SecretStore("local", environ={"CASERA_HCLOUD_TOKEN": TOKEN},
                          file=tmp_path / "none.env")
    return RunContext(env="local", params=params, secrets=secrets, dry_run=dry_run,
                      interactive=False)


def test_first_run_creates_second_changes_nothing(tmp_path: Path, emulator: Running) -> None:
    ctx = make_ctx(tmp_path, emulator)
    plan = compute.ensure_ssh_key(make_ctx(tmp_path, emulator, dry_run=True))
    assert plan.changed == 1 and emulator.client().ssh_keys.get_all() == []

    assert compute.ensure_ssh_key(ctx).changed == 1
    fw = compute.ensure_firewall(ctx)
    assert fw.changed and fw.ok
    assert not any("esp" in line for line in fw.diff if line.startswith("+ in"))
    servers = compute.ensure_servers(ctx)
    assert servers.changed == 3 and servers.ok and len(servers.checks) == 3
    emulator.idle()
    # Now the cluster rules (ESP included) can name the nodes.
    again = compute.ensure_firewall(ctx)
    assert again.changed == 5, again.diff
    assert any(line.startswith("+ in esp from") for line in again.diff)

    for step in (compute.ensure_ssh_key, compute.ensure_firewall, compute.ensure_servers):
        result = step(ctx)
        assert result.changed == 0, (result.step, result.diff)
        assert result.ok
    client = emulator.client()
    assert sorted(s.name for s in client.servers.get_all()) == ctx.params.server_names()
    fw_api = client.firewalls.get_by_name("casera-local")
    assert {r.protocol for r in fw_api.rules} == {"tcp", "udp", "esp"}
    assert fw_api.applied_to[0].label_selector.selector == "cluster=casera-local"


def test_dry_run_on_an_empty_project_changes_nothing(tmp_path: Path, emulator: Running) -> None:
    ctx = make_ctx(tmp_path, emulator, dry_run=True)
    results = [compute.ensure_ssh_key(ctx), compute.ensure_firewall(ctx),
               compute.ensure_servers(ctx)]
    # The firewall: itself + ssh, http, https; cluster rules wait for servers.
    assert [r.changed for r in results] == [1, 1 + 3, 3]
    client = emulator.client()
    assert client.servers.get_all() == [] and client.firewalls.get_all() == []
    assert client.ssh_keys.get_all() == []


def test_rate_limits_do_not_duplicate_servers(tmp_path: Path, emulator: Running) -> None:
    ctx = make_ctx(tmp_path, emulator)
    compute.ensure_ssh_key(ctx)
    emulator.set_faults(rate_limit_share=0.3)
    result = compute.ensure_servers(ctx)
    emulator.set_faults(rate_limit_share=0.0)
    assert result.ok
    emulator.idle()
    names = sorted(s.name for s in emulator.client().servers.get_all())
    assert names == ctx.params.server_names()


def test_a_stopped_server_is_powered_on(tmp_path: Path, emulator: Running) -> None:
    ctx = make_ctx(tmp_path, emulator)
    compute.ensure_ssh_key(ctx)
    compute.ensure_servers(ctx)
    client = emulator.client()
    server = client.servers.get_by_name("casera-local-2")
    client.servers.power_off(server).wait_until_finished()
    result = compute.ensure_servers(ctx)
    assert result.changed == 1 and "power on" in result.diff[0] and result.ok
