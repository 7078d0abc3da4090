"""Bad input to the local Neon API gets Neon's error shape, never a 500 or an HTML page.

Neon's OpenAPI v2 answers every error with ``GeneralError``: ``code`` (a string) and
``message``, both required (neondatabase/neon-api-python ``v2.json``). Each case below also
leaves the project as it was: a refused request changes nothing.
"""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlparse

import pytest
from localcloud_harness import raw_exchange

pytestmark = pytest.mark.localcloud

PROJECT = "/projects/casera-local"


def raw_request(env, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, token: bool = True):
    url = urlparse(env.api_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token:
        sent["Authorization"] = f"Bearer {env.api_key}"
    try:
        conn.request(method, url.path + path, body=body, headers=sent)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read(), resp
    finally:
        conn.close()


def neon_error(status: int, ctype: str, data: bytes) -> dict:
    """The answer is Neon's GeneralError: JSON, code and message, a 4xx status."""
    assert 400 <= status < 500, (status, data[:300])
    assert ctype.startswith("application/json"), (ctype, data[:300])
    body = json.loads(data)
    assert set(body) == {"code", "message"}, body
    assert isinstance(body["code"], str) and body["message"], body
    return body


def project_now(env) -> dict:
    status, body = env.api("GET", PROJECT)
    assert status == 200, body
    return body["project"]


@pytest.mark.parametrize(("method", "path", "status", "words"), [
    ("GET", "/projects/casera-local/nonsense", 404, "no route for GET"),
    ("GET", "/nothing/here", 404, "no route"),
    ("GET", "/projects/no-such-project", 404, "project no-such-project not found"),
    ("GET", f"{PROJECT}/branches/br-none", 404, "branch br-none not found"),
    ("GET", f"{PROJECT}/operations/op-none", 404, "operation op-none not found"),
    ("DELETE", PROJECT, 405, "allowed: GET, PATCH"),
    ("PUT", PROJECT, 405, "allowed: GET, PATCH"),
    ("POST", "/users/me", 405, "allowed: GET"),
    ("OPTIONS", PROJECT, 405, "not allowed"),
    ("BREW", PROJECT, 405, "method BREW is not allowed"),
    ("GET", f"{PROJECT}/connection_uri?role_name=casera", 400, "database_name"),
    ("GET", f"{PROJECT}/connection_uri?role_name=casera&database_name=casera&pooled=maybe",
     400, "pooled must be true or false"),
])
def test_unknown_paths_and_methods(neon_env, method, path, status, words):
    got, ctype, data, resp = raw_request(neon_env, method, path)
    body = neon_error(got, ctype, data)
    assert got == status and words in body["message"], (got, body)
    if got == 405 and method != "BREW":
        assert resp.getheader("Allow"), "a 405 says which methods the path takes"


def test_unknown_path_without_a_token_is_401_not_a_route_leak(neon_env):
    got, ctype, data, _ = raw_request(neon_env, "GET", "/nothing/here", token=False)
    assert neon_error(got, ctype, data) and got == 401


BAD_PATCHES: list[tuple[bytes, str]] = [
    (b"{not json", "request body is not JSON"),
    (b"\xff\xfe", "request body is not JSON"),
    (b"[1, 2]", "must be a JSON object, not list"),
    (b'"project"', "must be a JSON object, not str"),
    (b"{}", "body.project is required"),
    (b'{"project": []}', "body.project must be an object"),
    (b'{"project": {"settings": "open"}}', "project.settings must be an object"),
    (b'{"project": {"settings": {"allowed_ips": ["1.2.3.4"]}}}',
     "project.settings.allowed_ips must be an object"),
    (b'{"project": {"settings": {"allowed_ips": {"ips": "1.2.3.4"}}}}',
     "allowed_ips.ips must be an array"),
    (b'{"project": {"settings": {"allowed_ips": {"ips": [1234]}}}}', "ips[0] must be a string"),
    (b'{"project": {"settings": {"allowed_ips": {"ips": [], "protected_branches_only": "no"}}}}',
     "protected_branches_only must be a boolean"),
    (b'{"project": {"history_retention_seconds": "86400"}}',
     "history_retention_seconds must be an integer"),
    (b'{"project": {"history_retention_seconds": true}}',
     "history_retention_seconds must be an integer"),
    (b'{"project": {"history_retention_seconds": 1.5}}',
     "history_retention_seconds must be an integer"),
    (b'{"project": {"history_retention_seconds": -1}}', "must not be negative"),
    (b'{"project": {"name": 5}}', "project.name must be a string"),
]


@pytest.mark.parametrize(("raw", "words"), BAD_PATCHES)
def test_bad_project_patches_are_400_and_change_nothing(neon_env, raw, words):
    before = project_now(neon_env)
    got, ctype, data, _ = raw_request(neon_env, "PATCH", PROJECT, raw)
    body = neon_error(got, ctype, data)
    assert got == 400 and words in body["message"], body
    after = project_now(neon_env)
    assert {k: v for k, v in after.items() if k != "updated_at"} == \
        {k: v for k, v in before.items() if k != "updated_at"}


@pytest.mark.parametrize(("raw", "words"), [
    (b'{"branch": []}', "body.branch must be an object"),
    (b'{"branch": {"parent_timestamp": 12}}', "branch.parent_timestamp must be a string"),
    (b'{"branch": {"name": ["x"]}}', "branch.name must be a string"),
    (b'{"endpoints": {"type": "read_write"}}', "body.endpoints must be an array"),
    (b'{"branch": {"parent_timestamp": "yesterday"}}', "invalid parent_timestamp"),
    (b'{"branch": {"parent_timestamp": "2026-01-01T00:00:00"}}', "needs a time zone"),
    (b'{"branch": {"parent_id": "br-none"}}', "branch br-none not found"),
])
def test_bad_branch_requests_are_4xx_and_make_no_branch(neon_env, raw, words):
    before = neon_env.api("GET", f"{PROJECT}/branches")[1]["branches"]
    got, ctype, data, _ = raw_request(neon_env, "POST", f"{PROJECT}/branches", raw)
    body = neon_error(got, ctype, data)
    assert words in body["message"], body
    assert neon_env.api("GET", f"{PROJECT}/branches")[1]["branches"] == before


MAIN = "br-casera-local-main"


@pytest.mark.parametrize(("raw", "status", "words"), [
    (b'{}', 400, "body.source_branch_id is required"),
    (b'{"source_branch_id": 7}', 400, "source_branch_id must be a string"),
    (b'{"source_branch_id": "br-none", "source_timestamp": "2026-01-01T00:00:00Z",'
     b' "preserve_under_name": "x"}', 404, "branch br-none not found"),
    (b'{"source_branch_id": "' + MAIN.encode() + b'", "preserve_under_name": "x"}', 400,
     "source_timestamp or source_lsn is required"),
    (b'{"source_branch_id": "' + MAIN.encode() + b'", "source_timestamp": '
     b'"2026-01-01T00:00:00Z"}', 400, "preserve_under_name is required"),
    (b'{"source_branch_id": "' + MAIN.encode() + b'", "source_timestamp": '
     b'"2999-01-01T00:00:00Z", "preserve_under_name": "x"}', 400, "is in the future"),
    (b'{"source_branch_id": "' + MAIN.encode() + b'", "source_timestamp": '
     b'"2000-01-01T00:00:00Z", "preserve_under_name": "x"}', 400, "history retention"),
    (b'{"source_branch_id": "' + MAIN.encode() + b'", "source_timestamp": "soon", '
     b'"preserve_under_name": "x"}', 400, "invalid source_timestamp"),
    (b'{"source_branch_id": "' + MAIN.encode() + b'", "source_lsn": "0/16B3748", '
     b'"preserve_under_name": "x"}', 400, "source_lsn is not supported"),
])
def test_bad_restore_requests_are_4xx_and_change_nothing(neon_env, raw, status, words):
    before = neon_env.api("GET", f"{PROJECT}/branches")[1]["branches"]
    got, ctype, data, _ = raw_request(neon_env, "POST", f"{PROJECT}/branches/{MAIN}/restore",
                                      raw)
    body = neon_error(got, ctype, data)
    assert got == status and words in body["message"], body
    assert neon_env.api("GET", f"{PROJECT}/branches")[1]["branches"] == before


def test_a_content_length_that_is_not_a_number_is_400(neon_env):
    answer = _raw_exchange(neon_env, (
        f"PATCH {urlparse(neon_env.api_url).path}{PROJECT} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {neon_env.api_key}\r\nContent-Length: lots\r\n\r\n{{}}"
    ).encode())
    head, _, data = answer.partition(b"\r\n\r\n")
    assert int(head.split()[1]) == 400 and b"application/json" in head, head
    assert "is not a byte count" in neon_error(400, "application/json", data)["message"]


def _raw_exchange(env, request: bytes) -> bytes:
    url = urlparse(env.api_url)
    return raw_exchange(url.port, request, url.hostname)


def test_a_malformed_request_line_gets_json_not_html(neon_env):
    # An unreadable version is answered the HTTP/0.9 way (no status line, body only), and
    # that body is still Neon's JSON.
    answer = _raw_exchange(neon_env, b"GET /api/v2/projects HTTP/9.x\r\n\r\n")
    assert b"<html" not in answer.lower() and b"<!doctype" not in answer.lower(), answer
    body = json.loads(answer)
    assert set(body) == {"code", "message"} and "Bad request version" in body["message"]


def test_too_many_headers_get_a_json_431(neon_env):
    headers = "".join(f"X-Filler-{i}: {i}\r\n" for i in range(120))
    answer = _raw_exchange(neon_env, f"GET /api/v2/projects HTTP/1.1\r\nHost: x\r\n"
                                     f"{headers}\r\n".encode())
    head, _, data = answer.partition(b"\r\n\r\n")
    assert int(head.split()[1]) == 431, head
    assert b"application/json" in head, head
    neon_error(431, "application/json", data)


def test_plan_switch_is_checked_and_reversible(neon_env):
    got, ctype, data, _ = raw_request(neon_env, "POST", "/_emulator/plan", b'{"plan": "gold"}')
    assert "plan must be one of launch, scale" in neon_error(got, ctype, data)["message"]
    got, ctype, data, _ = raw_request(neon_env, "POST", "/_emulator/plan", b"{}")
    assert "body.plan is required" in neon_error(got, ctype, data)["message"]
    got, ctype, data, _ = raw_request(neon_env, "POST", "/_emulator/plan",
                                      b'{"plan": "scale"}', token=False)
    assert neon_error(got, ctype, data) and got == 401
    assert project_now(neon_env)["owner"]["subscription_type"] == "launch"

    status, body = neon_env.api("POST", "/_emulator/plan", {"plan": "scale"})
    try:
        assert status == 200 and body["changes"], body
        assert project_now(neon_env)["owner"]["subscription_type"] == "scale"
        status, body = neon_env.api("PATCH", PROJECT, {"project": {"settings": {
            "allowed_ips": {"ips": ["10.99.0.1"]}}}})
        assert status == 200, body
        # Launch has no IP Allow: the switch back waits until the list is cleared.
        status, body = neon_env.api("POST", "/_emulator/plan", {"plan": "launch"})
        assert status == 400 and "clear it first" in body["message"], body
        assert project_now(neon_env)["owner"]["subscription_type"] == "scale"
    finally:
        neon_env.api("PATCH", PROJECT, {"project": {"settings": {"allowed_ips": {"ips": []}}}})
        status, body = neon_env.api("POST", "/_emulator/plan", {"plan": "launch"})
    assert status == 200, body
    assert project_now(neon_env)["owner"]["subscription_type"] == "launch"
    status, body = neon_env.api("POST", "/_emulator/plan", {"plan": "launch"})
    assert status == 200 and body["changes"] == [], body
