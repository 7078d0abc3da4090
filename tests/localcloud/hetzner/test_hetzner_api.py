"""The Hetzner emulator through the unmodified hcloud client (fake node backend)."""

from __future__ import annotations

import time

import pytest
import requests
from hcloud import APIException
from hcloud.firewalls.domain import (
    FirewallResource,
    FirewallResourceLabelSelector,
    FirewallRule,
)
from hcloud.images.domain import Image
from hcloud.locations.domain import Location
from hcloud.server_types.domain import ServerType
from hetzner_harness import TOKEN, Running, start, stop_and_check

from casera_localcloud.hetzner.fake_backend import FakeNodeBackend
from casera_localcloud.hetzner.labels import matches

PUBLIC_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG9m7GxvW1x3vP1mWm0d6c3Gx0b1l2K1mQ0n"
              "8r9s2bXY operator@casera")
SWARM_RULES = [
    FirewallRule("in", "tcp", ["0.0.0.0/0", "::/0"], port="22", description="ssh"),
    FirewallRule("in", "tcp", ["127.0.0.0/24"], port="2377", description="swarm manager"),
    FirewallRule("in", "udp", ["127.0.0.0/24"], port="4789", description="vxlan"),
    FirewallRule("in", "esp", ["127.0.0.0/24"], description="encrypted overlay"),
]


def create_servers(client, names: list[str], labels: dict[str, str], **kwargs):
    created = [client.servers.create(name=name, server_type=ServerType(name="cx33"),
                                     image=Image(name="docker-ce"), labels=labels, **kwargs)
               for name in names]
    for response in created:
        response.action.wait_until_finished(max_retries=200)
        for action in response.next_actions:
            action.wait_until_finished(max_retries=200)
    return created


def test_cluster_by_label_with_key_and_firewall(emulator: Running) -> None:
    client = emulator.client()
    key = client.ssh_keys.create(name="operator", public_key=PUBLIC_KEY)
    assert key.fingerprint.count(":") == 15
    firewall = client.firewalls.create(
        name="casera-local", rules=SWARM_RULES,
        resources=[FirewallResource("label_selector", label_selector=(
            FirewallResourceLabelSelector("cluster=casera-local")))]).firewall

    created = create_servers(client, ["node-1", "node-2", "node-3"],
                             {"cluster": "casera-local", "role": "manager"}, ssh_keys=[key])
    assert created[0].root_password is None  # a key was given
    emulator.idle()

    servers = client.servers.get_all(label_selector="cluster=casera-local")
    assert sorted(s.name for s in servers) == ["node-1", "node-2", "node-3"]
    assert {s.status for s in servers} == {"running"}
    assert sorted(s.public_net.ipv4.ip for s in servers) == [
        "127.0.0.11", "127.0.0.12", "127.0.0.13"]
    assert {s.server_type.name for s in servers} == {"cx33"}
    assert all(s.public_net.firewalls[0].firewall.id == firewall.id for s in servers)
    node = emulator.backend.nodes["node-2"]
    assert node["ssh_keys"] == [PUBLIC_KEY]
    assert [r["protocol"] for r in node["firewall"]] == ["tcp", "tcp", "udp", "esp"]
    applied = client.firewalls.get_by_id(firewall.id).applied_to[0].applied_to_resources
    assert sorted(r.server.id for r in applied) == sorted(s.id for s in servers)


def test_duplicate_name_is_a_uniqueness_error(emulator: Running) -> None:
    client = emulator.client()
    create_servers(client, ["twin"], {})
    with pytest.raises(APIException) as err:
        client.servers.create(name="twin", server_type=ServerType(name="cx23"),
                              image=Image(name="debian-12"))
    assert err.value.code == "uniqueness_error"
    with pytest.raises(APIException) as err:
        client.ssh_keys.create(name="a", public_key=PUBLIC_KEY)
        client.ssh_keys.create(name="a", public_key=PUBLIC_KEY)
    assert err.value.code == "uniqueness_error"
    assert len(client.servers.get_all()) == 1


def test_without_or_with_a_wrong_token_is_unauthorized(emulator: Running) -> None:
    assert emulator.raw("GET", "/servers", token=None).status_code == 401
    answer = emulator.raw("GET", "/servers", token="wrong")
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "unauthorized"
    with pytest.raises(APIException) as err:
        emulator.client(token="wrong").servers.get_all()
    assert err.value.code == "unauthorized"
    assert emulator.raw("GET", "/servers").status_code == 200


@pytest.mark.parametrize(("selector", "expected"), [
    ("env=prod", True), ("env==prod", True), ("env!=prod", False), ("env", True),
    ("!env", False), ("!missing", True), ("env in (dev,prod)", True),
    ("env notin (dev,prod)", False), ("env notin (dev)", True), ("env=prod,role=db", True),
    ("env=prod,role=web", False), ("role in (db, web),env", True), ("missing=x", False),
])
def test_label_selector_syntax(selector: str, expected: bool) -> None:
    assert matches(selector, {"env": "prod", "role": "db"}) is expected


def test_list_filters_by_label_selector_name_and_status(emulator: Running) -> None:
    client = emulator.client()
    create_servers(client, ["a1", "a2"], {"cluster": "a", "role": "manager"})
    create_servers(client, ["b1"], {"cluster": "b"})
    client.servers.get_by_name("a2").power_off().wait_until_finished()
    names = lambda servers: sorted(s.name for s in servers)  # noqa: E731
    assert names(client.servers.get_all(label_selector="cluster in (a,b),!role")) == ["b1"]
    assert names(client.servers.get_all(label_selector="cluster=a,role==manager")) == [
        "a1", "a2"]
    assert names(client.servers.get_all(label_selector="cluster notin (a)")) == ["b1"]
    assert names(client.servers.get_all(status=["off"])) == ["a2"]
    assert names(client.servers.get_all(name="a1")) == ["a1"]
    bad = emulator.raw("GET", "/servers", params={"label_selector": "a in b"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_input"
    # A label change re-resolves: b1 joins cluster a.
    client.servers.get_by_name("b1").update(labels={"cluster": "a"})
    assert names(client.servers.get_all(label_selector="cluster=a")) == ["a1", "a2", "b1"]


def test_pagination(emulator: Running) -> None:
    client = emulator.client()
    for i in range(7):
        client.ssh_keys.create(name=f"key-{i}",
                               public_key=f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA{i:04d} k{i}")
    first = emulator.raw("GET", "/ssh_keys", params={"per_page": 3}).json()
    assert first["meta"]["pagination"] == {"page": 1, "per_page": 3, "previous_page": None,
                                           "next_page": 2, "last_page": 3, "total_entries": 7}
    last = emulator.raw("GET", "/ssh_keys", params={"per_page": 3, "page": 3}).json()
    assert [k["name"] for k in last["ssh_keys"]] == ["key-6"]
    assert last["meta"]["pagination"]["next_page"] is None
    assert last["meta"]["pagination"]["previous_page"] == 2
    clamped = emulator.raw("GET", "/ssh_keys", params={"per_page": 500}).json()
    assert clamped["meta"]["pagination"]["per_page"] == 50
    default = emulator.raw("GET", "/locations").json()
    assert default["meta"]["pagination"]["per_page"] == 25
    assert len(client.ssh_keys.get_all()) == 7
    page = client.ssh_keys.get_list(page=2, per_page=3)
    assert [k.name for k in page.ssh_keys] == ["key-3", "key-4", "key-5"]
    ordered = emulator.raw("GET", "/ssh_keys", params={"sort": "name:desc"}).json()
    assert ordered["ssh_keys"][0]["name"] == "key-6"


def test_firewall_rules_round_trip_and_enforcement(emulator: Running) -> None:
    client = emulator.client()
    rules = [*SWARM_RULES,
             FirewallRule("in", "icmp", ["0.0.0.0/0"]),
             FirewallRule("in", "gre", ["10.0.0.0/8"]),
             FirewallRule("in", "tcp", ["192.0.2.0/24"], port="8000-8100"),
             FirewallRule("out", "tcp", [], destination_ips=["0.0.0.0/0"], port="any")]
    firewall = client.firewalls.create(name="fw", rules=rules).firewall
    read = client.firewalls.get_by_id(firewall.id)
    assert [r.to_payload() for r in read.rules] == [r.to_payload() for r in rules]
    assert read.rules[3].protocol == "esp" and read.rules[3].port is None

    create_servers(client, ["web"], {"tier": "web"})
    server = client.servers.get_by_name("web")
    emulator.idle()
    assert emulator.backend.nodes["web"]["firewall"] is None  # no firewall: all open

    actions = client.firewalls.apply_to_resources(
        firewall, [FirewallResource("server", server=server)])
    for action in actions:
        action.wait_until_finished()
    emulator.idle()
    inbound = emulator.backend.nodes["web"]["firewall"]
    assert len(inbound) == 7 and {r["direction"] for r in inbound} == {"in"}

    client.firewalls.set_rules(firewall, [SWARM_RULES[0]])
    emulator.idle()
    assert [r["port"] for r in emulator.backend.nodes["web"]["firewall"]] == ["22"]

    with pytest.raises(APIException) as err:
        client.firewalls.delete(firewall)
    assert err.value.code == "resource_in_use"

    by_label = client.firewalls.create(
        name="by-label", rules=[FirewallRule("in", "udp", ["0.0.0.0/0"], port="53")],
        resources=[FirewallResource("label_selector",
                                    label_selector=FirewallResourceLabelSelector("tier=db"))])
    client.firewalls.remove_from_resources(firewall,
                                           [FirewallResource("server", server=server)])
    emulator.idle()
    assert emulator.backend.nodes["web"]["firewall"] is None
    server.update(labels={"tier": "db"})  # now the label selector catches it
    emulator.idle()
    assert [r["port"] for r in emulator.backend.nodes["web"]["firewall"]] == ["53"]
    assert client.servers.get_by_id(server.id).public_net.firewalls[0].firewall.id == \
        by_label.firewall.id
    client.firewalls.delete(firewall)

    bad = emulator.raw("POST", "/firewalls", json={"name": "bad", "rules": [
        {"direction": "in", "protocol": "esp", "port": "22", "source_ips": ["0.0.0.0/0"]}]})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_input"
    bad = emulator.raw("POST", "/firewalls", json={"name": "bad", "rules": [
        {"direction": "in", "protocol": "tcp", "port": "22", "source_ips": ["10.0.0.1/8"]}]})
    assert bad.status_code == 400


def test_injected_rate_limits_still_create_exactly_three(emulator: Running) -> None:
    client = emulator.client()
    emulator.set_faults(rate_limit_share=0.3, seed=7)
    created = create_servers(client, ["r1", "r2", "r3"], {"cluster": "r"})
    assert len(created) == 3
    emulator.set_faults(rate_limit_share=0)
    assert sorted(s.name for s in client.servers.get_all()) == ["r1", "r2", "r3"]
    assert sum(1 for _m, _t, status, _b in emulator.answers if status == 429) > 0
    rejected = [b for _m, _t, status, b in emulator.answers if status == 429]
    assert rejected[0]["error"]["code"] == "rate_limit_exceeded"


def test_injected_503_is_not_retried_by_hcloud(emulator: Running) -> None:
    emulator.set_faults(error_503_share=1)
    with pytest.raises(APIException) as err:
        emulator.client().locations.get_all()
    assert err.value.code == "unavailable"
    emulator.set_faults(error_503_share=0)


def test_actions_run_then_finish(tmp_path) -> None:
    running = start(tmp_path / "slow", FakeNodeBackend(delay_s=0.3))
    try:
        client = running.client()
        response = client.servers.create(name="slow", server_type=ServerType(name="cx33"),
                                         image=Image(name="docker-ce"))
        assert response.action.status == "running" and response.action.progress == 0
        assert response.action.command == "create_server"
        assert response.server.status == "initializing"
        assert response.root_password  # no key given: Hetzner makes a password
        assert [a.command for a in response.next_actions] == ["start_server"]
        response.action.wait_until_finished()
        action = client.actions.get_by_id(response.action.id)
        assert (action.status, action.progress) == ("success", 100)
        assert action.finished is not None
        server = client.servers.get_by_id(response.server.id)
        assert server.status == "running"

        for verb, status, calls in [
                ("power_off", "off", [("stop_node", "slow", "hard")]),
                ("power_on", "running", [("start_node", "slow"), ("apply_firewall", "slow")]),
                ("shutdown", "off", [("stop_node", "slow", "soft")]),
                ("power_on", "running", [("start_node", "slow"), ("apply_firewall", "slow")]),
                ("reboot", "running", [("stop_node", "slow", "soft"), ("start_node", "slow"),
                                       ("apply_firewall", "slow")]),
                ("reset", "running", [("stop_node", "slow", "hard"), ("start_node", "slow"),
                                      ("apply_firewall", "slow")])]:
            before = len(running.backend.calls)
            action = getattr(server, verb)()
            assert action.status == "running"
            with pytest.raises(APIException) as err:
                server.power_on()  # Hetzner locks a server while such an action runs
            assert err.value.code == "locked"
            action.wait_until_finished()
            assert client.servers.get_by_id(server.id).status == status, verb
            assert running.backend.calls[before:] == calls, verb
        commands = [a.command for a in server.get_actions()]
        assert commands[:3] == ["create_server", "start_server", "stop_server"]
        assert len(server.get_actions_list(per_page=2).actions) == 2

        # A failing backend fails the action and leaves nothing behind.
        running.backend.fail_next["create_node"] = "disk full"
        broken = client.servers.create(name="broken", server_type=ServerType(name="cx23"),
                                       image=Image(name="docker-ce"))
        with pytest.raises(Exception, match="disk full"):
            broken.action.wait_until_finished()
        assert client.actions.get_by_id(broken.action.id).error["code"] == "action_failed"
        assert client.servers.get_by_name("broken") is None

        running.set_faults(action_fail_share=1)
        failed = client.servers.create(name="unlucky", server_type=ServerType(name="cx23"),
                                       image=Image(name="docker-ce"))
        with pytest.raises(Exception, match="injected"):
            failed.action.wait_until_finished()
        running.set_faults(action_fail_share=0)
        assert client.servers.get_by_name("unlucky") is None

        delete = client.servers.delete(server)
        delete.wait_until_finished()
        assert client.servers.get_all() == []
        assert "slow" not in running.backend.nodes
    finally:
        stop_and_check(running)


def test_state_survives_a_restart(tmp_path) -> None:
    state = tmp_path / "state"
    first = start(state, FakeNodeBackend())
    create_servers(first.client(), ["keep"], {"k": "v"})
    first.idle()
    stop_and_check(first)
    second = start(state, FakeNodeBackend())
    try:
        server = second.client().servers.get_by_name("keep")
        assert server.status == "running" and server.labels == {"k": "v"}
        create_servers(second.client(), ["next"], {})
        assert second.client().servers.get_by_name("next").public_net.ipv4.ip == "127.0.0.12"
    finally:
        stop_and_check(second)


def test_catalog_and_prices(emulator: Running) -> None:
    client = emulator.client()
    cx33 = client.server_types.get_by_name("cx33")
    assert (cx33.cores, cx33.memory, cx33.disk) == (4, 8.0, 80)
    prices = {p["location"]: p for p in cx33.prices}
    # Cost-optimised types are EU only, with prices only where they are offered.
    assert set(prices) == {"fsn1", "nbg1", "hel1"}
    assert {loc.location.name for loc in cx33.locations} == {"fsn1", "nbg1", "hel1"}
    assert prices["nbg1"]["price_monthly"] == {"net": "6.4900000000",
                                               "gross": "7.7231000000000000"}
    assert prices["nbg1"]["price_hourly"]["net"] == "0.0104000000"
    assert {t.name for t in client.server_types.get_all()} >= {"cx23", "cx33", "cx43"}
    in_ash = {t.name for t in client.server_types.get_all()
              if any(loc.location.name == "ash" for loc in t.locations)}
    assert in_ash == {"ccx13", "ccx23"}
    ash_dc = client.datacenters.get_by_name("ash-dc1")
    assert {t.name for t in ash_dc.server_types.available} == {"ccx13", "ccx23"}
    assert client.images.get_by_name_and_architecture("docker-ce", "x86").type == "app"
    assert client.images.get_all(type=["system"])[0].name == "debian-12"
    assert client.locations.get_by_name("hil").network_zone == "us-west"
    lb11 = client.load_balancer_types.get_by_name("lb11")
    assert lb11.prices[0]["price_monthly"]["net"] == "5.3900000000"
    pricing = emulator.raw("GET", "/pricing").json()["pricing"]
    assert pricing["currency"] == "EUR" and pricing["vat_rate"] == "19.00"
    assert pricing["load_balancer_types"][0]["name"] == "lb11"


def test_a_type_where_it_is_not_offered_is_refused_as_hetzner_does(emulator: Running) -> None:
    client = emulator.client()
    with pytest.raises(APIException) as err:
        client.servers.create(name="us-node", server_type=ServerType(name="cx33"),
                              image=Image(name="docker-ce"), location=Location(name="ash"))
    assert (err.value.code, err.value.message) == ("invalid_input",
                                                   "unsupported location for server type")
    assert err.value.details == {}
    assert client.servers.get_all() == [] and emulator.backend.nodes == {}
    # The same type in an EU location, and a type offered in Ashburn, are fine.
    create_servers(client, ["eu-node"], {}, location=Location(name="nbg1"))
    created = client.servers.create(name="us-node", server_type=ServerType(name="ccx13"),
                                    image=Image(name="docker-ce"), location=Location(name="ash"))
    created.action.wait_until_finished(max_retries=200)
    assert client.servers.get_by_name("us-node").location.name == "ash"


def test_unknown_paths_and_methods_answer_in_hetzners_shape(emulator: Running) -> None:
    for method, path in (("GET", "/nope"), ("PATCH", "/servers"), ("DELETE", "/pricing"),
                         ("OPTIONS", "/servers"), ("FOO", "/servers")):
        answer = emulator.raw(method, path)
        assert answer.status_code == 404, (method, path, answer.text)
        assert answer.headers["Content-Type"] == "application/json"
        assert answer.json()["error"]["code"] == "not_found", (method, path)
        assert set(answer.json()["error"]) == {"code", "message", "details"}
    outside = requests.get(emulator.url.removesuffix("/v1") + "/index.html", timeout=5)
    assert outside.status_code == 404 and outside.json()["error"]["code"] == "not_found"
    head = emulator.raw("HEAD", "/nope")
    assert head.status_code == 404 and head.content == b""


@pytest.mark.parametrize(("body", "fields"), [
    ({"server_type": "cx33", "image": "docker-ce"}, {"name": ["is required"]}),
    ({}, {"name": ["is required"], "server_type": ["is required"], "image": ["is required"]}),
    ({"name": 7, "server_type": "cx33", "image": "docker-ce"},
     {"name": ["must be of type string"]}),
    ({"name": "n", "server_type": "cx33", "image": "docker-ce", "labels": ["a"]},
     {"labels": ["must be of type object"]}),
    ({"name": "n", "server_type": "cx33", "image": "docker-ce", "start_after_create": "yes"},
     {"start_after_create": ["must be of type boolean"]}),
    ({"name": "n", "server_type": "cx33", "image": "docker-ce", "firewalls": [{"id": 1}]},
     {"firewalls.0.firewall": ["is required"]}),
])
def test_bodies_the_spec_refuses_are_invalid_input_naming_each_field(
        emulator: Running, body: dict, fields: dict) -> None:
    answer = emulator.raw("POST", "/servers", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_input"
    assert {f["name"]: f["messages"] for f in error["details"]["fields"]} == fields
    assert all(f"'{name}'" in error["message"] for name in fields)
    assert emulator.backend.nodes == {}


def test_bodies_that_are_not_json_objects(emulator: Running) -> None:
    for raw in (b"{not json", b"[1, 2]", b'"text"'):
        answer = emulator.raw("POST", "/ssh_keys", data=raw)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "json_error"
    answer = emulator.raw("PUT", "/ssh_keys/1", json={"labels": {"k": 1}})
    assert answer.status_code == 400
    assert answer.json()["error"]["details"]["fields"][0]["name"] == "labels.k"
    bad_length = requests.post(emulator.url + "/ssh_keys", timeout=5, headers={
        "Authorization": f"Bearer {TOKEN}", "Content-Length": "x"})
    assert bad_length.status_code == 400  # never a 500 or a dropped connection
    assert bad_length.json()["error"]["code"] == "invalid_input"


def test_ids_where_the_spec_says_id_or_name(emulator: Running) -> None:
    """hcloud-python sends an id when it has one; the spec's "ID or name" allows it."""
    client = emulator.client()
    key = client.ssh_keys.create(name="k", public_key=PUBLIC_KEY)
    created = client.servers.create(name="by-id", server_type=ServerType(id=105),
                                    image=Image(id=40093247), ssh_keys=[key],
                                    location=Location(id=2))
    created.action.wait_until_finished(max_retries=200)
    server = client.servers.get_by_name("by-id")
    assert (server.server_type.name, server.location.name) == ("cx33", "nbg1")


def test_bad_input_is_invalid_input(emulator: Running) -> None:
    answer = emulator.raw("POST", "/servers", json={"name": "x_y", "server_type": "cx33",
                                                    "image": "docker-ce"})
    assert answer.json()["error"]["code"] == "invalid_input"
    answer = emulator.raw("POST", "/servers", json={"name": "ok", "server_type": "cx99",
                                                    "image": "docker-ce"})
    assert answer.json()["error"]["code"] == "not_found"
    answer = emulator.raw("POST", "/servers", data=b"{not json")
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "json_error"
    assert emulator.raw("GET", "/servers/999").json()["error"]["code"] == "not_found"


def test_faults_from_environment_and_action_delay(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CASERA_HETZNER_FAULTS", '{"action_delay_s": 0.5}')
    running = start(tmp_path / "delayed", FakeNodeBackend())
    try:
        faults = running.raw("GET", "/_emulator/faults").json()["faults"]
        assert faults["action_delay_s"] == 0.5 and faults["rate_limit_share"] == 0
        client = running.client()
        response = client.servers.create(name="late", server_type=ServerType(name="cx23"),
                                         image=Image(name="docker-ce"))
        time.sleep(0.2)
        assert client.actions.get_by_id(response.action.id).status == "running"
        response.action.wait_until_finished()
        bad = running.raw("POST", "/_emulator/faults", json={"rate_limit_share": 2})
        assert bad.status_code == 400
        bad = running.raw("POST", "/_emulator/faults", json={"typo": 1})
        assert bad.status_code == 400
    finally:
        stop_and_check(running)


def test_a_renamed_server_keeps_its_node_name(emulator: Running) -> None:
    client = emulator.client()
    create_servers(client, ["old"], {})
    client.servers.get_by_name("old").update(name="new")
    with pytest.raises(APIException) as err:
        client.servers.create(name="old", server_type=ServerType(name="cx23"),
                              image=Image(name="docker-ce"))
    assert err.value.code == "uniqueness_error"
    client.servers.get_by_name("new").power_off().wait_until_finished()
    assert emulator.backend.calls[-1] == ("stop_node", "old", "hard")


def test_firewall_changes_reach_a_stopped_node_when_it_starts(emulator: Running) -> None:
    client = emulator.client()
    create_servers(client, ["sleeper"], {"fw": "yes"})
    server = client.servers.get_by_name("sleeper")
    server.power_off().wait_until_finished()
    client.firewalls.create(name="late", rules=[SWARM_RULES[0]], resources=[FirewallResource(
        "label_selector", label_selector=FirewallResourceLabelSelector("fw=yes"))])
    emulator.idle()
    assert ("apply_firewall", "sleeper") not in emulator.backend.calls  # it was off
    server.power_on().wait_until_finished()
    emulator.idle()
    assert emulator.backend.calls[-2:] == [("start_node", "sleeper"),
                                           ("apply_firewall", "sleeper")]
    assert [r["port"] for r in emulator.backend.nodes["sleeper"]["firewall"]] == ["22"]


def test_faults_reset_in_one_call_and_do_not_survive_a_restart(tmp_path) -> None:
    running = start(tmp_path / "faulty", FakeNodeBackend())
    try:
        running.set_faults(rate_limit_share=1, methods=["POST"], seed=3, action_delay_s=0.2)
        refused = running.raw("POST", "/ssh_keys", json={"name": "k", "public_key": PUBLIC_KEY})
        assert refused.status_code == 429
        reset = running.raw("DELETE", "/_emulator/faults")
        assert reset.status_code == 200
        faults = reset.json()["faults"]
        assert faults == {"rate_limit_share": 0.0, "error_503_share": 0.0, "action_delay_s": 0.0,
                          "action_fail_share": 0.0, "seed": None, "methods": [],
                          "injected": 1}
        made = running.raw("POST", "/ssh_keys", json={"name": "k", "public_key": PUBLIC_KEY})
        assert made.status_code == 201
        running.set_faults(error_503_share=1)
    finally:
        stop_and_check(running)
    # Set at run time, kept in memory only: the same state dir starts with every fault off.
    again = start(tmp_path / "faulty", FakeNodeBackend())
    try:
        faults = again.raw("GET", "/_emulator/faults").json()["faults"]
        assert faults["error_503_share"] == 0 and faults["rate_limit_share"] == 0
        assert again.raw("GET", "/ssh_keys").json()["ssh_keys"][0]["name"] == "k"
    finally:
        stop_and_check(again)
