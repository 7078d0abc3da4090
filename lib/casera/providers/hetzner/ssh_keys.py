"""SSH keys of the Hetzner project: read by name, create-or-get."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from casera.errors import ProviderError
from casera.providers.hetzner.errors import hetzner_errors
from casera.providers.hetzner.resource import ResourceClient


@dataclass(frozen=True)
class SSHKey:
    name: str
    id: int
    fingerprint: str
    public_key: str
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, bound: Any) -> SSHKey:
        return cls(name=bound.name, id=int(bound.id), fingerprint=bound.fingerprint or "",
                   public_key=bound.public_key or "", labels=dict(bound.labels or {}))


class SSHKeys(ResourceClient[SSHKey]):
    noun, sdk_name = "ssh key", "ssh_keys"

    def _fact(self, bound: Any) -> SSHKey:
        return SSHKey.of(bound)

    def create_or_get(self, name: str, public_key: str, labels: dict[str, str]) -> SSHKey:
        """Create the key; a replayed POST that had already succeeded (hcloud-python retries
        POSTs on rate limits) meets ``uniqueness_error`` and returns the key it made."""
        try:
            with hetzner_errors(f"create ssh key {name}", self._where):
                return SSHKey.of(self._api.ssh_keys.create(name=name, public_key=public_key,
                                                           labels=dict(labels)))
        except ProviderError as exc:
            found = self.get(name) if exc.code == "uniqueness_error" else None
            if found is None:
                raise
            return found
