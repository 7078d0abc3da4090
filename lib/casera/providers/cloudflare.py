"""Cloudflare DNS through the official ``cloudflare`` SDK; ``base_url`` points it at an
emulator in the local cloud. Reads return plain :class:`DnsRecord` data; writes do one call.

Every SDK error leaves this module as :class:`casera.errors.ProviderError` (system
``cloudflare``): ``code`` is Cloudflare's own first error code (``errors[].code`` of the v4
envelope, https://developers.cloudflare.com/fundamentals/api/reference/errors/) or the HTTP
status when the answer had none, ``details`` holds the HTTP ``status`` and the ``errors``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cloudflare import APIConnectionError, APIError, APIStatusError, Cloudflare

from casera.errors import ProviderError
from casera.operator_secrets import Secret

__all__ = ["Cloudflare", "DnsRecord", "refused_as_bad_request"]


@dataclass(frozen=True)
class DnsRecord:
    id: str
    name: str
    type: str
    content: str
    proxied: bool
    ttl: float


@contextmanager
def _mapped(what: str) -> Iterator[None]:
    try:
        yield
    except APIStatusError as exc:
        errors = [{"code": e.code, "message": e.message} for e in exc.errors]
        code = str(errors[0]["code"]) if errors else str(exc.status_code)
        message = "; ".join(str(e["message"]) for e in errors) or exc.message
        raise ProviderError("cloudflare", f"{what}: HTTP {exc.status_code}: {message}",
                            code=code, details={"status": exc.status_code,
                                                "errors": errors}) from exc
    except APIConnectionError as exc:
        raise ProviderError("cloudflare", f"{what}: {type(exc).__name__}: {exc}",
                            code=type(exc).__name__, details={"status": None}) from exc
    except APIError as exc:
        raise ProviderError("cloudflare", f"{what}: {exc.message}", code=type(exc).__name__,
                            details={"status": None}) from exc


def refused_as_bad_request(exc: ProviderError) -> bool:
    """Cloudflare refused the request itself (HTTP 400): the values sent, not the service."""
    return isinstance(exc.details, dict) and exc.details.get("status") == 400


def client(api_token: Secret, base_url: str | None = None, timeout: float = 10.0) -> Cloudflare:
    return Cloudflare(api_token=api_token.reveal(), base_url=base_url, timeout=timeout,
                      max_retries=2)


def find_zone_id(cf: Cloudflare, zone: str) -> str | None:
    with _mapped(f"list zone {zone}"):
        for found in cf.zones.list(name=zone):
            return str(found.id)
    return None


def _record(found: Any) -> DnsRecord:
    return DnsRecord(id=str(found.id), name=str(found.name), type=str(found.type),
                     content=str(found.content), proxied=bool(found.proxied),
                     ttl=float(found.ttl))


def list_records(cf: Cloudflare, zone_id: str, name: str) -> list[DnsRecord]:
    """Every record of any type named ``name`` (fully qualified) in the zone."""
    with _mapped(f"list records {name}"):
        return [_record(r) for r in cf.dns.records.list(zone_id=zone_id,
                                                        name={"exact": name})]


def create_record(cf: Cloudflare, zone_id: str, name: str, record_type: str, content: str,
                  proxied: bool, ttl: int = 1) -> DnsRecord:
    with _mapped(f"create {record_type} {name} -> {content}"):
        return _record(cf.dns.records.create(zone_id=zone_id, name=name, type=record_type,
                                             content=content, proxied=proxied, ttl=ttl))


def update_record(cf: Cloudflare, zone_id: str, record_id: str, name: str, record_type: str,
                  content: str, proxied: bool, ttl: int = 1) -> DnsRecord:
    # PATCH: what is sent is set; a comment or tags an operator put on the record stay.
    with _mapped(f"update {record_type} {name} -> {content}"):
        return _record(cf.dns.records.edit(record_id, zone_id=zone_id, name=name,
                                           type=record_type, content=content,
                                           proxied=proxied, ttl=ttl))


def delete_record(cf: Cloudflare, zone_id: str, record_id: str) -> None:
    with _mapped(f"delete record {record_id}"):
        cf.dns.records.delete(record_id, zone_id=zone_id)


# --- the edge: zone settings, Origin CA, published IP ranges --------------------------------

def get_setting(cf: Cloudflare, zone_id: str, name: str) -> Any:
    """A zone setting's value as plain data (a string, or a dict for ``security_header``)."""
    with _mapped(f"read zone setting {name}"):
        found = cf.zones.settings.get(name, zone_id=zone_id)
    value = getattr(found, "value", None)
    return value.model_dump() if hasattr(value, "model_dump") else value


def edit_setting(cf: Cloudflare, zone_id: str, name: str, value: Any) -> Any:
    with _mapped(f"set zone setting {name}"):
        found = cf.zones.settings.edit(name, zone_id=zone_id, value=value)
    value = getattr(found, "value", None)
    return value.model_dump() if hasattr(value, "model_dump") else value


@dataclass(frozen=True)
class OriginCertificate:
    id: str
    certificate: str  # PEM, public
    hostnames: tuple[str, ...]
    expires_on: str


def create_origin_certificate(cf: Cloudflare, csr: str, hostnames: list[str],
                              validity_days: int) -> OriginCertificate:
    """Cloudflare's Origin CA signs ``csr`` (an ECDSA key: ``origin-ecc``); the private key
    never leaves this machine (https://developers.cloudflare.com/ssl/origin-configuration/
    origin-ca/, "Origin CA certificates" in the API reference)."""
    with _mapped(f"create an Origin CA certificate for {', '.join(hostnames)}"):
        made = cf.origin_ca_certificates.create(
            csr=csr, hostnames=hostnames, request_type="origin-ecc",
            requested_validity=validity_days)  # type: ignore[arg-type]
    return OriginCertificate(id=str(made.id), certificate=str(made.certificate),
                             hostnames=tuple(made.hostnames), expires_on=str(made.expires_on))


@dataclass(frozen=True)
class PublishedRanges:
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]
    etag: str | None


def published_ranges(cf: Cloudflare) -> PublishedRanges:
    """Cloudflare's own addresses (``GET /ips``), the only sources of proxied traffic."""
    with _mapped("read Cloudflare's IP ranges"):
        found = cf.ips.list()
    return PublishedRanges(ipv4=tuple(getattr(found, "ipv4_cidrs", None) or ()),
                           ipv6=tuple(getattr(found, "ipv6_cidrs", None) or ()),
                           etag=getattr(found, "etag", None))
