"""HTTP front of the emulator: Cloudflare's v4 URLs, bearer auth and response envelope.

The ``cloudflare`` SDK builds ``base_url + path``, so with
``base_url="http://127.0.0.1:18004/client/v4"`` every call arrives under ``/client/v4``.
Answers always carry Content-Length: the SDK (httpx) keeps connections alive.
"""

from __future__ import annotations

import hmac
import logging
import re
import sys
import urllib.parse
from http import HTTPStatus
from pathlib import Path
from typing import Any

from casera_localcloud.cloudflare import errors
from casera_localcloud.cloudflare.api import CloudflareApi
from casera_localcloud.cloudflare.edge import Edge
from casera_localcloud.cloudflare.store import Store
from casera_localcloud.http_server import (
    BaseEmulatorServer,
    JsonHandler,
    serve_until_stopped,
    strict_json,
)

log = logging.getLogger("casera_localcloud.cloudflare")

API_PREFIX = "/client/v4"
HEALTH_PATH = "/_casera/health"
SERVICE_NAME = "casera-cloudflare-emulator"
BEARER = re.compile(r"^Bearer ([A-Za-z0-9_-]+)$")
ZONE_PATH = re.compile(r"^/zones/([^/]+)$")
RECORDS_PATH = re.compile(r"^/zones/([^/]+)/dns_records$")
RECORD_PATH = re.compile(r"^/zones/([^/]+)/dns_records/([^/]+)$")
SETTING_PATH = re.compile(r"^/zones/([^/]+)/settings/([^/]+)$")
ORIGIN_CERT_PATH = re.compile(r"^/certificates/([^/]+)$")
IPS_ADMIN_PATH = "/_casera/ips"
MAX_BODY = 1024 * 1024


class EmulatorServer(BaseEmulatorServer):
    def __init__(self, address: tuple[str, int], api: CloudflareApi) -> None:
        self.api = api
        self.edge = Edge(api.store)
        super().__init__(address, Handler)


class Handler(JsonHandler):
    server: EmulatorServer
    server_version = SERVICE_NAME

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        log.info("%s %s", self.address_string(), format % args)

    # Every method goes through routing (JsonHandler), so that an unknown URI answers
    # 7003/7000 and a known one 7001, as Cloudflare does (it answers a CORS preflight
    # OPTIONS with 7001).

    def refusal(self, code: int, message: str | None,
                explain: str | None) -> tuple[int, object]:
        if code == HTTPStatus.NOT_IMPLEMENTED:  # http.server's answer to an unknown method
            error = errors.method_not_allowed(str(self.command))
        else:
            error = errors.malformed_request(f"{message or code}"
                                             + (f" ({explain})" if explain else ""))
        return error.status, error.body()

    def dispatch(self) -> None:
        length = self.body_length()
        if length is None or length > MAX_BODY or self.headers.get("Transfer-Encoding"):
            # The body cannot be skipped reliably: answer and drop the connection.
            self.close_connection = True
            self.send_json(400, errors.malformed_json().body())
            return
        # Read it all before answering, so that an error answer leaves the kept-alive
        # connection positioned at the next request.
        raw = self.rfile.read(length) if length else b""
        try:
            status, payload = self._route(raw)
        except errors.CloudflareApiError as exc:
            status, payload = exc.status, exc.body()
        except Exception:  # noqa: BLE001 - a bug must answer 500, not kill the thread
            log.exception("internal error on %s %s", self.command, self.path.split("?")[0])
            status, payload = 500, errors.CloudflareApiError(
                500, 10001, "emulator internal error").body()
        self.send_json(status, payload)

    def _authenticate(self) -> None:
        header = self.headers.get("Authorization")
        if header is None:
            if self.headers.get("X-Auth-Key") or self.headers.get("X-Auth-Email"):
                raise errors.invalid_token()  # global API keys do not exist here
            raise errors.missing_auth()
        match = BEARER.match(header.strip())
        if not match:
            raise errors.bad_auth_header()
        token = match[1].encode()
        if not any(hmac.compare_digest(token, known.encode())
                   for known in self.server.api.store.tokens):
            raise errors.invalid_token()

    def _route(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        api = self.server.api
        if path == HEALTH_PATH and self.command == "GET":
            store = api.store
            return 200, {"service": SERVICE_NAME, "stateDir": str(store.state_dir),
                         "zones": sorted(z["name"] for z in store.zones.values()),
                         "records": len(store.records)}
        edge = self.server.edge
        if path == IPS_ADMIN_PATH:  # the emulator's own: tests change the published ranges
            self._authenticate()
            self._allow(self.command, "PUT")
            return _ok(edge.set_ips(_json_object(raw)))
        if path != API_PREFIX and not path.startswith(API_PREFIX + "/"):
            raise errors.no_route(path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        rest = path[len(API_PREFIX):].rstrip("/")
        method = self.command
        if rest == "/ips":  # published: Cloudflare answers it without a token
            self._allow(method, "GET")
            return _ok(edge.list_ips())
        self._authenticate()
        if match := SETTING_PATH.match(rest):
            self._allow(method, "GET", "PATCH")
            api.get_zone(match[1], path)  # an unknown zone is not routable
            if method == "GET":
                return _ok(edge.get_setting(match[1], match[2]))
            return _ok(edge.edit_setting(match[1], match[2], _json_object(raw)))
        if rest == "/certificates":
            self._allow(method, "GET", "POST")
            if method == "POST":
                return _ok(edge.create_certificate(_json_object(raw)))
            if not query.get("zone_id"):
                raise errors.CloudflareApiError(400, 1001, "zone_id is required")  # guess
            found = edge.list_certificates(query["zone_id"])
            # One page holds them all; the SDK asks for the next page until one is empty.
            page = found if query.get("page", "1") == "1" else []
            return _ok(page, {"page": int(query.get("page", "1") or 1),
                              "per_page": max(len(found), 1), "count": len(page),
                              "total_count": len(found), "total_pages": 1})
        if match := ORIGIN_CERT_PATH.match(rest):
            self._allow(method, "GET", "DELETE")
            if method == "GET":
                return _ok(edge.get_certificate(match[1]))
            return _ok(edge.revoke_certificate(match[1]))

        if rest == "/zones":
            self._allow(method, "GET")
            zones, info = api.list_zones(query)
            return _ok(zones, info)
        if match := ZONE_PATH.match(rest):
            self._allow(method, "GET")
            return _ok(api.get_zone(match[1], path))
        if match := RECORDS_PATH.match(rest):
            self._allow(method, "GET", "POST")
            if method == "GET":
                records, info = api.list_records(match[1], query, path)
                return _ok(records, info)
            return _ok(api.create_record(match[1], _json_object(raw), path))
        if match := RECORD_PATH.match(rest):
            self._allow(method, "GET", "PATCH", "PUT", "DELETE")
            zone_id, record_id = match[1], match[2]
            if method == "GET":
                return _ok(api.get_record(zone_id, record_id, path))
            if method == "DELETE":
                return _ok(api.delete_record(zone_id, record_id, path))
            return _ok(api.update_record(zone_id, record_id, _json_object(raw), path,
                                         replace=method == "PUT"))
        raise errors.no_route(path)

    @staticmethod
    def _allow(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise errors.method_not_allowed(method)


def _ok(result: object, info: dict[str, int] | None = None) -> tuple[int, dict[str, Any]]:
    payload: dict[str, Any] = {"success": True, "errors": [], "messages": [], "result": result}
    if info is not None:
        payload["result_info"] = info
    return 200, payload


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = strict_json(raw or b"{}")
    except (ValueError, RecursionError):  # bad syntax or UTF-8, NaN, 1e400, absurd nesting
        raise errors.malformed_json() from None
    if not isinstance(body, dict):
        raise errors.malformed_json()
    return body


def serve(port: int, state_dir: Path, host: str = "127.0.0.1", zones: list[str] | None = None,
          tokens: list[str] | None = None, allow_private_proxied: bool = False) -> None:
    """Run the emulator in the foreground until SIGINT or SIGTERM. ``zones`` and ``tokens``
    are added to the state if missing (never removed)."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    store = Store(state_dir)
    for token in tokens or []:
        store.ensure_token(token)
    for zone in zones or []:
        store.ensure_zone(zone)
    server = EmulatorServer((host, port), CloudflareApi(store, allow_private_proxied))
    log.info("Cloudflare emulator on http://%s:%d%s, state in %s", host, port, API_PREFIX,
             state_dir)
    try:
        serve_until_stopped(server)
    finally:
        log.info("Cloudflare emulator stopped")
