"""Bad input to the Cloudflare emulator gets the API v4 error envelope, never a 500 or HTML.

Each case is sent over plain HTTP and must answer ``{"success": false, "errors": [{"code",
"message"}, ...], "messages": [], "result": null}`` with the status and code Cloudflare gives,
and change nothing: zones and every record are compared before and after. The emulator is
this module's own (free port, temp state), so the shared local cloud is never touched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cloudflare
import pytest
from cloudflare import Cloudflare
from localcloud_harness import free_port, raw_exchange, raw_request

from casera_localcloud.cloudflare import service

ZONE = "casera.test"
TOKEN = "casera-bad-input-token_0123456789abcdefg"
UNKNOWN_RECORD = "0123456789abcdef0123456789abcdef"


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes

    def codes(self) -> list[int]:
        """The error codes of the v4 envelope, checked for shape on the way."""
        assert self.content_type.startswith("application/json"), (self.content_type, self.body)
        payload = json.loads(self.body)
        assert set(payload) == {"success", "errors", "messages", "result"}, payload
        assert payload["success"] is False and payload["result"] is None
        assert payload["messages"] == []
        assert payload["errors"], payload
        for error in payload["errors"]:
            assert isinstance(error["code"], int) and isinstance(error["message"], str)
            assert error["message"] and "Traceback" not in error["message"]
        return [int(error["code"]) for error in payload["errors"]]


@dataclass
class Emulator:
    port: int
    state_dir: Path
    zone_id: str
    record_id: str

    def send(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> Answer:
        sent = {"Authorization": f"Bearer {TOKEN}", **(headers or {})}
        return Answer(*raw_request(self.port, method, path, body, sent))

    def snapshot(self) -> dict[str, object]:
        """Everything a bad request could have changed, as the API shows it."""
        zones = self.send("GET", "/client/v4/zones?per_page=50")
        records = self.send("GET", f"/client/v4/zones/{self.zone_id}/dns_records"
                                   "?per_page=5000")
        assert zones.status == records.status == 200
        return {"zones": json.loads(zones.body)["result"],
                "records": json.loads(records.body)["result"]}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    state_dir = tmp_path_factory.mktemp("cloudflare-bad-input")
    port = free_port()
    service.start(port, state_dir, zones=[ZONE], tokens=[TOKEN], show=False)
    try:
        cf = Cloudflare(api_token=TOKEN, base_url=service.endpoint(port), max_retries=0,
                        timeout=5)
        zone_id = next(iter(cf.zones.list(name=ZONE))).id
        record = cf.dns.records.create(zone_id=zone_id, name="api", type="A",
                                       content="203.0.113.10", ttl=1, proxied=True)
        yield Emulator(port, state_dir, zone_id, record.id)
    finally:
        service.stop(state_dir)


RECORD = {"type": "A", "name": "bad", "content": "198.51.100.1", "ttl": 1}
# (id, method, path, JSON body or raw bytes, status, first error code). "{zone}" and
# "{record}" in paths stand for this module's zone and record ids.
CASES = [
    # unknown paths and ids that route nowhere: 7003 then 7000
    ("unknown-path", "GET", "/client/v4/nothing", None, 400, 7003),
    ("outside-api", "GET", "/not-the-api", None, 400, 7003),
    ("unknown-zone", "GET", f"/client/v4/zones/{'0' * 32}/dns_records", None, 400, 7003),
    ("malformed-zone-id", "GET", "/client/v4/zones/not-an-id", None, 400, 7003),
    ("malformed-record-id", "GET", "/client/v4/zones/{zone}/dns_records/xyz", None, 400, 7003),
    # wrong HTTP methods: 7001
    ("delete-zone", "DELETE", "/client/v4/zones/{zone}", None, 405, 7001),
    ("put-records", "PUT", "/client/v4/zones/{zone}/dns_records", RECORD, 405, 7001),
    ("post-record", "POST", "/client/v4/zones/{zone}/dns_records/{record}", RECORD, 405, 7001),
    ("options-zones", "OPTIONS", "/client/v4/zones", None, 405, 7001),
    ("unknown-method", "BREW", "/client/v4/zones", None, 405, 7001),
    # invalid JSON bodies: 6007
    ("truncated-json", "POST", "/client/v4/zones/{zone}/dns_records", b'{"type": "A"', 400,
     6007),
    ("json-array", "POST", "/client/v4/zones/{zone}/dns_records", b"[]", 400, 6007),
    ("not-utf8", "POST", "/client/v4/zones/{zone}/dns_records", b'{"name": "\xff"}', 400, 6007),
    ("json-nan", "POST", "/client/v4/zones/{zone}/dns_records",
     b'{"type": "A", "name": "bad", "content": "198.51.100.1", "ttl": NaN}', 400, 6007),
    ("json-huge-number", "PATCH", "/client/v4/zones/{zone}/dns_records/{record}",
     b'{"ttl": 1e400}', 400, 6007),
    ("json-deep", "POST", "/client/v4/zones/{zone}/dns_records", b"[" * 100_000, 400, 6007),
    # missing required fields
    ("empty-record", "POST", "/client/v4/zones/{zone}/dns_records", {}, 400, 1004),
    ("no-name", "POST", "/client/v4/zones/{zone}/dns_records",
     {"type": "A", "content": "198.51.100.1"}, 400, 1004),
    ("no-content", "POST", "/client/v4/zones/{zone}/dns_records", {"type": "A", "name": "bad"},
     400, 9005),
    ("put-without-type", "PUT", "/client/v4/zones/{zone}/dns_records/{record}",
     {"name": "api", "content": "203.0.113.11"}, 400, 1004),
    # wrong field types
    ("type-unsupported", "POST", "/client/v4/zones/{zone}/dns_records",
     {**RECORD, "type": "MX"}, 400, 1004),
    ("content-number", "POST", "/client/v4/zones/{zone}/dns_records",
     {**RECORD, "content": 3325256705}, 400, 9005),
    ("proxied-string", "POST", "/client/v4/zones/{zone}/dns_records",
     {**RECORD, "proxied": "yes"}, 400, 9003),
    ("ttl-string", "PATCH", "/client/v4/zones/{zone}/dns_records/{record}", {"ttl": "300"},
     400, 9021),
    ("tags-string", "POST", "/client/v4/zones/{zone}/dns_records",
     {**RECORD, "tags": "env:test"}, 400, 1004),
    ("comment-number", "PATCH", "/client/v4/zones/{zone}/dns_records/{record}",
     {"comment": 5}, 400, 1004),
    ("page-word", "GET", "/client/v4/zones/{zone}/dns_records?page=two", None, 400, 1001),
    # out-of-range values
    ("ttl-too-low", "POST", "/client/v4/zones/{zone}/dns_records", {**RECORD, "ttl": 30},
     400, 9021),
    ("ttl-too-high", "PATCH", "/client/v4/zones/{zone}/dns_records/{record}",
     {"ttl": 86401}, 400, 9021),
    ("per-page-overflow", "GET", "/client/v4/zones/{zone}/dns_records?per_page=1e400", None,
     400, 1001),
    ("a-record-not-ipv4", "PATCH", "/client/v4/zones/{zone}/dns_records/{record}",
     {"content": "256.0.0.1"}, 400, 9005),
    ("proxied-private", "PATCH", "/client/v4/zones/{zone}/dns_records/{record}",
     {"content": "10.0.0.1"}, 400, 9003),
    # unknown records: 81044
    ("get-unknown-record", "GET", f"/client/v4/zones/{{zone}}/dns_records/{UNKNOWN_RECORD}",
     None, 404, 81044),
    ("patch-unknown-record", "PATCH", f"/client/v4/zones/{{zone}}/dns_records/{UNKNOWN_RECORD}",
     {"ttl": 300}, 404, 81044),
    ("delete-unknown-record", "DELETE",
     f"/client/v4/zones/{{zone}}/dns_records/{UNKNOWN_RECORD}", None, 404, 81044),
    # state that already exists: 81058 (Cloudflare's code since it retired 81057)
    ("identical-record", "POST", "/client/v4/zones/{zone}/dns_records",
     {"type": "A", "name": "api", "content": "203.0.113.10", "ttl": 1, "proxied": True},
     400, 81058),
]


def render_path(path: str, emulator: Emulator) -> str:
    return path.replace("{zone}", emulator.zone_id).replace("{record}", emulator.record_id)


@pytest.mark.parametrize(("method", "path", "body", "status", "code"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_request_gets_the_v4_envelope_and_changes_nothing(
        emulator: Emulator, method: str, path: str, body: object, status: int,
        code: int) -> None:
    before = emulator.snapshot()
    raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    answer = emulator.send(method, render_path(path, emulator), raw,
                           {"Content-Type": "application/json"} if raw is not None else None)
    assert (answer.status, answer.codes()[0]) == (status, code), answer
    assert emulator.snapshot() == before


def test_unknown_uri_names_both_route_errors(emulator: Emulator) -> None:
    answer = emulator.send("GET", "/client/v4/nothing")
    assert answer.codes() == [7003, 7000]


def test_head_refusal_has_no_body(emulator: Emulator) -> None:
    answer = emulator.send("HEAD", "/client/v4/zones")
    assert (answer.status, answer.body) == (405, b"")


def test_missing_and_wrong_auth(emulator: Emulator) -> None:
    before = emulator.snapshot()
    # No Authorization header at all (send() always adds one).
    missing = Answer(*raw_request(emulator.port, "POST",
                                  f"/client/v4/zones/{emulator.zone_id}/dns_records",
                                  json.dumps(RECORD).encode(),
                                  {"Content-Type": "application/json"}))
    assert (missing.status, missing.codes()) == (400, [9106])
    wrong = emulator.send("DELETE", f"/client/v4/zones/{emulator.zone_id}/dns_records/"
                                    f"{emulator.record_id}",
                          headers={"Authorization": "Bearer " + "x" * 40})
    assert (wrong.status, wrong.codes()) == (403, [9109])
    assert emulator.snapshot() == before


def test_malformed_http_gets_the_envelope_not_html(emulator: Emulator) -> None:
    # http.server's own refusals were HTML pages; a header line over its 64 KiB limit is one.
    raw = raw_exchange(emulator.port, b"GET /client/v4/zones HTTP/1.1\r\nHost: x\r\nX-Long: "
                       + b"a" * 70_000 + b"\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert Answer(400, "application/json", body).codes()[0] == 6003


def test_the_sdk_sees_its_exception_classes(emulator: Emulator) -> None:
    """What a ``cloudflare`` SDK caller gets: the status picks the class (cloudflare/_client.py
    ``_make_status_error``) and the envelope is kept as ``exc.body``."""
    cf = Cloudflare(api_token=TOKEN, base_url=service.endpoint(emulator.port), max_retries=0,
                    timeout=5)
    before = emulator.snapshot()
    with pytest.raises(cloudflare.BadRequestError) as bad_ttl:
        cf.dns.records.create(zone_id=emulator.zone_id, name="bad", type="A",
                              content="198.51.100.1", ttl=30)
    assert bad_ttl.value.body["errors"][0]["code"] == 9021
    with pytest.raises(cloudflare.NotFoundError) as unknown:
        cf.dns.records.delete(UNKNOWN_RECORD, zone_id=emulator.zone_id)
    assert unknown.value.body["errors"][0]["code"] == 81044
    with pytest.raises(cloudflare.BadRequestError) as no_route:
        cf.dns.records.get(emulator.record_id, zone_id="0" * 32)
    assert no_route.value.body["errors"][0]["code"] == 7003
    assert emulator.snapshot() == before
