"""Servers: read by label or name, create-or-get, power on, hard reset, delete."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hcloud.images import Image
from hcloud.locations import Location
from hcloud.server_types import ServerType
from hcloud.servers import Server as HServer
from hcloud.ssh_keys import SSHKey

from casera.errors import ProviderError
from casera.providers.hetzner.actions import Action
from casera.providers.hetzner.errors import hetzner_errors
from casera.providers.hetzner.resource import ResourceClient


@dataclass(frozen=True)
class Server:
    name: str
    id: int
    status: str  # running, off, initializing, starting, ...
    ipv4: str | None
    server_type: str = ""
    location: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, bound: Any) -> Server:
        net = bound.public_net
        return cls(name=bound.name, id=int(bound.id), status=bound.status,
                   ipv4=net.ipv4.ip if net is not None and net.ipv4 is not None else None,
                   server_type=bound.server_type.name if bound.server_type else "",
                   location=bound.location.name if bound.location else "",
                   labels=dict(bound.labels or {}))


@dataclass(frozen=True)
class ServerSpec:
    """What a new server is made of; the user data may hold a private key: it goes to the
    API only and is never shown."""

    name: str
    server_type: str
    image: str
    location: str
    ssh_key_name: str
    user_data: str = field(repr=False)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Created:
    server: Server
    action: Action | None  # None when a replayed POST found the server already made
    existed: bool


class Servers(ResourceClient[Server]):
    noun, sdk_name = "server", "servers"

    def _fact(self, bound: Any) -> Server:
        return Server.of(bound)

    def list(self, label_selector: str) -> list[Server]:
        with hetzner_errors(f"list servers labelled {label_selector}", self._where):
            return [Server.of(s) for s in
                    self._api.servers.get_all(label_selector=label_selector)]

    def create_or_get(self, spec: ServerSpec) -> Created:
        """Create the server; a replayed POST that had already succeeded (hcloud-python
        replays the same body on rate limits) meets ``uniqueness_error`` and returns the
        server it made, ``existed`` set and no action to wait for."""
        try:
            with hetzner_errors(f"create server {spec.name}", self._where):
                response = self._api.servers.create(
                    name=spec.name, server_type=ServerType(name=spec.server_type),
                    image=Image(name=spec.image), location=Location(name=spec.location),
                    ssh_keys=[SSHKey(name=spec.ssh_key_name)], user_data=spec.user_data,
                    labels=dict(spec.labels))
            return Created(Server.of(response.server),
                           Action.of(response.action) if response.action else None, False)
        except ProviderError as exc:
            found = self.get(spec.name) if exc.code == "uniqueness_error" else None
            if found is None:
                raise
            return Created(found, None, True)

    def power_on(self, server: Server) -> Action:
        with hetzner_errors(f"power on server {server.name}", self._where):
            return Action.of(self._api.servers.power_on(HServer(id=server.id)))

    def power_off(self, server: Server) -> Action:
        """A hard power off, like pulling the plug (the fence of a lost node)."""
        with hetzner_errors(f"power off server {server.name}", self._where):
            return Action.of(self._api.servers.power_off(HServer(id=server.id)))

    def reset(self, server: Server) -> Action:
        """A hard reset, like pulling the plug; the disk stays."""
        with hetzner_errors(f"reset server {server.name}", self._where):
            return Action.of(self._api.servers.reset(HServer(id=server.id)))

    def delete(self, server: Server) -> Action | None:
        """Delete by id (destroys its disk); None when it was already gone."""
        return self._delete(server.name, lambda: Action.of(self._api.servers.delete(
            HServer(id=server.id))))
