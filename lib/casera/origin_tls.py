"""The origin certificate's key pair: made here, kept in the operator's store, read as facts.

The private key is a secret: it is generated on this machine, written only to
``secrets/<env>.origin-tls/<name>.key`` (git-ignored, mode 0600, the directory 0700) and handed
to Hetzner's API (which keeps it for the LB); it never goes into params, papermill parameters,
logs or notebooks, and the runner's scrub reads this store like ``secrets/<env>.env``. The
certificate beside it (``<name>.crt``, PEM) is public. An operator who brings a certificate
(``edge.certificate_source: operator``) puts both files there.

Pure functions over PEM text (cryptography), no remote calls: key and CSR for Cloudflare's
Origin CA, and a certificate's facts (names, expiry, fingerprint, whether a CA signed it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from casera.errors import SecretMissingError
from casera.operator_secrets import Secret
from casera.paths import secrets_file


@dataclass(frozen=True)
class CertificateFacts:
    subject: str
    issuer: str
    names: tuple[str, ...]
    not_after: datetime
    fingerprint: str  # SHA-256, colon-separated, as Hetzner shows it

    def days_left(self, now: datetime | None = None) -> float:
        return (self.not_after - (now or datetime.now(UTC))).total_seconds() / 86400

    def covers(self, hostname: str) -> bool:
        host = hostname.lower().rstrip(".")
        return any(n == host or (n.startswith("*.") and host.count(".") == n.count(".")
                                 and host.endswith(n[1:])) for n in self.names)


def facts(certificate_pem: str) -> CertificateFacts:
    """The first certificate of a PEM chain, read."""
    cert = x509.load_pem_x509_certificates(certificate_pem.encode())[0]
    try:
        names = tuple(cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    digest = cert.fingerprint(hashes.SHA256()).hex()
    return CertificateFacts(subject=cert.subject.rfc4514_string(),
                            issuer=cert.issuer.rfc4514_string(), names=names,
                            not_after=cert.not_valid_after_utc,
                            fingerprint=":".join(digest[i:i + 2] for i in range(0, 64, 2)))


def fingerprint_of_der(der: bytes) -> str:
    """SHA-256 of a DER certificate (what a TLS peer sent), colon-separated."""
    digest = x509.load_der_x509_certificate(der).fingerprint(hashes.SHA256()).hex()
    return ":".join(digest[i:i + 2] for i in range(0, 64, 2))


def signed_by(certificate_pem: str, ca_pem: str) -> bool:
    """Whether the CA in ``ca_pem`` directly signed the first certificate of the chain."""
    cert = x509.load_pem_x509_certificates(certificate_pem.encode())[0]
    for ca in x509.load_pem_x509_certificates(ca_pem.encode()):
        try:
            cert.verify_directly_issued_by(ca)
            return True
        except (ValueError, TypeError, InvalidSignature):
            continue
    return False


def new_key_and_csr(hostname: str) -> tuple[Secret, str]:
    """A new ECDSA P-256 key (a Secret) and a CSR for ``hostname`` (PEM, public)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
           .sign(key, hashes.SHA256()))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return Secret("origin certificate key", pem), csr.public_bytes(
        serialization.Encoding.PEM).decode()


def store_dir(env: str) -> Path:
    return secrets_file(env).with_name(f"{env}.origin-tls")


class OriginKeyStore:
    """``<name>.key`` (0600) and ``<name>.crt`` in ``secrets/<env>.origin-tls/`` (0700)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def files(self, name: str) -> tuple[Path, Path]:
        return self.path / f"{name}.crt", self.path / f"{name}.key"

    def load(self, name: str) -> tuple[str, Secret] | None:
        """(certificate PEM, key) when both files are there; None when neither is."""
        crt, key = self.files(name)
        if not crt.exists() and not key.exists():
            return None
        if not (crt.exists() and key.exists()):
            missing = key if crt.exists() else crt
            raise SecretMissingError(f"{missing} is missing but its pair is there: put it back "
                                     f"or remove both to make a new certificate")
        return crt.read_text(), Secret(f"origin key {name}", key.read_text())

    def put(self, name: str, certificate_pem: str, key: Secret) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        crt, key_file = self.files(name)
        tmp = key_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(key.reveal())
        os.replace(tmp, key_file)  # the key first: a certificate alone is useless, not harmful
        crt.write_text(certificate_pem)

    def values(self) -> list[str]:
        """Every stored private key (whole, and each line of its body), for scrubbing."""
        if not self.path.is_dir():
            return []
        found = []
        for key_file in sorted(self.path.glob("*.key")):
            text = key_file.read_text().strip()
            found.append(text)
            found += [line for line in text.splitlines()
                      if len(line) >= 32 and not line.startswith("-----")]
        return found


def key_store(env: str) -> OriginKeyStore:
    return OriginKeyStore(store_dir(env))


def stored_secret_values(env: str) -> list[str]:
    return key_store(env).values()
