"""What the project can buy, and at what price: server types per location, and the price list.

Hetzner offers each server type in some locations only ("per location server types",
docs.hetzner.cloud changelog 2025-09-24), with ``available`` false while one is out of stock
and a ``deprecation`` once it is being retired. Prices come from GET /pricing, in the project's
currency, net and gross (https://docs.hetzner.cloud/reference/cloud#pricing-get-all-prices).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hcloud import Client

from casera.providers.hetzner.errors import hetzner_errors


@dataclass(frozen=True)
class Offer:
    """A server type at one location."""

    location: str
    available: bool | None  # None: the API did not say
    unavailable_after: str | None  # set when the type is deprecated there


@dataclass(frozen=True)
class ServerTypeOffers:
    name: str
    offers: tuple[Offer, ...]

    def at(self, location: str) -> Offer | None:
        return next((offer for offer in self.offers if offer.location == location), None)


class Catalog:
    def __init__(self, api: Client, where: str) -> None:
        self._api, self._where = api, where

    def server_types(self) -> list[ServerTypeOffers]:
        with hetzner_errors("list server types", self._where):
            found = self._api.server_types.get_all()
        return [ServerTypeOffers(name=t.name, offers=tuple(
            Offer(location=loc.location.name, available=loc.available,
                  unavailable_after=(str(loc.deprecation.unavailable_after)
                                     if loc.deprecation is not None else None))
            for loc in t.locations or [])) for t in found]

    def locations(self) -> list[str]:
        with hetzner_errors("list locations", self._where):
            return sorted(loc.name for loc in self._api.locations.get_all())

    def pricing(self) -> dict[str, Any]:
        """The API's price list as it answers it: ``currency``, ``vat_rate``,
        ``server_types`` and ``load_balancer_types`` with ``prices`` per location."""
        with hetzner_errors("read prices", self._where):
            return dict(self._api.request("GET", "/pricing")["pricing"])
