"""Cloudflare DNS through the official ``cloudflare`` SDK; ``base_url`` points it at an
emulator in the local cloud. Reads return plain :class:`DnsRecord` data; writes do one call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cloudflare import Cloudflare

from casera.operator_secrets import Secret


@dataclass(frozen=True)
class DnsRecord:
    id: str
    name: str
    type: str
    content: str
    proxied: bool
    ttl: float


def client(api_token: Secret, base_url: str | None = None, timeout: float = 10.0) -> Cloudflare:
    return Cloudflare(api_token=api_token.reveal(), base_url=base_url, timeout=timeout,
                      max_retries=2)


def find_zone_id(cf: Cloudflare, zone: str) -> str | None:
    for found in cf.zones.list(name=zone):
        return found.id
    return None


def _record(found: Any) -> DnsRecord:
    return DnsRecord(id=str(found.id), name=str(found.name), type=str(found.type),
                     content=str(found.content), proxied=bool(found.proxied),
                     ttl=float(found.ttl))


def list_records(cf: Cloudflare, zone_id: str, name: str) -> list[DnsRecord]:
    """Every record of any type named ``name`` (fully qualified) in the zone."""
    return [_record(r) for r in cf.dns.records.list(zone_id=zone_id, name={"exact": name})]


def create_record(cf: Cloudflare, zone_id: str, name: str, record_type: str, content: str,
                  proxied: bool, ttl: int = 1) -> DnsRecord:
    return _record(cf.dns.records.create(zone_id=zone_id, name=name, type=record_type,
                                         content=content, proxied=proxied, ttl=ttl))


def update_record(cf: Cloudflare, zone_id: str, record_id: str, name: str, record_type: str,
                  content: str, proxied: bool, ttl: int = 1) -> DnsRecord:
    # PATCH: what is sent is set; a comment or tags an operator put on the record stay.
    return _record(cf.dns.records.edit(record_id, zone_id=zone_id, name=name,
                                       type=record_type, content=content, proxied=proxied,
                                       ttl=ttl))


def delete_record(cf: Cloudflare, zone_id: str, record_id: str) -> None:
    cf.dns.records.delete(record_id, zone_id=zone_id)
