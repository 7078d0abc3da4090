"""The servers step against the Hetzner emulator (fake node backend: no containers), through
the real hcloud client: first run creates, second changes nothing, dry run plans only,
injected rate limits never duplicate a server, and a stopped server is powered on."""

from __future__ import annotations

from pathlib import Path

from hetzner_project import Running, emulator, make_ctx  # noqa: F401 - the fixture

from casera.steps import firewall, servers, ssh_key


def test_first_run_creates_second_changes_nothing(tmp_path: Path,
                                                  emulator: Running) -> None:  # noqa: F811
    ctx = make_ctx(tmp_path, emulator)
    assert ssh_key.ensure_ssh_key(ctx).changed == 1
    made = servers.ensure_servers(ctx)
    assert made.changed == 3 and made.ok and len(made.checks) == 3
    # Made in this run: the SSH step never takes their silence for death.
    assert servers.booted_this_run(ctx) == set(ctx.params.server_names())
    emulator.idle()
    ips = {s.name: s.public_net.ipv4.ip for s in emulator.client().servers.get_all()}
    assert {c.name: c.detail for c in made.checks} == {
        name: f"running, {ip}" for name, ip in ips.items()}
    again = servers.ensure_servers(ctx)
    assert again.changed == 0 and again.ok and again.reason == "3 servers exist and run"
    assert sorted(s.name for s in emulator.client().servers.get_all()) == \
        ctx.params.server_names()
    assert servers.server_addresses(ctx) == ips


def test_dry_run_on_an_empty_project_changes_nothing(tmp_path: Path,
                                                     emulator: Running) -> None:  # noqa: F811
    ctx = make_ctx(tmp_path, emulator, dry_run=True)
    results = [ssh_key.ensure_ssh_key(ctx), firewall.ensure_firewall(ctx),
               servers.ensure_servers(ctx)]
    # The firewall: itself + ssh, http from the LB (origin lock-down: no 443 on the nodes);
    # cluster rules wait for servers.
    assert [r.changed for r in results] == [1, 1 + 2, 3]
    assert ctx.planned["servers"] == ctx.params.server_names()
    client = emulator.client()
    assert client.servers.get_all() == [] and client.firewalls.get_all() == []
    assert client.ssh_keys.get_all() == []


def test_rate_limits_do_not_duplicate_servers(tmp_path: Path,
                                              emulator: Running) -> None:  # noqa: F811
    ctx = make_ctx(tmp_path, emulator)
    ssh_key.ensure_ssh_key(ctx)
    # Seeded and only on POSTs (the creates whose replay is the point): unseeded faults on
    # every GET too could exhaust hcloud-python's 5 retries on one request now and then.
    before = emulator.raw("POST", "/_emulator/faults", json={
        "rate_limit_share": 0.3, "seed": 7, "methods": ["POST"]}).json()["faults"]["injected"]
    result = servers.ensure_servers(ctx)
    injected = emulator.raw("POST", "/_emulator/faults", json={"rate_limit_share": 0.0}
                            ).json()["faults"]["injected"] - before
    assert injected > 0, "no rate limit was injected: the replay path went untested"
    assert result.ok
    emulator.idle()
    names = sorted(s.name for s in emulator.client().servers.get_all())
    assert names == ctx.params.server_names()


def test_a_stopped_server_is_powered_on(tmp_path: Path, emulator: Running) -> None:  # noqa: F811
    ctx = make_ctx(tmp_path, emulator)
    ssh_key.ensure_ssh_key(ctx)
    servers.ensure_servers(ctx)
    client = emulator.client()
    server = client.servers.get_by_name("casera-local-2")
    client.servers.power_off(server).wait_until_finished()
    ctx.shared.clear()  # a later run
    result = servers.ensure_servers(ctx)
    assert servers.booted_this_run(ctx) == {"casera-local-2"}
    assert result.changed == 1 and "power on" in result.diff[0] and result.ok
    assert client.servers.get_by_name("casera-local-2").status == "running"
