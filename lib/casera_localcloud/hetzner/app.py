"""The emulator's shared context and the request/list helpers every resource module uses."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from casera_localcloud.hetzner.errors import ApiError, uniqueness
from casera_localcloud.hetzner.labels import parse_selector, validate_labels

if TYPE_CHECKING:
    from casera_localcloud.hetzner.actions import ActionRunner
    from casera_localcloud.hetzner.backend import LoadBalancerBackend, NodeBackend
    from casera_localcloud.hetzner.faults import Faults
    from casera_localcloud.hetzner.store import Store

DEFAULT_NODE_NETWORK = "10.77.0.0/24"
DEFAULT_FIRST_NODE_HOST = 11
DEFAULT_LB_PORTS = range(18100, 18200)


@dataclass
class Emulator:
    store: Store
    nodes: NodeBackend
    proxies: LoadBalancerBackend
    faults: Faults
    actions: ActionRunner
    node_network: str = DEFAULT_NODE_NETWORK
    first_node_host: int = DEFAULT_FIRST_NODE_HOST
    lb_ports: range = DEFAULT_LB_PORTS
    lb_host: str = "127.0.0.1"
    # When set, each LB gets its own loopback address from this network and listens on its
    # services' real ports (80, 443), so `http://<lb ip>:<listen_port>` works as on Hetzner.
    lb_public_network: str | None = None

    def allocate_lb_ip(self) -> str:
        if not self.lb_public_network:
            return self.lb_host
        used = {lb["public_net"]["ipv4"]["ip"]
                for lb in self.store.table("load_balancers").values()}
        for host in ipaddress.ip_network(self.lb_public_network).hosts():
            if str(host) not in used:
                return str(host)
        raise ApiError("resource_limit_exceeded",
                       f"no free load balancer address left in {self.lb_public_network}")

    def allocate_ip(self) -> str:
        """The lowest free address of the node pool, so a fresh project's nodes get .11,
        .12, .13 as docs/facts.md#this-machine-the-local-cloud says."""
        used = {s["public_net"]["ipv4"]["ip"] for s in self.store.table("servers").values()
                if s["public_net"]["ipv4"]}
        network = ipaddress.ip_network(self.node_network)
        for host in list(network.hosts())[self.first_node_host - 1:]:
            if str(host) not in used:
                return str(host)
        raise ApiError("resource_limit_exceeded", f"no free address left in {network}")

    def allocate_lb_port(self) -> int:
        lbs = self.store.table("load_balancers").values()
        used = {svc["emulator_listen_port"] for lb in lbs for svc in lb["services"]}
        used |= {lb["_redirect_port"] for lb in lbs if "_redirect_port" in lb}
        for port in self.lb_ports:
            if port not in used:
                return port
        raise ApiError("resource_limit_exceeded",
                       f"no free load balancer port left in {self.lb_ports.start}-"
                       f"{self.lb_ports.stop - 1}")


@dataclass
class ApiRequest:
    method: str
    path_params: dict[str, str]
    query: dict[str, list[str]]
    body: dict[str, Any] = field(default_factory=dict)

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def int_param(self, name: str, default: int) -> int:
        raw = self.param(name)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise ApiError("invalid_input", f"{name} must be an integer") from None


Response = tuple[int, dict[str, Any] | None]
Handler = Callable[[Emulator, ApiRequest], Response]


def node_name(server: dict[str, Any]) -> str:
    """The node behind a server: its name at creation (a rename does not rename the node,
    just as renaming a Hetzner server leaves the OS hostname alone)."""
    return server.get("_node_name", server["name"])


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def filtered(req: ApiRequest, items: Iterable[dict[str, Any]],
             extra: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
    """Apply the filters every list endpoint shares: ``name`` and ``label_selector``."""
    result = list(items)
    if (name := req.param("name")) is not None:
        result = [item for item in result if item.get("name") == name]
    if (selector := req.param("label_selector")) is not None:
        match = parse_selector(selector)
        result = [item for item in result if match(item.get("labels", {}))]
    if extra:
        result = [item for item in result if extra(item)]
    return result


def sorted_by_request(req: ApiRequest, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Later sort keys are applied first so the first one given wins, as in SQL ORDER BY.
    result = sorted(items, key=lambda item: item["id"])
    for spec in reversed(req.query.get("sort", [])):
        key, _, direction = spec.partition(":")
        if key not in ("id", "name", "created"):
            raise ApiError("invalid_input", f"cannot sort by {key!r}")
        result.sort(key=lambda item, k=key: item.get(k) or "", reverse=direction == "desc")
    return result


def page(req: ApiRequest, key: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    """One page of ``items`` under ``key`` plus Hetzner's ``meta.pagination``."""
    per_page = req.int_param("per_page", 25)
    number = req.int_param("page", 1)
    if per_page < 1 or number < 1:
        raise ApiError("invalid_input", "page and per_page must be positive")
    per_page = min(per_page, 50)
    total = len(items)
    last = max(1, math.ceil(total / per_page))
    start = (number - 1) * per_page
    return {
        key: items[start:start + per_page],
        "meta": {"pagination": {
            "page": number, "per_page": per_page,
            "previous_page": number - 1 if number > 1 else None,
            "next_page": number + 1 if number < last else None,
            "last_page": last, "total_entries": total,
        }},
    }


def require(body: dict[str, Any], field_name: str, kind: type | tuple[type, ...] = str) -> Any:
    value = body.get(field_name)
    if value is None or not isinstance(value, kind) or value == "":
        raise ApiError("invalid_input", f"invalid input in field '{field_name}'",
                       {"fields": [{"name": field_name, "messages": ["is required"]}]})
    return value


def update_name_and_labels(app: Emulator, kind: str, obj: dict[str, Any], body: dict[str, Any],
                           check_name: Callable[[str], None] | None = None) -> bool:
    """What every ``PUT /<kind>/{id}`` takes: a name, unique within its kind (Hetzner answers
    uniqueness_error), and labels. Hold the store's lock. True when labels were given, since
    label selectors may now match other resources."""
    if "name" in body:
        name = require(body, "name")
        if check_name:
            check_name(name)
        other = app.store.find_by_name(kind, name)
        if other and other is not obj:
            raise uniqueness("name")
        obj["name"] = name
    if "labels" in body:
        obj["labels"] = validate_labels(body["labels"])
        return True
    return False
