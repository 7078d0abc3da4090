"""/firewalls and their enforcement.

Which firewalls apply to a server is recomputed from scratch after every change that can
alter it (rules, apply_to, server labels, server creation and deletion), and a node is only
told when its union of inbound rules really changed. The backend call runs in a worker
thread; it reads the rules when it runs, so the last of two quick changes always wins.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from casera_localcloud.hetzner.actions import actions_response
from casera_localcloud.hetzner.app import (
    ApiRequest,
    Emulator,
    Response,
    filtered,
    node_name,
    now,
    page,
    require,
    sorted_by_request,
    update_name_and_labels,
)
from casera_localcloud.hetzner.errors import ApiError, invalid_field, uniqueness
from casera_localcloud.hetzner.labels import matches, parse_selector, validate_labels
from casera_localcloud.hetzner.store import public

PROTOCOLS = ("tcp", "udp", "icmp", "esp", "gre")
_PORT = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")
_UNSET = object()


def _validate_port(protocol: str, port: object, where: str) -> str | None:
    if protocol not in ("tcp", "udp"):
        if port not in (None, ""):
            raise invalid_field(where, f"port is not allowed for protocol {protocol}")
        return None
    if port == "any":
        return "any"
    m = _PORT.match(str(port)) if isinstance(port, str) else None
    if not m or not all(1 <= int(p) <= 65535 for p in m.groups() if p) or (
            m.group(2) and int(m.group(2)) < int(m.group(1))):
        raise invalid_field(where, f"port {port!r} must be 'N', 'N-M' or 'any' (1-65535)")
    return port  # type: ignore[return-value]


def _validate_cidrs(values: object, where: str) -> list[str]:
    if not isinstance(values, list):
        raise invalid_field(where, "must be a list of CIDRs")
    for value in values:
        try:
            ipaddress.ip_network(value, strict=True)
        except (TypeError, ValueError):
            raise invalid_field(where, f"{value!r} is not a network in CIDR notation") from None
    return list(values)


def normalize_rule(raw: object, index: int) -> dict[str, Any]:
    """A rule as Hetzner stores and returns it: every key present, so clients that read
    all six keys (hcloud-python does) never meet a KeyError."""
    where = f"rules[{index}]"
    if not isinstance(raw, dict):
        raise invalid_field(where, "must be an object")
    direction, protocol = raw.get("direction"), raw.get("protocol")
    if direction not in ("in", "out"):
        raise invalid_field(f"{where}.direction", "must be 'in' or 'out'")
    if protocol not in PROTOCOLS:
        raise invalid_field(f"{where}.protocol", f"must be one of {', '.join(PROTOCOLS)}")
    side = "source_ips" if direction == "in" else "destination_ips"
    ips = _validate_cidrs(raw.get(side), f"{where}.{side}")
    if not ips:
        raise invalid_field(f"{where}.{side}", "needs at least one network")
    description = raw.get("description")
    if description is not None and (not isinstance(description, str) or len(description) > 255):
        raise invalid_field(f"{where}.description", "must be a string of at most 255 chars")
    return {
        "direction": direction, "protocol": protocol,
        "port": _validate_port(protocol, raw.get("port"), f"{where}.port"),
        "source_ips": ips if direction == "in" else [],
        "destination_ips": ips if direction == "out" else [],
        "description": description,
    }


def _normalize_resource(app: Emulator, raw: object, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict) or raw.get("type") not in ("server", "label_selector"):
        raise invalid_field(where, "type must be 'server' or 'label_selector'")
    if raw["type"] == "server":
        server = app.store.get("servers", (raw.get("server") or {}).get("id"))
        return {"type": "server", "server": {"id": server["id"]}}
    selector = (raw.get("label_selector") or {}).get("selector")
    if not isinstance(selector, str) or not selector:
        raise invalid_field(f"{where}.label_selector", "selector is required")
    parse_selector(selector)
    return {"type": "label_selector", "label_selector": {"selector": selector}}


def applies_to(firewall: dict[str, Any], server: dict[str, Any]) -> bool:
    for resource in firewall["applied_to"]:
        if resource["type"] == "server" and resource["server"]["id"] == server["id"]:
            return True
        if resource["type"] == "label_selector" and matches(
                resource["label_selector"]["selector"], server["labels"]):
            return True
    return False


def inbound_rules_for(app: Emulator, server: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The union of inbound rules of all firewalls on ``server``; None when none applies."""
    applied = [fw for _, fw in sorted(app.store.table("firewalls").items())
               if applies_to(fw, server)]
    if not applied:
        return None
    return [dict(rule) for fw in applied for rule in fw["rules"] if rule["direction"] == "in"]


def firewalls_of(app: Emulator, server: dict[str, Any]) -> list[dict[str, Any]]:
    """``public_net.firewalls`` of a server: pending while its node is being told."""
    pending = server.get("_firewall_pending", 0) > 0 or not server.get("_node_ready")
    return [{"id": fw_id, "status": "pending" if pending else "applied"}
            for fw_id, fw in sorted(app.store.table("firewalls").items())
            if applies_to(fw, server)]


def sync_firewalls(app: Emulator) -> list[dict[str, Any]]:
    """Tell every node whose inbound rules changed; returns the started actions."""
    started = []
    with app.store.lock:
        for server in app.store.table("servers").values():
            if not server.get("_node_ready") or server["status"] != "running":
                # Creation and every start apply the rules themselves (then sync again),
                # and a stopped node cannot take them.
                continue
            desired = inbound_rules_for(app, server)
            if server.get("_applied_rules", _UNSET) == desired:
                continue
            server["_applied_rules"] = desired
            server["_firewall_pending"] = server.get("_firewall_pending", 0) + 1
            resources = [("server", server["id"])] + [
                ("firewall", f["id"]) for f in firewalls_of(app, server)]
            action = app.actions.create("apply_firewall", resources)
            started.append(action)
            app.actions.run([action], _applier(app, server), node=node_name(server),
                            on_error=_forget_applied(app, server), can_fail=False)
    return started


def _applier(app: Emulator, server: dict[str, Any]) -> Any:
    def work() -> None:
        try:
            with app.store.lock:
                rules = inbound_rules_for(app, server)
            app.nodes.apply_firewall(node_name(server), rules)
        finally:
            with app.store.lock:
                server["_firewall_pending"] -= 1
    return work


def _forget_applied(app: Emulator, server: dict[str, Any]) -> Any:
    def on_error(_message: str) -> None:
        with app.store.lock:
            server.pop("_applied_rules", None)  # the next sync tries again
    return on_error


def render(app: Emulator, firewall: dict[str, Any]) -> dict[str, Any]:
    out = public(firewall)
    for resource in out["applied_to"]:
        if resource["type"] == "label_selector":
            match = parse_selector(resource["label_selector"]["selector"])
            resource["applied_to_resources"] = [
                {"type": "server", "server": {"id": s["id"]}}
                for _, s in sorted(app.store.table("servers").items())
                if match(s["labels"])]
    return out


def create_firewall(app: Emulator, req: ApiRequest) -> Response:
    name = require(req.body, "name")
    labels = validate_labels(req.body.get("labels"))
    rules = [normalize_rule(r, i) for i, r in enumerate(req.body.get("rules") or [])]
    with app.store.lock:
        apply_to = [_normalize_resource(app, r, f"apply_to[{i}]")
                    for i, r in enumerate(req.body.get("apply_to") or [])]
        if app.store.find_by_name("firewalls", name):
            raise uniqueness("name")
        firewall = {"id": app.store.new_id(), "name": name, "labels": labels,
                    "created": now(), "rules": rules, "applied_to": apply_to}
        app.store.table("firewalls")[firewall["id"]] = firewall
        actions = sync_firewalls(app)
        body = {"firewall": render(app, firewall), "actions": public(actions)}
    app.store.save()
    return 201, body


def list_firewalls(app: Emulator, req: ApiRequest) -> Response:
    with app.store.lock:
        items = sorted_by_request(req, filtered(req, app.store.table("firewalls").values()))
        return 200, page(req, "firewalls", [render(app, f) for f in items])


def get_firewall(app: Emulator, req: ApiRequest) -> Response:
    with app.store.lock:
        return 200, {"firewall": render(app, app.store.get("firewalls", req.path_params["id"]))}


def update_firewall(app: Emulator, req: ApiRequest) -> Response:
    with app.store.lock:
        firewall = app.store.get("firewalls", req.path_params["id"])
        update_name_and_labels(app, "firewalls", firewall, req.body)
        body = {"firewall": render(app, firewall)}
    app.store.save()
    return 200, body


def delete_firewall(app: Emulator, req: ApiRequest) -> Response:
    with app.store.lock:
        firewall = app.store.get("firewalls", req.path_params["id"])
        if firewall["applied_to"]:
            raise ApiError("resource_in_use", "firewall is still applied to resources; "
                           "remove it from them first")
        del app.store.table("firewalls")[firewall["id"]]
    app.store.save()
    return 204, None


def set_rules(app: Emulator, req: ApiRequest) -> Response:
    rules = req.body.get("rules")
    if not isinstance(rules, list):
        raise invalid_field("rules", "is required")
    normalized = [normalize_rule(r, i) for i, r in enumerate(rules)]
    with app.store.lock:
        firewall = app.store.get("firewalls", req.path_params["id"])
        firewall["rules"] = normalized
        own = app.actions.create("set_firewall_rules", [("firewall", firewall["id"])])
        app.actions.finish(own)
        actions = [own, *sync_firewalls(app)]
    app.store.save()
    return actions_response(actions)


def apply_to_resources(app: Emulator, req: ApiRequest) -> Response:
    with app.store.lock:
        firewall = app.store.get("firewalls", req.path_params["id"])
        new = [_normalize_resource(app, r, f"apply_to[{i}]")
               for i, r in enumerate(req.body.get("apply_to") or [])]
        for resource in new:
            if resource in firewall["applied_to"]:
                raise ApiError("firewall_already_applied",
                               f"firewall {firewall['id']} is already applied to {resource}")
        firewall["applied_to"].extend(new)
        actions = _change_actions(app, firewall, new, "apply_firewall")
    app.store.save()
    return actions_response(actions)


def remove_from_resources(app: Emulator, req: ApiRequest) -> Response:
    with app.store.lock:
        firewall = app.store.get("firewalls", req.path_params["id"])
        gone = []
        for i, raw in enumerate(req.body.get("remove_from") or []):
            where = f"remove_from[{i}]"
            if isinstance(raw, dict) and raw.get("type") == "server":
                # The server may be gone already; compare ids without looking it up.
                ident = (raw.get("server") or {}).get("id")
                resource: dict[str, Any] = {"type": "server", "server": {"id": ident}}
            else:
                resource = _normalize_resource(app, raw, where)
            if resource not in firewall["applied_to"]:
                raise ApiError("firewall_already_removed",
                               f"firewall {firewall['id']} is not applied to {resource}")
            gone.append(resource)
        firewall["applied_to"] = [r for r in firewall["applied_to"] if r not in gone]
        actions = _change_actions(app, firewall, gone, "remove_firewall")
    app.store.save()
    return actions_response(actions)


def _change_actions(app: Emulator, firewall: dict[str, Any], changed: list[dict[str, Any]],
                    command: str) -> list[dict[str, Any]]:
    """Hetzner answers with one action per resource; the node updates follow from sync."""
    own = []
    for resource in changed:
        ident = resource["server"]["id"] if resource["type"] == "server" else None
        resources = [("firewall", firewall["id"])] + ([("server", ident)] if ident else [])
        action = app.actions.create(command, resources)
        app.actions.finish(action)
        own.append(action)
    return own + sync_firewalls(app)


def forget_server(app: Emulator, server_id: int) -> None:
    """A deleted server no longer holds firewalls (Hetzner detaches them)."""
    for firewall in app.store.table("firewalls").values():
        firewall["applied_to"] = [
            r for r in firewall["applied_to"]
            if not (r["type"] == "server" and r["server"]["id"] == server_id)]
