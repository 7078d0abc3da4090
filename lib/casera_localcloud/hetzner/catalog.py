"""The fixed offer of the emulated project: locations, datacenters, server types, images,
load balancer types and their prices. Read-only, so it is code rather than stored state.

Prices are Hetzner's published figures in EUR, net of VAT, with gross at a German
customer's 19 % (the API answers in the project's currency, EUR, with net and gross as
decimal strings):
- CX23 3.99, CX33 6.49, CX43 11.99 a month, CX33 0.0104 an hour: the API's own answer
  (GET /v1/pricing, fsn1) quoted in github.com/devantler-tech/platform commit cb791c6
  (2026-05-27) and its issue #1784 (EUR per vCPU: CX23 2.00, CX33 1.62, CX43 1.50); CX23
  3.99 and CX33 6.49 again in docs.vdhome.be/reference/costs (2026-04-15).
- CCX13 12.49 (EU) / 13.49 (US), CCX23 24.49 / 26.49: a published comparison of
  hetzner.com/cloud dated 2025-10-21; no later figure was found, so these may predate the
  April 2026 adjustment.
- LB11 5.39, LB21 16.40 a month: hetzner.com/cloud/load-balancer as captured 2025-08.
- Egress beyond the included traffic: 1.00 per TB (the same devantler commit).
Hourly prices other than CX33's are the monthly cap over 624 hours, the ratio of the
API's CX33 figures (6.49 / 0.0104).

Where each type is offered (``server_types[].locations``, hcloud-python PR #558, "per
location server types", 2025-09-24): the cost-optimised CX types only in Hetzner's EU
locations; in Ashburn and Hillsboro ``POST /servers`` answers ``invalid_input`` "unsupported
location for server type" (as reported in roots/trellis-cli#622, autobase-tech/autobase#1403
and testflows/TestFlows-GitHub-Hetzner-Runners#96). The dedicated CCX types are offered in
all five.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

CURRENCY = "EUR"
VAT_RATE = Decimal("19")
_HOURS_PER_MONTH = Decimal(624)
_TB = 1024**4
CREATED = "2025-10-16T06:00:00Z"
EU = ("fsn1", "nbg1", "hel1")
US = ("ash", "hil")

LOCATIONS: list[dict[str, Any]] = [
    {"id": 1, "name": "fsn1", "description": "Falkenstein DC Park 1", "country": "DE",
     "city": "Falkenstein", "latitude": 50.47612, "longitude": 12.370071,
     "network_zone": "eu-central"},
    {"id": 2, "name": "nbg1", "description": "Nuremberg DC Park 1", "country": "DE",
     "city": "Nuremberg", "latitude": 49.452102, "longitude": 11.076665,
     "network_zone": "eu-central"},
    {"id": 3, "name": "hel1", "description": "Helsinki DC Park 1", "country": "FI",
     "city": "Helsinki", "latitude": 60.169855, "longitude": 24.938379,
     "network_zone": "eu-central"},
    {"id": 4, "name": "ash", "description": "Ashburn, VA", "country": "US",
     "city": "Ashburn, VA", "latitude": 39.045821, "longitude": -77.487073,
     "network_zone": "us-east"},
    {"id": 5, "name": "hil", "description": "Hillsboro, OR", "country": "US",
     "city": "Hillsboro, OR", "latitude": 45.54222, "longitude": -122.951924,
     "network_zone": "us-west"},
]
_DC_SUFFIX = {"fsn1": "dc14", "nbg1": "dc3", "hel1": "dc2", "ash": "dc1", "hil": "dc1"}


def _decimal_str(value: Decimal, places: int) -> str:
    return str(value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def price(net: Decimal) -> dict[str, str]:
    """Net and gross as Hetzner writes them: decimal strings, never floats."""
    gross = net * (1 + VAT_RATE / 100)
    return {"net": _decimal_str(net, 10), "gross": _decimal_str(gross, 16)}


def _hourly(monthly: Decimal) -> Decimal:
    return (monthly / _HOURS_PER_MONTH).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


def prices(monthly_net: dict[str, str], traffic_tb: dict[str, int],
           hourly_net: str | None = None) -> list[dict[str, Any]]:
    """One price entry per location where the type is offered (and only there)."""
    return [
        {
            "location": location,
            "price_hourly": price(Decimal(hourly_net) if hourly_net else _hourly(Decimal(cost))),
            "price_monthly": price(Decimal(cost)),
            "included_traffic": traffic_tb[location] * _TB,
            "price_per_tb_traffic": price(Decimal("1.00")),
        }
        for location, cost in monthly_net.items()
    ]


def _eu(value: str) -> dict[str, str]:
    return dict.fromkeys(EU, value)


def _eu_us(eu: str, us: str) -> dict[str, str]:
    return {**dict.fromkeys(EU, eu), **dict.fromkeys(US, us)}


_EU_TRAFFIC = dict.fromkeys(EU, 20)
_ALL_TRAFFIC = {**dict.fromkeys(EU, 20), **dict.fromkeys(US, 1)}


def _server_type(ident: int, name: str, cores: int, memory: float, disk: int, category: str,
                 cpu_type: str, cost: dict[str, str], traffic: dict[str, int],
                 hourly: str | None = None) -> dict[str, Any]:
    by_name = {loc["name"]: loc for loc in LOCATIONS}
    return {
        "id": ident, "name": name, "description": name.upper(), "cores": cores,
        "memory": memory, "disk": disk, "category": category, "cpu_type": cpu_type,
        "architecture": "x86", "storage_type": "local", "deprecated": False,
        "deprecation": None, "prices": prices(cost, traffic, hourly),
        # available/recommended: newer than the OpenAPI copy, but hcloud 2.27 requires them.
        "locations": [{"id": by_name[loc]["id"], "name": loc, "deprecation": None,
                       "available": True, "recommended": True} for loc in cost],
    }


SERVER_TYPES: list[dict[str, Any]] = [
    _server_type(104, "cx23", 2, 4.0, 40, "cost_optimized", "shared",
                 _eu("3.99"), _EU_TRAFFIC),
    _server_type(105, "cx33", 4, 8.0, 80, "cost_optimized", "shared",
                 _eu("6.49"), _EU_TRAFFIC, hourly="0.0104"),
    _server_type(106, "cx43", 8, 16.0, 160, "cost_optimized", "shared",
                 _eu("11.99"), _EU_TRAFFIC),
    _server_type(96, "ccx13", 2, 8.0, 80, "dedicated_cpu", "dedicated",
                 _eu_us("12.49", "13.49"), _ALL_TRAFFIC),
    _server_type(97, "ccx23", 4, 16.0, 160, "dedicated_cpu", "dedicated",
                 _eu_us("24.49", "26.49"), _ALL_TRAFFIC),
]


def offered_at(location: str) -> list[str]:
    """Names of the server types offered at ``location``, as the API lists them."""
    return [st["name"] for st in SERVER_TYPES
            if any(loc["name"] == location for loc in st["locations"])]


_ALL_LOCATIONS = (*EU, *US)
LOAD_BALANCER_TYPES: list[dict[str, Any]] = [
    {"id": 1, "name": "lb11", "description": "LB11", "max_connections": 10000,
     "max_services": 5, "max_targets": 25, "max_assigned_certificates": 10,
     "deprecated": None,
     "prices": prices(dict.fromkeys(_ALL_LOCATIONS, "5.39"), dict.fromkeys(_ALL_LOCATIONS, 1))},
    {"id": 2, "name": "lb21", "description": "LB21", "max_connections": 20000,
     "max_services": 15, "max_targets": 75, "max_assigned_certificates": 25,
     "deprecated": None,
     "prices": prices(dict.fromkeys(_ALL_LOCATIONS, "16.40"),
                      dict.fromkeys(_ALL_LOCATIONS, 2))},
]

_IMAGE_COMMON: dict[str, Any] = {
    "architecture": "x86", "bound_to": None, "created": CREATED, "created_from": None,
    "deleted": None, "deprecated": None, "disk_size": 5, "image_size": None, "labels": {},
    "protection": {"delete": False}, "rapid_deploy": True, "status": "available",
}
IMAGES: list[dict[str, Any]] = [
    # The local nodes are Debian with Docker; the app image says so instead of claiming
    # Hetzner's Ubuntu base, because the runbooks' shell commands run on what is real.
    {**_IMAGE_COMMON, "id": 40093247, "name": "docker-ce", "type": "app",
     "description": "Docker CE (Debian 12 in the local cloud)", "os_flavor": "debian",
     "os_version": "12"},
    {**_IMAGE_COMMON, "id": 114690387, "name": "debian-12", "type": "system",
     "description": "Debian 12", "os_flavor": "debian", "os_version": "12"},
]


def datacenter(location: dict[str, Any]) -> dict[str, Any]:
    name = f"{location['name']}-{_DC_SUFFIX[location['name']]}"
    ids = [st["id"] for st in SERVER_TYPES if st["name"] in offered_at(location["name"])]
    return {"id": location["id"], "name": name,
            "description": f"{location['description']} {_DC_SUFFIX[location['name']].upper()}",
            "location": location,
            "server_types": {"supported": ids, "available": ids, "available_for_migration": ids}}


def pricing() -> dict[str, Any]:
    """GET /pricing: what the runbooks' cost report reads, shaped after the spec."""
    zero = price(Decimal(0))
    return {
        "currency": CURRENCY,
        "vat_rate": _decimal_str(VAT_RATE, 2),
        "image": {"price_per_gb_month": price(Decimal("0.0119"))},
        # Volume: the devantler commit above. The image, IP and backup figures are not read
        # by the runbooks and were not checked against a current source.
        "volume": {"price_per_gb_month": price(Decimal("0.0572"))},
        "server_backup": {"percentage": "20.00"},
        "floating_ip": {"price_monthly": price(Decimal("3.57"))},
        "floating_ips": [{"type": kind, "prices": [{"location": loc["name"],
                                                    "price_monthly": price(Decimal(cost))}
                                                   for loc in LOCATIONS]}
                         for kind, cost in (("ipv4", "3.57"), ("ipv6", "0"))],
        "primary_ips": [{"type": kind, "prices": [{"location": loc["name"],
                                                   "price_hourly": zero if cost == "0" else
                                                   price(Decimal("0.0012")),
                                                   "price_monthly": price(Decimal(cost))}
                                                  for loc in LOCATIONS]}
                        for kind, cost in (("ipv4", "0.60"), ("ipv6", "0"))],
        "server_types": [{"id": st["id"], "name": st["name"], "prices": st["prices"]}
                         for st in SERVER_TYPES],
        "load_balancer_types": [{"id": lt["id"], "name": lt["name"], "prices": lt["prices"]}
                                for lt in LOAD_BALANCER_TYPES],
    }


def find(items: list[dict[str, Any]], id_or_name: object) -> dict[str, Any] | None:
    """Look an entry up by id (int or numeric string) or by name, as the API accepts both."""
    for item in items:
        if item["name"] == id_or_name or str(item["id"]) == str(id_or_name):
            return item
    return None
