"""Read-only endpoints over catalog.py: locations, datacenters, server and load balancer
types, images, pricing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from casera_localcloud.hetzner import catalog
from casera_localcloud.hetzner.app import ApiRequest, Emulator, Response, filtered, page
from casera_localcloud.hetzner.errors import not_found


def _list_and_get(key: str, singular: str, items: Callable[[], list[dict[str, Any]]]
                  ) -> tuple[Callable[..., Response], Callable[..., Response]]:
    def list_items(app: Emulator, req: ApiRequest) -> Response:
        result = filtered(req, items())
        if key == "images":
            result = _filter_images(req, result)
        body = page(req, key, result)
        if key == "datacenters":
            # The spec's list answer names the datacenter Hetzner recommends; here the first.
            body["recommendation"] = items()[0]["id"]
        return 200, body

    def get_item(app: Emulator, req: ApiRequest) -> Response:
        ident = req.path_params["id"]
        found = next((i for i in items() if str(i["id"]) == ident), None)
        if found is None:
            raise not_found(singular.replace("_", " "), ident)
        return 200, {singular: found}

    return list_items, get_item


def _filter_images(req: ApiRequest, images: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if types := req.query.get("type"):
        images = [i for i in images if i["type"] in types]
    if arch := req.query.get("architecture"):
        images = [i for i in images if i["architecture"] in arch]
    return images


list_locations, get_location = _list_and_get("locations", "location", lambda: catalog.LOCATIONS)
list_datacenters, get_datacenter = _list_and_get(
    "datacenters", "datacenter", lambda: [catalog.datacenter(loc) for loc in catalog.LOCATIONS])
list_server_types, get_server_type = _list_and_get(
    "server_types", "server_type", lambda: catalog.SERVER_TYPES)
list_load_balancer_types, get_load_balancer_type = _list_and_get(
    "load_balancer_types", "load_balancer_type", lambda: catalog.LOAD_BALANCER_TYPES)
list_images, get_image = _list_and_get("images", "image", lambda: catalog.IMAGES)


def get_pricing(app: Emulator, req: ApiRequest) -> Response:
    return 200, {"pricing": catalog.pricing()}
