"""HTTP layer: auth, routing, fault injection, JSON in and out. Resource logic lives in the
resource modules; this file only decides which handler answers."""

from __future__ import annotations

import hmac
import json
import logging
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from casera_localcloud.hetzner import (
    actions,
    certificates,
    firewalls,
    load_balancers,
    offers,
    servers,
    ssh_keys,
)
from casera_localcloud.hetzner.actions import ActionRunner
from casera_localcloud.hetzner.app import (
    DEFAULT_FIRST_NODE_HOST,
    DEFAULT_LB_PORTS,
    DEFAULT_NODE_NETWORK,
    ApiRequest,
    Emulator,
    Handler,
    Response,
)
from casera_localcloud.hetzner.backend import LoadBalancerBackend, NodeBackend
from casera_localcloud.hetzner.errors import ApiError
from casera_localcloud.hetzner.faults import Faults
from casera_localcloud.hetzner.lb_proxy import LoadBalancerProxies
from casera_localcloud.hetzner.store import Store
from casera_localcloud.hetzner.validation import validate_body
from casera_localcloud.http_server import BaseEmulatorServer, JsonHandler

log = logging.getLogger(__name__)
BASE_PATH = "/v1"
# Called with (method, route template or None, status, body) after every answer; tests use
# it to check each answer against the OpenAPI spec, whose paths are the same templates.
ResponseHook = Callable[[str, str | None, int, dict[str, Any] | None], None]


def _faults(app: Emulator, req: ApiRequest) -> Response:
    if req.method == "POST":
        return 200, {"faults": app.faults.update(req.body)}
    if req.method == "DELETE":
        return 200, {"faults": app.faults.reset()}
    return 200, {"faults": app.faults.as_dict()}


def _resource_routes(path: str, kind: str, table: str) -> list[tuple[str, str, Handler]]:
    list_for, get_for = actions.resource_actions(kind, table)
    return [("GET", f"{path}/{{id}}/actions", list_for),
            ("GET", f"{path}/{{id}}/actions/{{action_id}}", get_for)]


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/actions", actions.list_actions),
    ("GET", "/actions/{id}", actions.get_action),
    ("GET", "/locations", offers.list_locations),
    ("GET", "/locations/{id}", offers.get_location),
    ("GET", "/datacenters", offers.list_datacenters),
    ("GET", "/datacenters/{id}", offers.get_datacenter),
    ("GET", "/server_types", offers.list_server_types),
    ("GET", "/server_types/{id}", offers.get_server_type),
    ("GET", "/load_balancer_types", offers.list_load_balancer_types),
    ("GET", "/load_balancer_types/{id}", offers.get_load_balancer_type),
    ("GET", "/images", offers.list_images),
    ("GET", "/images/{id}", offers.get_image),
    ("GET", "/pricing", offers.get_pricing),
    ("GET", "/ssh_keys", ssh_keys.list_ssh_keys),
    ("POST", "/ssh_keys", ssh_keys.create_ssh_key),
    ("GET", "/ssh_keys/{id}", ssh_keys.get_ssh_key),
    ("PUT", "/ssh_keys/{id}", ssh_keys.update_ssh_key),
    ("DELETE", "/ssh_keys/{id}", ssh_keys.delete_ssh_key),
    ("GET", "/servers", servers.list_servers),
    ("POST", "/servers", servers.create_server),
    ("GET", "/servers/{id}", servers.get_server),
    ("PUT", "/servers/{id}", servers.update_server),
    ("DELETE", "/servers/{id}", servers.delete_server),
    *[("POST", f"/servers/{{id}}/actions/{verb}", servers.power_action(verb))
      for verb in ("poweron", "poweroff", "shutdown", "reboot", "reset")],
    *_resource_routes("/servers", "server", "servers"),
    ("GET", "/firewalls", firewalls.list_firewalls),
    ("POST", "/firewalls", firewalls.create_firewall),
    ("GET", "/firewalls/{id}", firewalls.get_firewall),
    ("PUT", "/firewalls/{id}", firewalls.update_firewall),
    ("DELETE", "/firewalls/{id}", firewalls.delete_firewall),
    ("POST", "/firewalls/{id}/actions/set_rules", firewalls.set_rules),
    ("POST", "/firewalls/{id}/actions/apply_to_resources", firewalls.apply_to_resources),
    ("POST", "/firewalls/{id}/actions/remove_from_resources", firewalls.remove_from_resources),
    *_resource_routes("/firewalls", "firewall", "firewalls"),
    ("GET", "/load_balancers", load_balancers.list_load_balancers),
    ("POST", "/load_balancers", load_balancers.create_load_balancer),
    ("GET", "/load_balancers/{id}", load_balancers.get_load_balancer),
    ("PUT", "/load_balancers/{id}", load_balancers.update_load_balancer),
    ("DELETE", "/load_balancers/{id}", load_balancers.delete_load_balancer),
    *[("POST", f"/load_balancers/{{id}}/actions/{verb}", getattr(load_balancers, verb))
      for verb in ("add_service", "update_service", "delete_service", "add_target",
                   "remove_target")],
    *_resource_routes("/load_balancers", "load_balancer", "load_balancers"),
    ("GET", "/certificates", certificates.list_certificates),
    ("POST", "/certificates", certificates.create_certificate),
    ("GET", "/certificates/{id}", certificates.get_certificate),
    ("PUT", "/certificates/{id}", certificates.update_certificate),
    ("DELETE", "/certificates/{id}", certificates.delete_certificate),
    # The emulator's own endpoints (not Hetzner's): fault injection for tests.
    ("GET", "/_emulator/faults", _faults),
    ("POST", "/_emulator/faults", _faults),
    ("DELETE", "/_emulator/faults", _faults),
]
_ADMIN_PREFIX = "/_emulator/"


def _compile(template: str) -> re.Pattern[str]:
    # Only "/" splits segments; "{x}" matches one segment, so /servers/{id}/actions never
    # swallows /servers/{id}/actions/poweroff.
    return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$")


_COMPILED = [(method, template, _compile(template), handler)
             for method, template, handler in ROUTES]


def route(method: str, path: str) -> tuple[str, Handler, dict[str, str]]:
    path_exists = False
    for route_method, template, pattern, handler in _COMPILED:
        if m := pattern.match(path):
            if route_method == method:
                return template, handler, m.groupdict()
            path_exists = True
    if path_exists:
        # Hetzner's documented codes (docs.hetzner.cloud "Errors"; the list in hcloud-go
        # hcloud/error.go) have no method_not_allowed, so a route without this method is
        # answered as a route that does not exist.
        raise ApiError("not_found", f"{method} {path} is not an endpoint of this API")
    raise ApiError("not_found", f"no such endpoint: {path}")


class EmulatorHTTPServer(BaseEmulatorServer):
    def __init__(self, app: Emulator, host: str, port: int, token: str,
                 on_response: ResponseHook | None = None) -> None:
        self.app, self.token, self.on_response = app, token, on_response
        super().__init__((host, port), _RequestHandler)

    def shutdown_all(self) -> None:
        """Stop serving, let running actions end, close the LB proxies."""
        self.shutdown()
        self.server_close()
        self.app.actions.wait_idle(timeout=30)
        self.app.store.save()
        self.app.proxies.close()


class _RequestHandler(JsonHandler):
    server: EmulatorHTTPServer

    def refusal(self, code: int, message: str | None,
                explain: str | None) -> tuple[int, object]:
        """Hetzner's JSON error shape; its documented codes have no method_not_allowed, so
        a method without a ``do_*`` (501) is an endpoint that does not exist."""
        error_code = {404: "not_found", 501: "not_found"}.get(code, "invalid_input")
        status = 404 if code == 501 else code
        return status, ApiError(error_code, message or explain or "bad request",
                                status=status).body()

    def answer_headers(self) -> dict[str, str]:
        return {"X-Correlation-Id": uuid.uuid4().hex[:16]}

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        log.debug("%s " + format, self.address_string(), *args)

    def dispatch(self) -> None:
        method = self.command
        url = urlsplit(self.path)
        template: str | None = None
        try:
            raw = self._body()
            if not url.path.startswith(BASE_PATH + "/"):
                raise ApiError("not_found", f"no such endpoint: {url.path}")
            self._authenticate()
            path = url.path[len(BASE_PATH):]
            template, handler, params = route(method, path)
            if not path.startswith(_ADMIN_PREFIX):
                self.server.app.faults.check_request(method)  # before any state is touched
            body = self._json(raw)
            if not path.startswith(_ADMIN_PREFIX):
                validate_body(method, template, body)
            req = ApiRequest(method, params, parse_qs(url.query), body)
            status, body = handler(self.server.app, req)
        except ApiError as exc:
            status, body = exc.status, exc.body()
        except Exception as exc:  # noqa: BLE001 - answer like Hetzner, keep the traceback
            log.exception("%s %s failed", method, self.path)
            status, body = 500, ApiError("server_error", f"{type(exc).__name__}: {exc}").body()
        self.send_json(status, body)
        if method != "GET":  # the log says what was changed, not what was read
            log.info("%s %s -> %d", method, url.path, status)
        if self.server.on_response:
            self.server.on_response(method, template, status, body)

    def _body(self) -> bytes:
        length = self.body_length()
        if length is None:
            self.close_connection = True  # the rest of the stream cannot be framed
            raise ApiError("invalid_input", f"Content-Length "
                           f"{self.headers.get('Content-Length')!r} is not a number")
        return self.rfile.read(length)

    def _authenticate(self) -> None:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme != "Bearer" or not hmac.compare_digest(token.encode(),
                                                         self.server.token.encode()):
            raise ApiError("unauthorized", "unable to authenticate", status=401)

    @staticmethod
    def _json(raw: bytes) -> dict[str, Any]:
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise ApiError("json_error", f"request body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise ApiError("json_error", "request body must be a JSON object")
        return body


def create_app(state_dir: Path | None, nodes: NodeBackend,
               proxies: LoadBalancerBackend | None = None,
               node_network: str = DEFAULT_NODE_NETWORK,
               first_node_host: int = DEFAULT_FIRST_NODE_HOST,
               lb_ports: range = DEFAULT_LB_PORTS, lb_host: str = "127.0.0.1",
               lb_public_network: str | None = None) -> Emulator:
    """Load the state (if any), settle what a previous run left half-done, restart the LB
    proxies. ``state_dir`` None keeps everything in memory."""
    store = Store(state_dir)
    faults = Faults.from_config(state_dir)
    runner = ActionRunner(store, faults)
    app = Emulator(store=store, nodes=nodes,
                   proxies=proxies or LoadBalancerProxies(lb_host), faults=faults,
                   actions=runner, node_network=node_network, first_node_host=first_node_host,
                   lb_ports=lb_ports, lb_host=lb_host, lb_public_network=lb_public_network)
    runner.fail_interrupted()
    servers.recover(app)
    load_balancers.sync_load_balancers(app)
    store.save()
    return app
