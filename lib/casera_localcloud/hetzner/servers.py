"""/servers: create (boots a node through the NodeBackend), list, get, update, delete and
the power actions."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from typing import Any

from casera_localcloud.hetzner import catalog
from casera_localcloud.hetzner.actions import action_response
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
from casera_localcloud.hetzner.firewalls import (
    firewalls_of,
    forget_server,
    inbound_rules_for,
    sync_firewalls,
)
from casera_localcloud.hetzner.labels import validate_labels
from casera_localcloud.hetzner.load_balancers import forget_server_targets, sync_load_balancers
from casera_localcloud.hetzner.ssh_keys import resolve_ssh_keys
from casera_localcloud.hetzner.store import public

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_MAX_USER_DATA = 32 * 1024
STATUSES = ("running", "initializing", "starting", "stopping", "off", "deleting", "migrating",
            "rebuilding", "unknown")


def render(app: Emulator, server: dict[str, Any]) -> dict[str, Any]:
    out = public(server)
    out["public_net"]["firewalls"] = firewalls_of(app, server)
    out["load_balancers"] = sorted(
        lb_id for lb_id, lb in app.store.table("load_balancers").items()
        if server["id"] in lb.get("_resolved_server_ids", []))
    return out


def _lookup(items: list[dict[str, Any]], ref: object, field: str) -> dict[str, Any]:
    found = catalog.find(items, ref)
    if found is None:
        raise ApiError("not_found" if ref is not None else "invalid_input",
                       f"{field} {ref!r} not found", {"fields": [{"name": field}]})
    return found


def _validate_create(app: Emulator, body: dict[str, Any]) -> dict[str, Any]:
    name = require(body, "name")
    _check_hostname(name)
    for unsupported in ("networks", "volumes", "placement_group"):
        if body.get(unsupported):
            raise invalid_field(unsupported, "not supported by the local cloud")
    user_data = body.get("user_data")
    if user_data is not None and (not isinstance(user_data, str)
                                  or len(user_data.encode()) > _MAX_USER_DATA):
        raise invalid_field("user_data", "must be a string of at most 32 KiB")
    location_ref = body.get("location") or "fsn1"
    if body.get("datacenter"):
        location_ref = str(body["datacenter"]).split("-")[0]
    start = body.get("start_after_create", True)
    if not isinstance(start, bool):
        raise invalid_field("start_after_create", "must be a boolean")
    server_type = _lookup(catalog.SERVER_TYPES, require(body, "server_type", (str, int)),
                          "server_type")
    location = _lookup(catalog.LOCATIONS, location_ref, "location")
    if location["name"] not in {loc["name"] for loc in server_type["locations"]}:
        # Hetzner's own answer, code and message as real clients have logged it (see
        # catalog.py): no field named, empty details.
        raise ApiError("invalid_input", "unsupported location for server type")
    return {
        "name": name,
        "server_type": server_type,
        "image": _lookup(catalog.IMAGES, require(body, "image", (str, int)), "image"),
        "location": location,
        "ssh_keys": resolve_ssh_keys(app, body.get("ssh_keys") or []),
        "firewall_ids": [app.store.get("firewalls", (f or {}).get("firewall"))["id"]
                         for f in body.get("firewalls") or []],
        "labels": validate_labels(body.get("labels")),
        "user_data": user_data,
        "start": start,
    }


def create_server(app: Emulator, req: ApiRequest) -> Response:
    with app.store.lock:
        spec = _validate_create(app, req.body)
        if app.store.find_by_name("servers", spec["name"]):
            raise uniqueness("name")
        holder = next((s for s in app.store.table("servers").values()
                       if node_name(s) == spec["name"]), None)
        if holder:
            # Unlike Hetzner: a renamed server keeps its node (and the node its name).
            raise ApiError("uniqueness_error", f"name {spec['name']!r} is still the node name "
                           f"of server {holder['name']!r} (renamed; the local cloud keeps "
                           f"node names)", {"fields": [{"name": "name"}]})
        ident = app.store.new_id()
        ip = app.allocate_ip()
        location = spec["location"]
        server: dict[str, Any] = {
            "id": ident, "name": spec["name"], "status": "initializing", "created": now(),
            "labels": spec["labels"], "server_type": spec["server_type"],
            "image": spec["image"], "location": location,
            "datacenter": catalog.datacenter(location), "iso": None,
            "public_net": {
                "ipv4": {"id": ident, "ip": ip, "blocked": False,
                         "dns_ptr": f"static.{ip}.local.casera"},
                # The local network has no IPv6; null is what Hetzner shows for none.
                "ipv6": None, "floating_ips": [], "firewalls": [],
            },
            "private_net": [], "rescue_enabled": False, "locked": False,
            "backup_window": None, "outgoing_traffic": 0, "ingoing_traffic": 0,
            "included_traffic": next(p["included_traffic"]
                                     for p in spec["server_type"]["prices"]
                                     if p["location"] == location["name"]),
            "protection": {"delete": False, "rebuild": False}, "volumes": [],
            "load_balancers": [], "primary_disk_size": spec["server_type"]["disk"],
            "placement_group": None, "_node_name": spec["name"],
        }
        app.store.table("servers")[ident] = server
        for fw_id in spec["firewall_ids"]:
            resource = {"type": "server", "server": {"id": ident}}
            fw = app.store.get("firewalls", fw_id)
            if resource not in fw["applied_to"]:
                fw["applied_to"].append(resource)
        action = app.actions.create("create_server", [("server", ident)])
        next_actions = [app.actions.create("start_server", [("server", ident)])] \
            if spec["start"] else []
        body = {
            "server": render(app, server), "action": public(action),
            "next_actions": public(next_actions),
            "root_password": None if spec["ssh_keys"] else secrets.token_urlsafe(15),
        }
    keys = [k["public_key"] for k in spec["ssh_keys"]]
    app.actions.run([action, *next_actions], _creator(app, server, keys, spec),
                    node=node_name(server), on_error=lambda _msg: _drop(app, server))
    app.store.save()
    return 201, body


def _creator(app: Emulator, server: dict[str, Any], keys: list[str],
             spec: dict[str, Any]) -> Callable[[], None]:
    def work() -> None:
        with app.store.lock:
            snapshot = render(app, server)
        try:
            ip = app.nodes.create_node(snapshot, keys, spec["user_data"])
            if not spec["start"]:
                app.nodes.stop_node(node_name(server), hard=True)
            with app.store.lock:
                rules = inbound_rules_for(app, server)
            if rules is not None and spec["start"]:
                app.nodes.apply_firewall(node_name(server), rules)
        except Exception:
            app.nodes.delete_node(node_name(server))  # a failed create leaves nothing behind
            raise
        with app.store.lock:
            server["public_net"]["ipv4"]["ip"] = ip
            server["status"] = "running" if spec["start"] else "off"
            server["_node_ready"] = True
            if spec["start"]:
                server["_applied_rules"] = rules
            sync_firewalls(app)  # rules that changed while the node was being made
            sync_load_balancers(app)
    return work


def _drop(app: Emulator, server: dict[str, Any]) -> None:
    """Hetzner rolls back a failed create; so does the emulator (the name is free again)."""
    with app.store.lock:
        app.store.table("servers").pop(server["id"], None)
        forget_server(app, server["id"])


def list_servers(app: Emulator, req: ApiRequest) -> Response:
    statuses = req.query.get("status")
    with app.store.lock:
        items = filtered(req, app.store.table("servers").values(),
                         (lambda s: s["status"] in statuses) if statuses else None)
        items = sorted_by_request(req, items)
        return 200, page(req, "servers", [render(app, s) for s in items])


def get_server(app: Emulator, req: ApiRequest) -> Response:
    with app.store.lock:
        return 200, {"server": render(app, app.store.get("servers", req.path_params["id"]))}


def _check_hostname(name: str) -> None:
    if not _HOSTNAME.match(name):
        raise invalid_field("name", "must be a valid hostname (RFC 1123)")


def update_server(app: Emulator, req: ApiRequest) -> Response:
    with app.store.lock:
        server = app.store.get("servers", req.path_params["id"])
        # A renamed server's node keeps its name, see app.node_name.
        if update_name_and_labels(app, "servers", server, req.body, _check_hostname):
            sync_firewalls(app)
            sync_load_balancers(app)
        body = {"server": render(app, server)}
    app.store.save()
    return 200, body


def delete_server(app: Emulator, req: ApiRequest) -> Response:
    with app.store.lock:
        server = app.store.get("servers", req.path_params["id"])
        _refuse_if_busy(app, server)
        server["status"] = "deleting"
        server["_node_ready"] = False
        action = app.actions.create("delete_server", [("server", server["id"])])

    def work() -> None:
        app.nodes.delete_node(node_name(server))
        with app.store.lock:
            app.store.table("servers").pop(server["id"], None)
            forget_server(app, server["id"])
            forget_server_targets(app, server["id"])
            sync_load_balancers(app)

    def restore(_message: str) -> None:
        with app.store.lock:
            server["status"], server["_node_ready"] = "unknown", True

    app.actions.run([action], work, node=node_name(server), on_error=restore)
    app.store.save()
    return 200, {"action": public(action)}


# Power actions: (command, status while running, status after, backend steps)
_POWER: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "poweron": ("start_server", "starting", "running", ("start",)),
    "poweroff": ("stop_server", "stopping", "off", ("hard_stop",)),
    "shutdown": ("shutdown_server", "stopping", "off", ("soft_stop",)),
    "reboot": ("reboot_server", "starting", "running", ("soft_stop", "start")),
    "reset": ("reset_server", "starting", "running", ("hard_stop", "start")),
}


_LIFECYCLE = {"create_server", "start_server", "delete_server"} | {
    command for command, *_ in _POWER.values()}


def _refuse_if_busy(app: Emulator, server: dict[str, Any]) -> None:
    """Hetzner locks a server while one of its lifecycle actions runs; so does the emulator,
    which also keeps two power actions from racing for the node."""
    for action in app.store.table("actions").values():
        if action["status"] == "running" and action["command"] in _LIFECYCLE and {
                "type": "server", "id": server["id"]} in action["resources"]:
            raise ApiError("locked", f"server {server['id']} is locked by running action "
                           f"{action['id']} ({action['command']})")


def power_action(verb: str) -> Callable[[Emulator, ApiRequest], Response]:
    command, during, after, steps = _POWER[verb]

    def handler(app: Emulator, req: ApiRequest) -> Response:
        with app.store.lock:
            server = app.store.get("servers", req.path_params["id"])
            _refuse_if_busy(app, server)
            if server["status"] == "deleting" or not server.get("_node_ready"):
                raise ApiError("conflict", f"server is {server['status']}, try again later")
            before = server["status"]
            server["status"] = during
            action = app.actions.create(command, [("server", server["id"])])
        name = node_name(server)

        def work() -> None:
            for step in steps:
                if step == "start":
                    app.nodes.start_node(name)
                    # Rules need not survive a stop (backend contract): send them again.
                    with app.store.lock:
                        rules = inbound_rules_for(app, server)
                    app.nodes.apply_firewall(name, rules)
                    with app.store.lock:
                        server["_applied_rules"] = rules
                else:
                    app.nodes.stop_node(name, hard=step == "hard_stop")
            with app.store.lock:
                server["status"] = after
                sync_firewalls(app)  # changes made while the node was not running

        def restore(_message: str) -> None:
            with app.store.lock:
                server["status"] = before

        app.actions.run([action], work, node=name, on_error=restore)
        app.store.save()
        return action_response(action)

    return handler


def recover(app: Emulator) -> None:
    """After a restart: settle what the previous process left half-done."""
    with app.store.lock:
        for server in list(app.store.table("servers").values()):
            server["_firewall_pending"] = 0
            if server["status"] == "initializing":
                # Its create action was failed by fail_interrupted; remove what the backend
                # may have made of it, as a failed create does.
                _drop(app, server)
                action = app.actions.create("delete_server", [("server", server["id"])])
                app.actions.run([action], lambda s=server: app.nodes.delete_node(node_name(s)),
                                node=node_name(server), can_fail=False)
            elif server["status"] in ("starting", "stopping", "deleting"):
                server["status"] = "unknown"
