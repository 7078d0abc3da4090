"""The edge endpoints: zone settings, Origin CA certificates and Cloudflare's IP ranges.

Shapes from the API reference and the ``cloudflare`` SDK's models (5.x, ``types/zones/*``,
``types/origin_ca_certificates/*``, ``types/ips/*``):

- ``GET|PATCH /zones/{id}/settings/{setting}`` answer ``{id, value, editable, modified_on}``.
  Only the settings the runbooks use exist here: ``ssl`` (off, flexible, full, strict),
  ``always_use_https`` (on, off), ``min_tls_version`` (1.0-1.3) and ``security_header``
  (``{"strict_transport_security": {enabled, max_age, include_subdomains, preload,
  nosniff}}``). Another name is 1006 "Unrecognized zone setting name"; a bad value is 1007
  "Invalid value for zone setting <name>" (both codes as Cloudflare answers them, seen in
  cloudflare/terraform-provider-cloudflare#1810 and pulumi/pulumi-cloudflare#1319). A new
  zone starts as an old Free zone does: ``flexible``, HTTPS not forced, TLS 1.0, no HSTS,
  so a runbook that forgets a setting is caught.
- ``POST /certificates`` (Origin CA) signs the caller's CSR for ``hostnames`` that must lie in
  a zone of the account, ``request_type`` ``origin-rsa`` or ``origin-ecc`` matching the CSR's
  key, ``requested_validity`` in days from 7, 30, 90, 365, 730, 1095, 5475 (default 5475).
  The answer carries ``id`` (the serial), ``certificate``, ``expires_on``, ``csr``, ... but
  never a private key: Cloudflare never sees it. ``GET /certificates?zone_id=`` lists a zone's
  certificates (``zone_id`` is required), ``DELETE /certificates/{id}`` revokes one. The
  signing CA is this emulator's own (``origin-ca.pem`` in its state dir): checks trust it
  explicitly, as production checks trust Cloudflare's published Origin CA root.
- ``GET /ips`` needs no token (Cloudflare publishes the list) and answers ``ipv4_cidrs``,
  ``ipv6_cidrs`` and an ``etag``. Tests change the list through ``PUT /_casera/ips``.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from casera_localcloud.cloudflare import errors
from casera_localcloud.cloudflare.store import Store, now

# https://www.cloudflare.com/ips-v4 and ips-v6 (the lists GET /ips answers), 2026-11.
PUBLISHED_IPV4 = ["173.245.48.0/20", "103.21.244.0/22", "103.22.200.0/22", "103.31.4.0/22",
                  "141.101.64.0/18", "108.162.192.0/18", "190.93.240.0/20", "188.114.96.0/20",
                  "197.234.240.0/22", "198.41.128.0/17", "162.158.0.0/15", "104.16.0.0/13",
                  "104.24.0.0/14", "172.64.0.0/13", "131.0.72.0/22"]
PUBLISHED_IPV6 = ["2400:cb00::/32", "2606:4700::/32", "2803:f800::/32", "2405:b500::/32",
                  "2405:8100::/32", "2a06:98c0::/29", "2c0f:f248::/32"]
DEFAULT_SETTINGS: dict[str, Any] = {
    "ssl": "flexible", "always_use_https": "off", "min_tls_version": "1.0",
    "security_header": {"strict_transport_security": {
        "enabled": False, "max_age": 0, "include_subdomains": False, "preload": False,
        "nosniff": False}},
}
HSTS_FIELDS = {"enabled": bool, "max_age": int, "include_subdomains": bool, "preload": bool,
               "nosniff": bool}
HSTS_MAX_AGE = 31_536_000  # 12 months: the most Cloudflare's HSTS settings offer
VALIDITY_DAYS = (7, 30, 90, 365, 730, 1095, 5475)
HOSTNAME = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")
CA_CERT, CA_KEY = "origin-ca.pem", "origin-ca.key"


def unrecognized_setting(name: str) -> errors.CloudflareApiError:
    return errors.CloudflareApiError(400, 1006, f"Unrecognized zone setting name: {name}")


def invalid_setting(name: str) -> errors.CloudflareApiError:
    return errors.CloudflareApiError(400, 1007, f"Invalid value for zone setting {name}")


def origin_ca_error(message: str) -> errors.CloudflareApiError:
    return errors.CloudflareApiError(400, 1010, message)  # code: guess


class Edge:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.ca_cert, self.ca_key = _ensure_ca(store.state_dir)
        data = _read(store.state_dir / "edge.json")
        self.settings: dict[str, dict[str, Any]] = data.get("settings", {})
        self.certificates: dict[str, dict[str, Any]] = data.get("certificates", {})
        self.ips: dict[str, list[str]] = data.get("ips") or {
            "ipv4_cidrs": PUBLISHED_IPV4, "ipv6_cidrs": PUBLISHED_IPV6}

    def _save(self) -> None:
        path = self.store.state_dir / "edge.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"settings": self.settings, "certificates": self.certificates,
                                   "ips": self.ips}, indent=1, sort_keys=True))
        tmp.replace(path)

    # zone settings --------------------------------------------------------------------

    def _zone_settings(self, zone_id: str) -> dict[str, Any]:
        return self.settings.setdefault(zone_id, {
            name: {"value": json.loads(json.dumps(value)), "modified_on": None}
            for name, value in DEFAULT_SETTINGS.items()})

    def get_setting(self, zone_id: str, name: str) -> dict[str, Any]:
        if name not in DEFAULT_SETTINGS:
            raise unrecognized_setting(name)
        with self.store.lock:
            stored = self._zone_settings(zone_id)[name]
            return {"id": name, "value": stored["value"], "editable": True,
                    "modified_on": stored["modified_on"]}

    def edit_setting(self, zone_id: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        if name not in DEFAULT_SETTINGS:
            raise unrecognized_setting(name)
        if set(body) - {"value"} or "value" not in body:
            raise invalid_setting(name)
        with self.store.lock:
            stored = self._zone_settings(zone_id)[name]
            value = _checked(name, body["value"], stored["value"])
            if value != stored["value"]:
                stored.update(value=value, modified_on=now())
                self._save()
        return self.get_setting(zone_id, name)

    # Origin CA ------------------------------------------------------------------------

    def create_certificate(self, body: dict[str, Any]) -> dict[str, Any]:
        csr_pem, hostnames = body.get("csr"), body.get("hostnames")
        request_type = body.get("request_type")
        validity = body.get("requested_validity", 5475)
        if not isinstance(csr_pem, str) or not csr_pem.strip():
            raise origin_ca_error("csr is required")
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError:
            raise origin_ca_error("Failed to parse the CSR: not a PEM certificate "
                                  "request") from None
        if not csr.is_signature_valid:
            raise origin_ca_error("The CSR's signature is not valid")
        if request_type not in ("origin-rsa", "origin-ecc"):
            raise origin_ca_error("request_type must be origin-rsa or origin-ecc (keyless "
                                  "certificates are not emulated)")
        key = csr.public_key()
        wanted = rsa.RSAPublicKey if request_type == "origin-rsa" else ec.EllipticCurvePublicKey
        if not isinstance(key, wanted):
            raise origin_ca_error(f"request_type {request_type} does not match the CSR's key")
        if isinstance(validity, bool) or validity not in VALIDITY_DAYS:
            raise origin_ca_error("requested_validity must be one of "
                                  + ", ".join(map(str, VALIDITY_DAYS)))
        if not isinstance(hostnames, list) or not hostnames:
            raise origin_ca_error("hostnames is required: a list of names in your zones")
        names = [self._hostname(h) for h in hostnames]
        issued = datetime.now(UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CloudFlare, Inc."),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "CloudFlare Origin CA"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "CloudFlare Origin Certificate")]))
                .issuer_name(self.ca_cert.subject).public_key(key)  # type: ignore[arg-type]
                .serial_number(x509.random_serial_number())
                .not_valid_before(issued - timedelta(minutes=5))
                .not_valid_after(issued + timedelta(days=int(validity)))
                .add_extension(x509.SubjectAlternativeName(
                    [x509.DNSName(n) for n in names]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage(
                    [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.ca_key.public_key()), critical=False)  # type: ignore[arg-type]
                .sign(self.ca_key, hashes.SHA256()))  # type: ignore[arg-type]
        record = {"id": str(cert.serial_number),
                  "certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
                  "hostnames": names, "expires_on": cert.not_valid_after_utc.strftime(
                      "%Y-%m-%d %H:%M:%S +0000 UTC"),
                  "request_type": request_type, "requested_validity": int(validity),
                  "csr": csr_pem, "revoked_at": None}
        with self.store.lock:
            self.certificates[record["id"]] = record
            self._save()
        return _public(record)

    def _hostname(self, raw: object) -> str:
        name = raw.strip().lower().rstrip(".") if isinstance(raw, str) else ""
        if not HOSTNAME.match(name):
            raise origin_ca_error(f"hostname {raw!r} is not a fully qualified name or a "
                                  "*. wildcard of one")
        bare = name.removeprefix("*.")
        if not any(bare == z["name"] or bare.endswith("." + z["name"])
                   for z in self.store.zones.values()):
            raise origin_ca_error(f"hostname {name} is not in a zone of this account")
        return name

    def list_certificates(self, zone_id: str) -> list[dict[str, Any]]:
        zone = self.store.zones.get(zone_id)
        if zone is None:
            raise errors.no_route("/certificates")
        in_zone = [c for c in self.certificates.values() if c["revoked_at"] is None and any(
            h.removeprefix("*.") == zone["name"] or h.endswith("." + zone["name"])
            for h in c["hostnames"])]
        return [_public(c) for c in in_zone]

    def get_certificate(self, cert_id: str) -> dict[str, Any]:
        found = self.certificates.get(cert_id)
        if found is None:
            raise errors.CloudflareApiError(404, 1003, "Certificate not found")  # code: guess
        return _public(found)

    def revoke_certificate(self, cert_id: str) -> dict[str, Any]:
        with self.store.lock:
            found = self.certificates.get(cert_id)
            if found is None or found["revoked_at"] is not None:
                raise errors.CloudflareApiError(404, 1003, "Certificate not found")  # guess
            found["revoked_at"] = now()
            self._save()
        return {"id": cert_id, "revoked_at": found["revoked_at"]}

    # IP ranges ------------------------------------------------------------------------

    def list_ips(self) -> dict[str, Any]:
        digest = hashlib.sha1(json.dumps(self.ips, sort_keys=True).encode(),  # noqa: S324
                              usedforsecurity=False).hexdigest()[:16]
        return {**self.ips, "etag": digest}

    def set_ips(self, body: dict[str, Any]) -> dict[str, Any]:
        lists = {key: body.get(key) for key in ("ipv4_cidrs", "ipv6_cidrs")}
        if not all(isinstance(v, list) and all(isinstance(c, str) for c in v)
                   for v in lists.values()):
            raise errors.malformed_json()
        with self.store.lock:
            self.ips = {k: list(v) for k, v in lists.items()}  # type: ignore[arg-type]
            self._save()
        return self.list_ips()


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "revoked_at"}


def _checked(name: str, value: object, current: Any) -> Any:
    if name == "ssl":
        ok = value in ("off", "flexible", "full", "strict")
    elif name == "always_use_https":
        ok = value in ("on", "off")
    elif name == "min_tls_version":
        ok = value in ("1.0", "1.1", "1.2", "1.3")
    else:
        hsts = value.get("strict_transport_security") if isinstance(value, dict) else None
        ok = isinstance(hsts, dict) and set(value) == {"strict_transport_security"} and all(
            key in HSTS_FIELDS and isinstance(v, HSTS_FIELDS[key])
            and not (HSTS_FIELDS[key] is int and isinstance(v, bool)) for key, v in hsts.items())
        if ok:
            merged = {**current["strict_transport_security"], **hsts}  # a PATCH merges
            ok = 0 <= merged["max_age"] <= HSTS_MAX_AGE
            value = {"strict_transport_security": merged}
    if not ok:
        raise invalid_setting(name)
    return value


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _ensure_ca(state_dir: Path) -> tuple[x509.Certificate, Any]:
    """The emulator's Origin CA: made once, kept in the state dir (key mode 0600)."""
    cert_path, key_path = state_dir / CA_CERT, state_dir / CA_KEY
    if cert_path.exists() and key_path.exists():
        return (x509.load_pem_x509_certificate(cert_path.read_bytes()),
                serialization.load_pem_private_key(key_path.read_bytes(), password=None))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "casera local cloud"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "stands in for CloudFlare Origin "
                           "SSL Certificate Authority"),
        x509.NameAttribute(NameOID.COMMON_NAME, "casera-local Origin CA")])
    start = datetime.now(UTC) - timedelta(minutes=5)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + timedelta(days=5475))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    tmp = key_path.with_suffix(".tmp")
    tmp.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    tmp.chmod(0o600)
    tmp.replace(key_path)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key
