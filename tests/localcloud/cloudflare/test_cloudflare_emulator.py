"""The Cloudflare DNS emulator driven by the unmodified ``cloudflare`` SDK over real HTTP.

One emulator process per test session (own free port, temp state dir); the restart and
up/down tests start their own so that stopping them cannot disturb the others.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import cloudflare
import pytest
from cloudflare import Cloudflare
from localcloud_harness import free_port

from casera.operator_secrets import Secret
from casera.providers import cloudflare as provider
from casera_localcloud.cloudflare import service
from casera_localcloud.cloudflare.store import read_state

ZONE = "casera.test"
TOKEN = "casera-test-token_0123456789abcdefghijklmn"


def client(port: int, token: str = TOKEN) -> Cloudflare:
    # max_retries=0: an emulator answer that the SDK would retry must show up as a failure.
    return Cloudflare(api_token=token, base_url=service.endpoint(port), max_retries=0,
                      timeout=5)


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory):
    state_dir = tmp_path_factory.mktemp("cloudflare-state")
    port = free_port()
    service.start(port, state_dir, zones=[ZONE, "other.test"], tokens=[TOKEN], show=False)
    yield port, state_dir
    service.stop(state_dir)


@pytest.fixture(scope="session")
def cf(emulator) -> Cloudflare:
    return client(emulator[0])


@pytest.fixture(scope="session")
def zone_id(cf) -> str:
    return next(iter(cf.zones.list(name=ZONE))).id


def api_error(exc: pytest.ExceptionInfo[cloudflare.APIStatusError]) -> int:
    body = exc.value.body
    assert isinstance(body, dict) and body["success"] is False
    return int(body["errors"][0]["code"])


def test_zones_are_listed_and_filtered_by_name(cf):
    names = sorted(z.name for z in cf.zones.list())
    assert names == ["casera.test", "other.test"]
    found = list(cf.zones.list(name=ZONE))
    assert [z.name for z in found] == [ZONE]
    zone = found[0]
    assert len(zone.id) == 32 and int(zone.id, 16) >= 0
    assert zone.status == "active" and zone.account.id and zone.name_servers
    assert cf.zones.get(zone_id=zone.id).name == ZONE
    assert list(cf.zones.list(name="absent.test")) == []
    assert [z.name for z in cf.zones.list(name="starts_with:other")] == ["other.test"]


def test_preflight_helper_finds_the_zone(emulator):
    cf = provider.client(Secret("cloudflare_api_token", TOKEN), service.endpoint(emulator[0]))
    assert provider.find_zone_id(cf, ZONE)
    assert provider.find_zone_id(cf, "absent.test") is None


def test_proxied_a_record_lifecycle(cf, zone_id):
    created = cf.dns.records.create(zone_id=zone_id, name="api", type="A",
                                    content="203.0.113.10", ttl=1, proxied=True,
                                    comment="api through the LB")
    assert created.name == "api.casera.test"  # stored fully qualified
    assert created.proxied and created.proxiable and created.ttl == 1
    assert len(created.id) == 32 and created.created_on == created.modified_on
    assert created.comment == "api through the LB"

    found = list(cf.dns.records.list(zone_id=zone_id, name={"exact": "api.casera.test"},
                                     type="A"))
    assert [r.id for r in found] == [created.id]
    assert list(cf.dns.records.list(zone_id=zone_id, name="api.casera.test", type="AAAA")) == []

    edited = cf.dns.records.edit(created.id, zone_id=zone_id, name="api.casera.test",
                                 type="A", ttl=1, content="203.0.113.11", proxied=True)
    assert edited.content == "203.0.113.11" and edited.modified_on > created.modified_on
    assert edited.comment == "api through the LB"  # PATCH keeps what it does not send
    assert cf.dns.records.get(created.id, zone_id=zone_id).content == "203.0.113.11"

    replaced = cf.dns.records.update(created.id, zone_id=zone_id, name="api", type="A",
                                     ttl=300, content="203.0.113.12", proxied=False)
    assert (replaced.content, replaced.ttl, replaced.proxied) == ("203.0.113.12", 300, False)
    assert replaced.comment is None  # PUT replaces the whole record

    assert cf.dns.records.delete(created.id, zone_id=zone_id).id == created.id
    with pytest.raises(cloudflare.NotFoundError) as exc:
        cf.dns.records.get(created.id, zone_id=zone_id)
    assert api_error(exc) == 81044


def test_identical_record_is_refused(cf, zone_id):
    cf.dns.records.create(zone_id=zone_id, name="dup", type="A", content="198.51.100.7",
                          ttl=1)
    with pytest.raises(cloudflare.BadRequestError) as exc:
        cf.dns.records.create(zone_id=zone_id, name="dup.casera.test.", type="A",
                              content="198.51.100.7", ttl=120, proxied=True)
    assert api_error(exc) == 81058
    # Another address on the same name is a round-robin set, not a duplicate.
    cf.dns.records.create(zone_id=zone_id, name="dup", type="A", content="198.51.100.8",
                          ttl=1)
    assert len(list(cf.dns.records.list(zone_id=zone_id, name="dup.casera.test"))) == 2


def test_cname_cannot_share_a_name_with_addresses(cf, zone_id):
    cf.dns.records.create(zone_id=zone_id, name="www", type="A", content="198.51.100.9",
                          ttl=1)
    with pytest.raises(cloudflare.BadRequestError) as exc:
        cf.dns.records.create(zone_id=zone_id, name="www", type="CNAME",
                              content="api.casera.test", ttl=1)
    assert api_error(exc) == 81053
    cf.dns.records.create(zone_id=zone_id, name="alias", type="CNAME",
                          content="api.casera.test", ttl=1, proxied=True)
    with pytest.raises(cloudflare.BadRequestError) as exc:
        cf.dns.records.create(zone_id=zone_id, name="alias", type="AAAA",
                              content="2001:db8::1", ttl=1)
    assert api_error(exc) == 81054
    # A TXT may sit beside a CNAME on Cloudflare.
    cf.dns.records.create(zone_id=zone_id, name="alias", type="TXT", content="note", ttl=1)


@pytest.mark.parametrize(("record", "code"), [
    ({"type": "A", "content": "10.77.0.11", "proxied": True}, 9003),
    ({"type": "A", "content": "127.0.0.1", "proxied": True}, 9003),
    ({"type": "TXT", "content": "v=spf1 -all", "proxied": True}, 9004),
    ({"type": "A", "content": "not-an-ip"}, 9005),
    ({"type": "A", "content": "198.51.100.20", "ttl": 30}, 9021),
])
def test_invalid_records_are_refused_like_cloudflare(cf, zone_id, record, code):
    record = {"ttl": 1, "name": "bad", **record}
    with pytest.raises(cloudflare.BadRequestError) as exc:
        cf.dns.records.create(zone_id=zone_id, **record)
    assert api_error(exc) == code


def test_private_target_unproxied_is_fine(cf, zone_id):
    record = cf.dns.records.create(zone_id=zone_id, name="lan", type="A",
                                   content="10.77.0.11", ttl=60)
    assert record.proxiable is False and record.proxied is False


def test_bad_token_is_refused(emulator):
    with pytest.raises(cloudflare.PermissionDeniedError) as exc:
        list(client(emulator[0], token="x" * 40).zones.list())
    assert api_error(exc) == 9109
    # A header the SDK would never send, checked over plain HTTP.
    request = urllib.request.Request(f"{service.endpoint(emulator[0])}/zones",
                                     headers={"Authorization": "Bearer not/a token"})
    with pytest.raises(urllib.error.HTTPError) as raw:
        urllib.request.urlopen(request, timeout=5)
    assert raw.value.code == 400
    assert json.loads(raw.value.read())["errors"][0]["code"] == 6003


def test_unknown_zone_cannot_be_routed(cf):
    with pytest.raises(cloudflare.BadRequestError) as exc:
        list(cf.dns.records.list(zone_id="0" * 32))
    assert api_error(exc) == 7003


def test_records_are_paginated(cf):
    zone_id = next(iter(cf.zones.list(name="other.test"))).id
    for n in range(12):
        cf.dns.records.create(zone_id=zone_id, name=f"txt{n:02d}", type="TXT",
                              content=f"value {n}", ttl=1)
    first = cf.dns.records.list(zone_id=zone_id, type="TXT", per_page=5)
    assert len(first.result) == 5
    assert first.result_info.page == 1 and first.result_info.per_page == 5
    raw = cf.dns.records.with_raw_response.list(zone_id=zone_id, type="TXT", per_page=5,
                                                page=3).http_response.json()
    assert raw["result_info"] == {"page": 3, "per_page": 5, "count": 2, "total_count": 12,
                                  "total_pages": 3}
    every = list(cf.dns.records.list(zone_id=zone_id, type="TXT", per_page=5))
    assert sorted(r.name for r in every) == [f"txt{n:02d}.other.test" for n in range(12)]


def test_state_survives_a_restart(tmp_path):
    port, state_dir = free_port(), tmp_path / "state"
    service.start(port, state_dir, zones=[ZONE], tokens=[TOKEN], show=False)
    try:
        cf = client(port)
        zone_id = next(iter(cf.zones.list(name=ZONE))).id
        record = cf.dns.records.create(zone_id=zone_id, name="api", type="A",
                                       content="203.0.113.50", ttl=1, proxied=True)
    finally:
        assert "stopped" in service.stop(state_dir)
    assert service.health(port) is None
    service.start(port, state_dir, zones=[ZONE], show=False)  # token comes from the state
    try:
        cf = client(port)
        assert next(iter(cf.zones.list(name=ZONE))).id == zone_id
        again = cf.dns.records.get(record.id, zone_id=zone_id)
        assert (again.name, again.content, again.proxied) == (
            "api.casera.test", "203.0.113.50", True)
    finally:
        service.stop(state_dir)


def test_up_publishes_the_token_and_down_keeps_state(tmp_path, monkeypatch):
    monkeypatch.setenv("CASERA_PROJECT_DIR", str(tmp_path / "project"))
    port, state_dir = free_port(), tmp_path / "state"
    try:
        lines = service.up(port, state_dir, zone=ZONE, allow_private_proxied=True)
        assert lines[0].startswith("started") and "written" in lines[1]
        secrets_env = (tmp_path / "project" / "secrets" / "local.env").read_text()
        token = secrets_env.split(f"{service.TOKEN_SECRET}=", 1)[1].split()[0]
        assert len(token) == 40
        assert (state_dir / "state.json").stat().st_mode & 0o077 == 0
        cf = client(port, token)
        zone_id = next(iter(cf.zones.list())).id
        # The local cloud's load balancer sits on loopback; real Cloudflare would refuse this.
        lb = cf.dns.records.create(zone_id=zone_id, name="api", type="A", content="127.0.0.1",
                                   ttl=1, proxied=True)
        assert lb.proxied and lb.proxiable is False
        again = service.up(port, state_dir, zone=ZONE)
        assert "already running" in again[0] and "already in" in again[1]
        assert "running" in service.status(port, state_dir)[0]
    finally:
        down = service.down(state_dir)
    assert "stopped" in down[0]
    assert "not answering" in service.status(port, state_dir)[0]
    assert read_state(state_dir)["tokens"] == [token]
