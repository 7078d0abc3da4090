"""Uploaded certificates: read by name, upload (create-or-get), delete. Answers never hold
the private key (Hetzner does not return it); the key goes in once, as a Secret. hcloud 2.27
does not read the API's ``used_by``: which LB uses a certificate is read from the LBs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hcloud.certificates import Certificate as HCertificate

from casera.errors import ProviderError
from casera.operator_secrets import Secret
from casera.providers.hetzner.errors import hetzner_errors
from casera.providers.hetzner.resource import ResourceClient


@dataclass(frozen=True)
class Certificate:
    name: str
    id: int
    domain_names: tuple[str, ...]
    not_valid_after: str | None  # RFC 3339
    fingerprint: str | None
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, bound: Any) -> Certificate:
        after = bound.not_valid_after
        return cls(name=bound.name, id=int(bound.id),
                   domain_names=tuple(bound.domain_names or ()),
                   not_valid_after=after.isoformat() if hasattr(after, "isoformat") else after,
                   fingerprint=bound.fingerprint,
                   labels=dict(bound.labels or {}))


class Certificates(ResourceClient[Certificate]):
    noun, sdk_name = "certificate", "certificates"

    def _fact(self, bound: Any) -> Certificate:
        return Certificate.of(bound)

    def list(self, label_selector: str) -> list[Certificate]:
        with hetzner_errors(f"list certificates {label_selector}", self._where):
            return [Certificate.of(c) for c in
                    self._api.certificates.get_all(label_selector=label_selector)]

    def upload(self, name: str, certificate_pem: str, private_key: Secret,
               labels: dict[str, str]) -> Certificate:
        """Upload; a replayed POST meets ``uniqueness_error`` and returns what it made."""
        try:
            with hetzner_errors(f"upload certificate {name}", self._where):
                return Certificate.of(self._api.certificates.create(
                    name=name, certificate=certificate_pem,
                    private_key=private_key.reveal(), labels=dict(labels)))
        except ProviderError as exc:
            found = self.get(name) if exc.code == "uniqueness_error" else None
            if found is None:
                raise
            return found

    def delete(self, certificate: Certificate) -> bool:
        """False when it was already gone."""
        return self._delete(certificate.name, lambda: self._api.certificates.delete(
            HCertificate(id=certificate.id))) is not None
