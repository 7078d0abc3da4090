"""/certificates: uploaded TLS certificates (PEM chain + private key), for HTTPS LB services.

Hetzner's API reference ("Certificates", https://docs.hetzner.cloud/reference/cloud#certificates):
``type`` is ``uploaded`` (certificate + private_key in PEM) or ``managed`` (Let's Encrypt,
issued by Hetzner); answers never carry the private key; ``domain_names`` are read from the
certificate; ``fingerprint`` is its SHA-256; ``used_by`` lists the LBs using it; a
certificate still used by a service cannot be deleted. What this emulator refuses, as
Hetzner does or stricter:
- ``managed``: the local cloud cannot reach Let's Encrypt (refused, named);
- a certificate or key that does not parse as PEM, a key that does not belong to the first
  certificate, a chain whose records do not each certify the one before (the spec's
  "in order so that each record directly certifies the one preceding"), and a certificate
  already expired;
- a name already used; deleting one an LB service still names (``resource_in_use``).
The private key stays in the emulator's state (0600 file) because the LB proxy serves it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from casera_localcloud.hetzner.app import (
    ApiRequest,
    Emulator,
    Response,
    filtered,
    now,
    page,
    require,
    sorted_by_request,
    update_name_and_labels,
)
from casera_localcloud.hetzner.errors import ApiError, invalid_field, uniqueness
from casera_localcloud.hetzner.labels import validate_labels
from casera_localcloud.hetzner.store import public


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _chain(pem: str) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        raise invalid_field("certificate", "is not a certificate (chain) in PEM format") from None
    for child, parent in zip(chain, chain[1:], strict=False):
        if child.issuer != parent.subject:
            raise invalid_field("certificate", "chain is not in order: each record must "
                                "directly certify the one preceding")
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            raise invalid_field("certificate", "chain is not in order: each record must "
                                "directly certify the one preceding") from None
    return chain


def _key_matches(key_pem: str, leaf: x509.Certificate) -> None:
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError):
        raise invalid_field("private_key", "is not an unencrypted private key in PEM "
                            "format") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise invalid_field("private_key", "must be an RSA or ECDSA key")
    if key.public_key().public_numbers() != leaf.public_key().public_numbers():  # type: ignore[union-attr]
        raise invalid_field("private_key", "does not belong to the certificate")


def domain_names(leaf: x509.Certificate) -> list[str]:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [str(a.value) for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return list(names)


def create_certificate(app: Emulator, req: ApiRequest) -> Response:
    body = req.body
    name = require(body, "name")
    kind = body.get("type") or "uploaded"
    if kind == "managed":
        raise invalid_field("type", "managed certificates need Let's Encrypt, which the local "
                            "cloud cannot reach; upload one (type 'uploaded')")
    pem = require(body, "certificate")
    key_pem = require(body, "private_key")
    chain = _chain(pem)
    leaf = chain[0]
    _key_matches(key_pem, leaf)
    if leaf.not_valid_after_utc <= datetime.now(UTC):
        raise invalid_field("certificate", "has expired")
    fingerprint = leaf.fingerprint(hashes.SHA256()).hex()
    with app.store.lock:
        if app.store.find_by_name("certificates", name):
            raise uniqueness("name")
        cert = {
            "id": app.store.new_id(), "name": name, "labels": validate_labels(body.get("labels")),
            "type": "uploaded", "certificate": pem, "created": now(),
            "not_valid_before": _iso(leaf.not_valid_before_utc),
            "not_valid_after": _iso(leaf.not_valid_after_utc),
            "domain_names": domain_names(leaf),
            "fingerprint": ":".join(fingerprint[i:i + 2] for i in range(0, 64, 2)),
            "status": None, "_private_key": key_pem,
        }
        app.store.table("certificates")[cert["id"]] = cert
        answer = render(app, cert)
    app.store.save()
    return 201, {"certificate": answer}


def used_by(app: Emulator, cert_id: int) -> list[dict[str, Any]]:
    return [{"id": lb["id"], "type": "load_balancer"}
            for lb in app.store.table("load_balancers").values()
            if any(cert_id in (svc.get("http") or {}).get("certificates", [])
                   for svc in lb["services"])]


def render(app: Emulator, cert: dict[str, Any]) -> dict[str, Any]:
    return {**public(cert), "used_by": used_by(app, cert["id"])}


def list_certificates(app: Emulator, req: ApiRequest) -> Response:
    with app.store.lock:
        items = filtered(req, app.store.table("certificates").values())
        if kind := req.param("type"):
            items = [c for c in items if c["type"] == kind]
        return 200, page(req, "certificates",
                         [render(app, c) for c in sorted_by_request(req, items)])


def get_certificate(app: Emulator, req: ApiRequest) -> Response:
    with app.store.lock:
        return 200, {"certificate": render(
            app, app.store.get("certificates", req.path_params["id"]))}


def update_certificate(app: Emulator, req: ApiRequest) -> Response:
    with app.store.lock:
        cert = app.store.get("certificates", req.path_params["id"])
        update_name_and_labels(app, "certificates", cert, req.body)
        answer = render(app, cert)
    app.store.save()
    return 200, {"certificate": answer}


def delete_certificate(app: Emulator, req: ApiRequest) -> Response:
    with app.store.lock:
        cert = app.store.get("certificates", req.path_params["id"])
        users = used_by(app, cert["id"])
        if users:
            raise ApiError("resource_in_use", f"certificate {cert['id']} is still used by load "
                           f"balancer(s) {', '.join(str(u['id']) for u in users)}")
        del app.store.table("certificates")[cert["id"]]
    app.store.save()
    return 204, None


def find(app: Emulator, ident: object, where: str) -> dict[str, Any]:
    """A certificate named by id in a service's ``http.certificates``."""
    cert = app.store.table("certificates").get(ident) if isinstance(ident, int) else None
    if cert is None:
        raise ApiError("not_found", f"certificate with ID {ident} not found",
                       {"fields": [{"name": where}]})
    return cert
