"""casera.providers.hetzner against the emulator, through the real hcloud client: facts are
plain frozen data, a replayed create converges, actions are waited for together (failure and
timeout named), and every hcloud error arrives as ProviderError with the API's code."""

from __future__ import annotations

import dataclasses

import pytest
from hetzner_harness import TOKEN, Running, free_port

from casera.errors import ProviderError, WaitTimeout
from casera.operator_secrets import Secret
from casera.providers import hetzner
from casera.providers.hetzner import FirewallRule, LBService, ServerSpec

PUBLIC_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGz9u0sVYtE6Uy4mS2s6d4w3mvh0Sg5xvY3h2iL1tQ9b"
              " operator")


def _hz(emulator: Running, token: str = TOKEN) -> hetzner.Hetzner:
    return hetzner.connect(emulator.url, Secret("hcloud_token", token), timeout=10)


def _with_key(emulator: Running) -> hetzner.Hetzner:
    """A project holding the key ``op`` that server specs name (Hetzner refuses a server
    naming a key it does not have)."""
    hz = _hz(emulator)
    hz.ssh_keys.create_or_get("op", PUBLIC_KEY, {})
    return hz


def _spec(name: str, server_type: str = "cx33") -> ServerSpec:
    return ServerSpec(name=name, server_type=server_type, image="docker-ce", location="nbg1",
                      ssh_key_name="op", user_data="#cloud-config\n", labels={"cluster": "t"})


def _plain(value: object) -> bool:
    """Only builtins and our own dataclasses, all the way down: no hcloud object."""
    if dataclasses.is_dataclass(value):
        return type(value).__module__.startswith("casera.") and all(
            _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
            if not f.name.startswith("_"))
    if isinstance(value, dict):
        return all(_plain(k) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def test_a_replayed_create_converges_and_facts_are_plain_frozen_data(
        emulator: Running) -> None:
    hz = _hz(emulator)
    key = hz.ssh_keys.create_or_get("op", PUBLIC_KEY, {"a": "b"})
    assert hz.ssh_keys.create_or_get("op", PUBLIC_KEY, {"a": "b"}) == key
    first = hz.servers.create_or_get(_spec("n1"))
    assert not first.existed and first.action is not None
    hetzner.wait_for([first.action], "n1", 60)
    again = hz.servers.create_or_get(_spec("n1"))
    assert again.existed and again.action is None and again.server.id == first.server.id
    assert [s.name for s in hz.servers.list("cluster=t")] == ["n1"]
    server = hz.servers.get("n1")
    assert server is not None and server.status == "running" and server.ipv4
    assert _plain(server) and _plain(key)
    with pytest.raises(dataclasses.FrozenInstanceError):
        server.status = "off"
    assert hz.servers.get("n2") is None and hz.ssh_keys.get("other") is None


def test_firewalls_create_or_get_set_rules_apply_and_the_unique_create(
        emulator: Running) -> None:
    hz = _hz(emulator)
    ssh = FirewallRule("in", "tcp", "22", ("198.51.100.0/24",), "ssh")
    fw, actions = hz.firewalls.create_or_get("fw", [ssh], {}, apply_to_label="cluster=t")
    hetzner.wait_for(actions, "fw", 60)
    replayed, none = hz.firewalls.create_or_get("fw", [ssh], {})
    assert replayed.id == fw.id and none == []
    read = hz.firewalls.get("fw")
    assert read is not None and _plain(read)
    assert [r.key for r in read.rules] == [ssh.key] and read.applied_to_labels == ("cluster=t",)
    esp = FirewallRule("in", "esp", None, ("10.0.0.1/32",), "esp")
    hetzner.wait_for(hz.firewalls.set_rules(read, [ssh, esp]), "rules", 60)
    assert {r.protocol for r in hz.firewalls.get("fw").rules} == {"tcp", "esp"}
    # The lock's test-and-set: a taken name is an answer, not a convergence.
    lock = hz.firewalls.create_unique("lock", {"who": "me"})
    assert lock is not None and lock.labels == {"who": "me"}
    assert hz.firewalls.create_unique("lock", {"who": "you"}) is None
    assert hz.firewalls.delete(lock) is True and hz.firewalls.delete(lock) is False


def test_load_balancer_services_and_targets(emulator: Running) -> None:
    hz = _hz(emulator)
    lb, actions = hz.load_balancers.create_or_get(
        "lb", "lb11", "nbg1", [LBService(80, 8080, "/readyz")], "cluster=t", {})
    hetzner.wait_for(actions, "lb", 60)
    read = hz.load_balancers.get("lb")
    assert read is not None and _plain(read) and read.ipv4 and read.type == "lb11"
    assert read.services == (LBService(80, 8080, "/readyz"),)
    assert read.target_labels == ("cluster=t",)
    hetzner.wait_for([hz.load_balancers.add_service(read, LBService(443, 8443, "/readyz")),
                      hz.load_balancers.delete_service(read, 80)], "services", 60)
    after = hz.load_balancers.get("lb")
    assert after is not None and [s.listen_port for s in after.services] == [443]


def test_wait_for_returns_once_every_action_has_finished(emulator: Running) -> None:
    # Behaviour, not speed (no timing is asserted): while one action of three still runs,
    # wait_for keeps waiting; when it returns, every action is finished and every server runs.
    hz = _with_key(emulator)
    emulator.set_faults(action_delay_s=1.5)
    made = [hz.servers.create_or_get(_spec(f"n{i}")) for i in (1, 2, 3)]
    actions = [c.action for c in made]
    assert any(a is not None and a._bound.status == "running" for a in actions)
    hetzner.wait_for(actions, "three servers", 60)
    for action in actions:
        assert action is not None
        action._bound.reload()
        assert action._bound.status == "success"
    assert {s.status for s in hz.servers.list("cluster=t")} == {"running"}


def test_a_failed_action_and_a_timeout_are_named(emulator: Running) -> None:
    hz = _with_key(emulator)
    emulator.set_faults(action_fail_share=1.0)
    failing = hz.servers.create_or_get(_spec("bad"))
    with pytest.raises(ProviderError) as caught:
        hetzner.wait_for([failing.action], "bad server", 60)
    assert caught.value.system == "hetzner" and caught.value.code == "action_failed"
    assert "bad server: create_server" in str(caught.value)
    emulator.set_faults(action_fail_share=0.0, action_delay_s=5.0)
    slow = hz.servers.create_or_get(_spec("slow"))
    with pytest.raises(WaitTimeout, match=r"slow server: 1 action\(s\) still running after 1 s"):
        hetzner.wait_for([slow.action], "slow server", 1.0)


def test_hcloud_errors_become_provider_errors_with_the_api_code(emulator: Running) -> None:
    with pytest.raises(ProviderError) as caught:
        _with_key(emulator).servers.create_or_get(_spec("n1", server_type="cx99"))
    assert caught.value.system == "hetzner" and caught.value.code is not None
    assert str(caught.value).startswith("hetzner: create server n1: ")
    with pytest.raises(ProviderError) as unauthorized:
        _hz(emulator, token="wrong-token").servers.list("cluster=t")
    assert unauthorized.value.code == "unauthorized"
    assert "wrong-token" not in str(unauthorized.value)
    nowhere = f"http://127.0.0.1:{free_port()}/v1"
    hz = hetzner.connect(nowhere, Secret("hcloud_token", TOKEN), timeout=2)
    with pytest.raises(ProviderError, match=f"list servers labelled cluster=t at {nowhere}: "):
        hz.servers.list("cluster=t")
