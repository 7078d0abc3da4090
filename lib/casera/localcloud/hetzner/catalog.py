"""The fixed offer of the emulated project: locations, datacenters, server types, images,
load balancer types and their prices. Read-only, so it is code rather than stored state.

Prices follow the seed plan (CX33 at 6.59 a month, the LB at 5.99, CX23 2.50 below CX33);
the seed quotes dollars, so the currency is USD. Gross includes a 19 % VAT rate, and the
hourly price is the monthly cap spread over 672 hours, which is how Hetzner's figures
relate.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

CURRENCY = "USD"
VAT_RATE = Decimal("19")
_HOURS_PER_MONTH = Decimal(672)
_TB = 1024**4
CREATED = "2025-10-16T06:00:00Z"

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


def price(gross: Decimal) -> dict[str, str]:
    """Net and gross as Hetzner writes them: decimal strings, never floats."""
    net = gross / (1 + VAT_RATE / 100)
    return {"net": _decimal_str(net, 10), "gross": _decimal_str(gross, 16)}


def prices_per_location(monthly_gross: str, traffic_tb: int) -> list[dict[str, Any]]:
    monthly = Decimal(monthly_gross)
    hourly = (monthly / _HOURS_PER_MONTH).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
    return [
        {
            "location": loc["name"],
            "price_hourly": price(hourly),
            "price_monthly": price(monthly),
            "included_traffic": traffic_tb * _TB,
            "price_per_tb_traffic": price(Decimal("1.19")),
        }
        for loc in LOCATIONS
    ]


SERVER_TYPES: list[dict[str, Any]] = [
    {"id": 104, "name": "cx23", "description": "CX23", "cores": 2, "memory": 4.0, "disk": 40,
     "prices": prices_per_location("4.09", 20)},
    {"id": 105, "name": "cx33", "description": "CX33", "cores": 4, "memory": 8.0, "disk": 80,
     "prices": prices_per_location("6.59", 20)},
    {"id": 106, "name": "cx43", "description": "CX43", "cores": 8, "memory": 16.0,
     "disk": 160, "prices": prices_per_location("12.59", 20)},
]
for _st in SERVER_TYPES:
    _st.update({
        "category": "cost_optimized", "cpu_type": "shared", "architecture": "x86",
        "storage_type": "local", "deprecated": False, "deprecation": None,
        # available/recommended: newer than the OpenAPI copy, but hcloud 2.27 requires them.
        "locations": [{"id": loc["id"], "name": loc["name"], "deprecation": None,
                       "available": True, "recommended": True} for loc in LOCATIONS],
    })

LOAD_BALANCER_TYPES: list[dict[str, Any]] = [
    {"id": 1, "name": "lb11", "description": "LB11", "max_connections": 10000,
     "max_services": 5, "max_targets": 25, "max_assigned_certificates": 10,
     "deprecated": None, "prices": prices_per_location("5.99", 1)},
    {"id": 2, "name": "lb21", "description": "LB21", "max_connections": 20000,
     "max_services": 15, "max_targets": 75, "max_assigned_certificates": 25,
     "deprecated": None, "prices": prices_per_location("19.99", 2)},
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
    ids = [st["id"] for st in SERVER_TYPES]
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
        "volume": {"price_per_gb_month": price(Decimal("0.0524"))},
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
