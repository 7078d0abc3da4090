"""/load_balancers: the API side of the load balancer; lb_proxy.py moves the bytes.

Each service gets a port of its own on the host (``emulator_listen_port``, from
127.0.0.1:18100-18199), because many LBs cannot all listen on 80 of one address. The port is
reported on the service object and in ``casera local status``; ``public_net.ipv4.ip`` is
127.0.0.1.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from casera_localcloud.hetzner import catalog, certificates
from casera_localcloud.hetzner.app import (
    ApiRequest,
    Emulator,
    Response,
    filtered,
    now,
    page,
    require,
    sorted_by_request,
    update_name_and_labels,
)
from casera_localcloud.hetzner.backend import ProxyHealthCheck, ProxyService
from casera_localcloud.hetzner.errors import ApiError, invalid_field, not_found, uniqueness
from casera_localcloud.hetzner.labels import parse_selector, validate_labels
from casera_localcloud.hetzner.store import public

_HTTP_DEFAULTS = {"cookie_name": "HCLBSTICKY", "cookie_lifetime": 300, "certificates": [],
                  "redirect_http": False, "sticky_sessions": False, "timeout_idle": 60}
_HEALTH_HTTP_DEFAULTS = {"domain": None, "path": "/", "response": "",
                         "status_codes": ["2??", "3??"], "tls": False}


def _known(raw: dict[str, Any], allowed: tuple[str, ...], where: str,
           skip: str | tuple[str, ...] = ()) -> dict[str, Any]:
    """The given keys minus ``skip``; an unknown key is invalid input, not silently stored
    (it would then break the answer's schema)."""
    if not isinstance(raw, dict):
        raise invalid_field(where, "must be an object")
    unknown = set(raw) - set(allowed)
    if unknown:
        raise invalid_field(where, f"unknown fields: {', '.join(sorted(unknown))}")
    return {k: v for k, v in raw.items() if k not in skip}


def _port(value: object, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise invalid_field(field, "must be a port number (1-65535)")
    return value


def _health_check(raw: object, service: dict[str, Any], current: dict[str, Any] | None,
                  where: str) -> dict[str, Any]:
    """A complete health check: hcloud-python reads every key of it."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise invalid_field(where, "must be an object")
    check = dict(current or {"protocol": "http" if service["protocol"] != "tcp" else "tcp",
                             "port": service["destination_port"], "interval": 15,
                             "timeout": 10, "retries": 3})
    check.update(_known(raw, ("protocol", "port", "interval", "timeout", "retries", "http"),
                        where, skip="http"))
    if check["protocol"] not in ("tcp", "http"):
        raise invalid_field(f"{where}.protocol", "must be 'tcp' or 'http'")
    _port(check["port"], f"{where}.port")
    for key in ("interval", "timeout"):
        if not isinstance(check[key], int) or check[key] < 1:
            raise invalid_field(f"{where}.{key}", "must be a positive integer")
    # Hetzner refuses 0 (and more than 5): "[health_check.healthCheckRetries => [Must be
    # between 1 and 5.]]" (hetznercloud/terraform-provider-hcloud#1162, 2025).
    if not isinstance(check["retries"], int) or not 1 <= check["retries"] <= 5:
        raise invalid_field(f"{where}.retries", "Must be between 1 and 5.")
    if check["protocol"] == "http":
        given = _known(raw.get("http") or {}, tuple(_HEALTH_HTTP_DEFAULTS), f"{where}.http")
        check["http"] = {**_HEALTH_HTTP_DEFAULTS, **(check.get("http") or {}), **given}
    else:
        check.pop("http", None)
    return check


def _service(app: Emulator, raw: object, where: str,
             current: dict[str, Any] | None = None) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise invalid_field(where, "must be an object")
    service = dict(current or {"proxyprotocol": False})
    service.update(_known(raw, ("protocol", "listen_port", "destination_port",
                                "proxyprotocol", "health_check", "http"), where,
                          skip=("health_check", "http")))
    if service.get("protocol") not in ("tcp", "http", "https"):
        raise invalid_field(f"{where}.protocol", "must be 'tcp', 'http' or 'https'")
    default_port = 443 if service["protocol"] == "https" else 80
    service["listen_port"] = _port(service.get("listen_port", default_port),
                                   f"{where}.listen_port")
    service["destination_port"] = _port(service.get("destination_port",
                                                    service["listen_port"]),
                                        f"{where}.destination_port")
    if not isinstance(service["proxyprotocol"], bool):
        raise invalid_field(f"{where}.proxyprotocol", "must be a boolean")
    if service["protocol"] in ("http", "https"):
        given = _known(raw.get("http") or {}, tuple(_HTTP_DEFAULTS), f"{where}.http")
        service["http"] = {**_HTTP_DEFAULTS, **(service.get("http") or {}), **given}
        _check_http(app, service, f"{where}.http")
    else:
        service.pop("http", None)
    service["health_check"] = _health_check(raw.get("health_check"), service,
                                            (current or {}).get("health_check"),
                                            f"{where}.health_check")
    if app.lb_public_network:
        service["emulator_listen_port"] = service["listen_port"]
    elif "emulator_listen_port" not in service:
        service["emulator_listen_port"] = app.allocate_lb_port()
    return service


def _check_http(app: Emulator, service: dict[str, Any], where: str) -> None:
    """Hetzner's rules for the ``http`` block (API reference, "Load Balancers", service
    ``http``): certificates terminate TLS, so only an https service has (and needs) them;
    ``redirect_http`` (port 80 answers with a redirect to https) exists only on https."""
    http = service["http"]
    certs = http["certificates"]
    if not isinstance(certs, list) or not all(isinstance(c, int) and not isinstance(c, bool)
                                              for c in certs):
        raise invalid_field(f"{where}.certificates", "must be a list of certificate IDs")
    if not isinstance(http["redirect_http"], bool):
        raise invalid_field(f"{where}.redirect_http", "must be a boolean")
    if service["protocol"] == "https":
        if not certs:
            raise invalid_field(f"{where}.certificates",
                                "an https service needs at least one certificate")
        for cert_id in certs:
            certificates.find(app, cert_id, f"{where}.certificates")
    else:
        if certs:
            raise invalid_field(f"{where}.certificates", "only an https service takes "
                                "certificates")
        if http["redirect_http"]:
            raise invalid_field(f"{where}.redirect_http", "only an https service can "
                                "redirect http")


def _target(app: Emulator, raw: object, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict) or raw.get("type") not in ("server", "label_selector", "ip"):
        raise invalid_field(f"{where}.type", "must be 'server', 'label_selector' or 'ip'")
    if raw.get("use_private_ip"):
        raise invalid_field(f"{where}.use_private_ip", "the local cloud has no private networks")
    if raw["type"] == "server":
        server = app.store.get("servers", (raw.get("server") or {}).get("id"))
        return {"type": "server", "server": {"id": server["id"]}, "use_private_ip": False}
    if raw["type"] == "label_selector":
        selector = (raw.get("label_selector") or {}).get("selector")
        if not isinstance(selector, str) or not selector:
            raise invalid_field(f"{where}.label_selector", "selector is required")
        parse_selector(selector)
        return {"type": "label_selector", "label_selector": {"selector": selector},
                "use_private_ip": False}
    ip = (raw.get("ip") or {}).get("ip")
    try:
        ipaddress.ip_address(ip)
    except (TypeError, ValueError):
        raise invalid_field(f"{where}.ip", "must be an IP address") from None
    return {"type": "ip", "ip": {"ip": ip}}


def _target_key(target: dict[str, Any]) -> tuple[str, str]:
    kind = target["type"]
    inner = target[kind]
    return kind, str(inner.get("id") or inner.get("selector") or inner.get("ip"))


def _servers_of(app: Emulator, target: dict[str, Any]) -> list[dict[str, Any]]:
    servers = app.store.table("servers")
    if target["type"] == "server":
        found = servers.get(target["server"]["id"])
        return [found] if found else []
    if target["type"] == "label_selector":
        match = parse_selector(target["label_selector"]["selector"])
        return [s for _, s in sorted(servers.items()) if match(s["labels"])]
    return []


def _target_ips(app: Emulator, lb: dict[str, Any]) -> tuple[list[str], list[int]]:
    ips: list[str] = []
    server_ids: list[int] = []
    for target in lb["targets"]:
        if target["type"] == "ip":
            ips.append(target["ip"]["ip"])
            continue
        for server in _servers_of(app, target):
            if server.get("_node_ready") and server["id"] not in server_ids:
                server_ids.append(server["id"])
                ips.append(server["public_net"]["ipv4"]["ip"])
    return list(dict.fromkeys(ips)), server_ids


def _tls(app: Emulator, svc: dict[str, Any]) -> tuple[str, str] | None:
    """(certificate chain PEM, private key PEM) an https service serves: its first
    certificate (the local LB does no SNI choice among several)."""
    if svc["protocol"] != "https":
        return None
    cert = app.store.table("certificates").get(svc["http"]["certificates"][0])
    return (cert["certificate"], cert["_private_key"]) if cert else None


def redirect_port(app: Emulator, lb: dict[str, Any]) -> int | None:
    """Where the LB answers plain http with a redirect: port 80 on its own address, or a
    port of the emulator's range (kept in ``_redirect_port`` of the LB)."""
    if not any(s["protocol"] == "https" and s["http"]["redirect_http"] for s in lb["services"]):
        lb.pop("_redirect_port", None)
        return None
    if app.lb_public_network:
        return 80
    if "_redirect_port" not in lb:
        lb["_redirect_port"] = app.allocate_lb_port()
    return int(lb["_redirect_port"])


def proxy_services(app: Emulator, lb: dict[str, Any]) -> list[ProxyService]:
    ips, _ = _target_ips(app, lb)
    result = []
    listen_host = lb["public_net"]["ipv4"]["ip"] if app.lb_public_network else None
    if (port := redirect_port(app, lb)) is not None:
        result.append(ProxyService(
            local_port=port, listen_port=80, destination_port=443, listen_host=listen_host,
            health_check=ProxyHealthCheck(protocol="tcp", port=443, interval=15, timeout=10,
                                          retries=3),
            redirect_to_https=True))
    for svc in lb["services"]:
        check = svc["health_check"]
        http = check.get("http") or _HEALTH_HTTP_DEFAULTS
        tls = _tls(app, svc)
        result.append(ProxyService(
            tls_certificate=tls[0] if tls else None, tls_private_key=tls[1] if tls else None,
            local_port=svc["emulator_listen_port"], listen_port=svc["listen_port"],
            listen_host=lb["public_net"]["ipv4"]["ip"] if app.lb_public_network else None,
            destination_port=svc["destination_port"], target_ips=tuple(ips),
            proxyprotocol=svc["proxyprotocol"],
            health_check=ProxyHealthCheck(
                protocol=check["protocol"], port=check["port"], interval=check["interval"],
                timeout=check["timeout"], retries=check["retries"], http_path=http["path"],
                http_domain=http["domain"], http_response=http["response"] or "",
                http_status_codes=tuple(http["status_codes"]))))
    return result


def sync_load_balancers(app: Emulator) -> None:
    """Re-resolve every LB's targets (labels and servers change) and reconfigure proxies."""
    with app.store.lock:
        for lb_id, lb in app.store.table("load_balancers").items():
            lb["_resolved_server_ids"] = _target_ips(app, lb)[1]
            app.proxies.configure(lb_id, proxy_services(app, lb))


def forget_server_targets(app: Emulator, server_id: int) -> None:
    """A deleted server stops being a target (Hetzner removes it)."""
    for lb in app.store.table("load_balancers").values():
        lb["targets"] = [t for t in lb["targets"]
                         if not (t["type"] == "server" and t["server"]["id"] == server_id)]


def render(app: Emulator, lb: dict[str, Any]) -> dict[str, Any]:
    out = public(lb)
    health = app.proxies.health(lb["id"])

    def status_of(ip: str | None) -> list[dict[str, Any]]:
        return [{"listen_port": svc["listen_port"],
                 "status": health.get((svc["emulator_listen_port"], ip or ""), "unknown")}
                for svc in lb["services"]]

    servers = app.store.table("servers")
    for target in out["targets"]:
        if target["type"] == "server":
            server = servers.get(target["server"]["id"])
            target["health_status"] = status_of(
                server["public_net"]["ipv4"]["ip"] if server else None)
        elif target["type"] == "ip":
            target["health_status"] = status_of(target["ip"]["ip"])
        else:
            target["targets"] = [
                {"type": "server", "server": {"id": s["id"]}, "use_private_ip": False,
                 "health_status": status_of(s["public_net"]["ipv4"]["ip"])}
                for s in _servers_of(app, target)]
    return out


def _get(app: Emulator, req: ApiRequest) -> dict[str, Any]:
    return app.store.get("load_balancers", req.path_params["id"])


def _changed(app: Emulator, lb: dict[str, Any], command: str) -> Response:
    """Apply a change to the proxies and answer with its (already finished) action."""
    sync_load_balancers(app)
    action = app.actions.create(command, [("load_balancer", lb["id"])])
    app.actions.finish(action)
    return 201, {"action": public(action)}


def create_load_balancer(app: Emulator, req: ApiRequest) -> Response:
    body = req.body
    name = require(body, "name")
    lb_type = catalog.find(catalog.LOAD_BALANCER_TYPES,
                           require(body, "load_balancer_type", (str, int)))
    if lb_type is None:
        raise not_found("load balancer type", body["load_balancer_type"])
    location = catalog.find(catalog.LOCATIONS, body.get("location") or "fsn1")
    if location is None:
        raise not_found("location", body.get("location"))
    if body.get("network"):
        raise invalid_field("network", "the local cloud has no private networks")
    algorithm = (body.get("algorithm") or {}).get("type", "round_robin")
    if algorithm != "round_robin":
        raise invalid_field("algorithm", "the local cloud balances round_robin only")
    with app.store.lock:
        if app.store.find_by_name("load_balancers", name):
            raise uniqueness("name")
        lb: dict[str, Any] = {
            "id": app.store.new_id(), "name": name, "created": now(),
            "labels": validate_labels(body.get("labels")), "load_balancer_type": lb_type,
            "location": location, "algorithm": {"type": algorithm},
            "public_net": {"enabled": body.get("public_interface", True) is not False,
                           "ipv4": {"ip": app.allocate_lb_ip(), "dns_ptr": "lb.local.casera"},
                           "ipv6": {"ip": None, "dns_ptr": None}},
            "private_net": [], "protection": {"delete": False}, "services": [],
            "targets": [], "included_traffic": lb_type["prices"][0]["included_traffic"],
            "ingoing_traffic": 0, "outgoing_traffic": 0,
        }
        app.store.table("load_balancers")[lb["id"]] = lb  # before allocating ports
        try:
            for i, raw in enumerate(body.get("services") or []):
                _add_service(app, lb, raw, f"services[{i}]")
            for i, raw in enumerate(body.get("targets") or []):
                _add_target(app, lb, raw, f"targets[{i}]")
        except ApiError:
            del app.store.table("load_balancers")[lb["id"]]
            raise
        sync_load_balancers(app)
        action = app.actions.create("create_load_balancer", [("load_balancer", lb["id"])])
        app.actions.finish(action)
        result = {"load_balancer": render(app, lb), "action": public(action)}
    app.store.save()
    return 201, result


def list_load_balancers(app: Emulator, req: ApiRequest) -> Response:
    with app.store.lock:
        items = sorted_by_request(req, filtered(req, app.store.table("load_balancers").values()))
        return 200, page(req, "load_balancers", [render(app, lb) for lb in items])


def get_load_balancer(app: Emulator, req: ApiRequest) -> Response:
    with app.store.lock:
        return 200, {"load_balancer": render(app, _get(app, req))}


def update_load_balancer(app: Emulator, req: ApiRequest) -> Response:
    with app.store.lock:
        lb = _get(app, req)
        update_name_and_labels(app, "load_balancers", lb, req.body)
        body = {"load_balancer": render(app, lb)}
    app.store.save()
    return 200, body


def delete_load_balancer(app: Emulator, req: ApiRequest) -> Response:
    # hcloud 2.27 reads an action from this answer (the API now returns one); the OpenAPI
    # copy in the tests still says 204, so the tests allow this one difference.
    with app.store.lock:
        lb = _get(app, req)
        del app.store.table("load_balancers")[lb["id"]]
        app.proxies.remove(lb["id"])
        action = app.actions.create("delete_load_balancer", [("load_balancer", lb["id"])])
        app.actions.finish(action)
    app.store.save()
    return 200, {"action": public(action)}


def _add_service(app: Emulator, lb: dict[str, Any], raw: object, where: str) -> None:
    service = _service(app, raw, where)
    if any(s["listen_port"] == service["listen_port"] for s in lb["services"]):
        raise ApiError("source_port_already_used",
                       f"listen_port {service['listen_port']} is already used")
    _check_redirect_port([*lb["services"], service])
    lb["services"].append(service)


def _check_redirect_port(services: list[dict[str, Any]]) -> None:
    """``redirect_http`` takes port 80 for the redirect: no other service may listen there."""
    if any(s["protocol"] == "https" and s["http"]["redirect_http"] for s in services) and \
            any(s["listen_port"] == 80 for s in services):
        raise ApiError("source_port_already_used", "listen_port 80 is used by the http "
                       "redirect of an https service (redirect_http)")


def _add_target(app: Emulator, lb: dict[str, Any], raw: object, where: str) -> None:
    target = _target(app, raw, where)
    if any(_target_key(t) == _target_key(target) for t in lb["targets"]):
        raise ApiError("target_already_defined", f"target {_target_key(target)} already exists")
    lb["targets"].append(target)


def _action(app: Emulator, req: ApiRequest, command: str,
            change: Callable[[dict[str, Any]], None]) -> Response:
    """POST /load_balancers/{id}/actions/<command>: ``change`` the LB under the lock (it
    raises before changing anything when the request is wrong), then apply and answer."""
    with app.store.lock:
        lb = _get(app, req)
        change(lb)
        result = _changed(app, lb, command)
    app.store.save()
    return result


def _service_index(lb: dict[str, Any], port: object) -> int:
    index = next((i for i, s in enumerate(lb["services"]) if s["listen_port"] == port), None)
    if index is None:
        raise not_found("service with listen_port", port)
    return index


def add_service(app: Emulator, req: ApiRequest) -> Response:
    return _action(app, req, "add_service",
                   lambda lb: _add_service(app, lb, req.body, "service"))


def update_service(app: Emulator, req: ApiRequest) -> Response:
    def change(lb: dict[str, Any]) -> None:
        index = _service_index(lb, req.body.get("listen_port"))
        updated = _service(app, req.body, "service", lb["services"][index])
        _check_redirect_port([*lb["services"][:index], updated, *lb["services"][index + 1:]])
        lb["services"][index] = updated

    return _action(app, req, "update_service", change)


def delete_service(app: Emulator, req: ApiRequest) -> Response:
    def change(lb: dict[str, Any]) -> None:
        del lb["services"][_service_index(lb, req.body.get("listen_port"))]

    return _action(app, req, "delete_service", change)


def add_target(app: Emulator, req: ApiRequest) -> Response:
    return _action(app, req, "add_target", lambda lb: _add_target(app, lb, req.body, "target"))


def remove_target(app: Emulator, req: ApiRequest) -> Response:
    def change(lb: dict[str, Any]) -> None:
        if not isinstance(req.body, dict) or req.body.get("type") not in (
                "server", "label_selector", "ip"):
            raise invalid_field("type", "must be 'server', 'label_selector' or 'ip'")
        kind = req.body["type"]
        key = (kind, str((req.body.get(kind) or {}).get(
            {"server": "id", "label_selector": "selector", "ip": "ip"}[kind])))
        if not any(_target_key(t) == key for t in lb["targets"]):
            raise not_found("load balancer target", key[1])
        lb["targets"] = [t for t in lb["targets"] if _target_key(t) != key]

    return _action(app, req, "remove_target", change)
