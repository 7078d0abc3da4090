"""Hetzner Cloud through the official ``hcloud`` client, one module per resource as in
hcloud-python: ``ssh_keys``, ``firewalls``, ``servers``, ``load_balancers``, ``certificates``,
``catalog`` (server types, locations, prices), and ``client`` (the factory).

Reads answer with frozen dataclasses or None, never hcloud objects; creates are create-or-get
(a replayed POST that meets ``uniqueness_error`` returns what it made); actions are waited for
together (:func:`wait_for`); every hcloud error becomes :class:`casera.errors.ProviderError`
with the API's code.
"""

from casera.providers.hetzner.actions import Action, wait_for
from casera.providers.hetzner.catalog import Offer, ServerTypeOffers
from casera.providers.hetzner.certificates import Certificate
from casera.providers.hetzner.client import Hetzner, connect, for_env, sdk_client
from casera.providers.hetzner.firewalls import Firewall, FirewallRule
from casera.providers.hetzner.load_balancers import LBService, LoadBalancer
from casera.providers.hetzner.servers import Created, Server, ServerSpec
from casera.providers.hetzner.ssh_keys import SSHKey

__all__ = ["Action", "Certificate", "Created", "Firewall", "FirewallRule", "Hetzner", "LBService",
           "LoadBalancer", "Offer", "SSHKey", "Server", "ServerSpec", "ServerTypeOffers",
           "connect", "for_env", "sdk_client", "wait_for"]
