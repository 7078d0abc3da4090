"""Cloudflare DNS through the official ``cloudflare`` SDK; ``base_url`` points it at an
emulator in the local cloud."""

from __future__ import annotations

from cloudflare import Cloudflare

from casera.secrets import Secret


def client(api_token: Secret, base_url: str | None = None, timeout: float = 10.0) -> Cloudflare:
    return Cloudflare(api_token=api_token.reveal(), base_url=base_url, timeout=timeout,
                      max_retries=2)


def find_zone_id(cf: Cloudflare, zone: str) -> str | None:
    for found in cf.zones.list(name=zone):
        return found.id
    return None
