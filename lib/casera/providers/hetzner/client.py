"""The client factory: one project's API, by resource, like hcloud-python's ``Client``
(``hz.servers``, ``hz.firewalls``, ...), answering with plain data."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hcloud import Client

from casera.operator_secrets import Secret
from casera.providers.hetzner.actions import POLL_INTERVAL
from casera.providers.hetzner.catalog import Catalog
from casera.providers.hetzner.certificates import Certificates
from casera.providers.hetzner.firewalls import Firewalls
from casera.providers.hetzner.load_balancers import LoadBalancers
from casera.providers.hetzner.servers import Servers
from casera.providers.hetzner.ssh_keys import SSHKeys

if TYPE_CHECKING:
    from casera.operator_secrets import SecretStore
    from casera.params import Params


def sdk_client(api_endpoint: str, token: Secret, timeout: float = 30.0) -> Client:
    # Exponential polling: actions such as server creation take tens of seconds, and the
    # default 1 s poll would spend the project's 3600 requests/hour on waiting.
    return Client(token=token.reveal(), api_endpoint=api_endpoint,
                  application_name="casera-runbooks", timeout=timeout,
                  poll_interval=POLL_INTERVAL, poll_max_retries=240)


class Hetzner:
    """The Hetzner Cloud project at ``api_endpoint``."""

    def __init__(self, api: Client, where: str) -> None:
        self.where = where
        self.ssh_keys = SSHKeys(api, where)
        self.firewalls = Firewalls(api, where)
        self.servers = Servers(api, where)
        self.load_balancers = LoadBalancers(api, where)
        self.catalog = Catalog(api, where)
        self.certificates = Certificates(api, where)


def connect(api_endpoint: str, token: Secret, timeout: float = 30.0) -> Hetzner:
    return Hetzner(sdk_client(api_endpoint, token, timeout), api_endpoint)


def for_env(params: Params, secrets: SecretStore, timeout: float = 30.0) -> Hetzner:
    """The env's project: its params' endpoint, its ``hcloud_token``."""
    return connect(params.hetzner.api_endpoint, secrets.get("hcloud_token"), timeout)
