"""What the emulator asks of the machinery that makes its objects real.

The emulator keeps the API's state and answers at once; real effects (a node container, its
iptables, a TCP proxy) happen behind these two protocols, called from worker threads while
an action is ``running``. The emulator knows nothing about Docker: ``casera_localcloud.nodes``
implements ``NodeBackend`` with containers, ``lb_proxy.LoadBalancerProxies`` implements
``LoadBalancerBackend``, and ``fake_backend.FakeNodeBackend`` records calls for tests.

Contract for implementers (all methods):
- Called from worker threads, never two at a time for the same node name (the emulator
  serialises per node), possibly concurrently for different nodes.
- Block until the effect is real (the action stays ``running`` until the call returns).
- Raise any exception to fail the action; its message becomes the action's error message.
- Be idempotent: the emulator may repeat a call after a restart or a failed action.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class NodeBackend(Protocol):
    def create_node(self, server: dict[str, Any], ssh_keys: list[str],
                    user_data: str | None) -> str:
        """Create the node for ``server`` and leave it running; return its IPv4 address.

        ``server`` is the API object (``server["name"]`` is the hostname, ``server["id"]``,
        ``server["labels"]``, ``server["server_type"]["cores"|"memory"|"disk"]``). The
        emulator proposes an address in ``server["public_net"]["ipv4"]["ip"]`` (from its
        pool, unique among its servers); use it if you can. The address returned becomes the
        server's public IP. ``ssh_keys`` are OpenSSH public key lines for root's
        ``authorized_keys``; ``user_data`` is cloud-init user data to run at first boot.
        If ``start_after_create`` was false, the emulator calls ``stop_node`` afterwards.
        """
        ...

    def start_node(self, name: str) -> None:
        """Boot a stopped node with its data intact (poweron; second half of reboot/reset).

        The emulator calls ``apply_firewall`` again after every start, so rules need not
        survive a stop.
        """
        ...

    def stop_node(self, name: str, hard: bool) -> None:
        """Stop the node. ``hard``: like pulling the plug (poweroff, reset); otherwise an
        ACPI-style clean shutdown (shutdown, reboot)."""
        ...

    def delete_node(self, name: str) -> None:
        """Destroy the node and its data. Must succeed when the node does not exist."""
        ...

    def apply_firewall(self, name: str, inbound_rules: list[dict[str, Any]] | None) -> None:
        """Enforce inbound filtering inside the node, replacing what was there. Called only
        while the node runs, and again after every start.

        ``None``: no firewall applies, accept all inbound traffic. A list (maybe empty): drop
        all inbound traffic except what a rule allows, as Hetzner does once any firewall
        applies; established/related traffic and loopback stay allowed. Each rule is the
        API's rule object with ``direction`` "in": ``protocol`` (tcp, udp, icmp, esp, gre),
        ``port`` ("22", "8000-8100", "any" or None for icmp/esp/gre), ``source_ips`` (CIDRs,
        IPv4 and IPv6 mixed; "0.0.0.0/0" means anywhere), ``description``.
        """
        ...


@dataclass(frozen=True)
class ProxyHealthCheck:
    protocol: str  # "tcp" or "http"
    port: int  # on the target
    interval: float  # seconds between checks
    timeout: float  # seconds
    retries: int  # failed checks before a healthy target counts as unhealthy, and passes back
    http_path: str = "/"
    http_domain: str | None = None
    http_response: str = ""  # body must contain this (empty: no check)
    http_status_codes: tuple[str, ...] = ("2??", "3??")


@dataclass(frozen=True)
class ProxyService:
    """One LB service: listen on ``host:local_port``, forward to ``target_ip:destination_port``."""

    local_port: int
    listen_port: int  # the port the API shows; only for reporting
    destination_port: int
    health_check: ProxyHealthCheck
    target_ips: tuple[str, ...] = field(default=())
    proxyprotocol: bool = False  # send a PROXY protocol v1 line to the target first
    listen_host: str | None = None  # the LB's own address; None: the proxies' default host
    # https: terminate TLS with this chain and key (PEM), then forward plain bytes.
    tls_certificate: str | None = field(default=None, repr=False)
    tls_private_key: str | None = field(default=None, repr=False)
    # The implicit listener of ``redirect_http``: answer every request with a 301 to https.
    redirect_to_https: bool = False


class LoadBalancerBackend(Protocol):
    def configure(self, lb_id: int, services: list[ProxyService]) -> None:
        """Make the proxies of load balancer ``lb_id`` match ``services`` (add, change and
        close listeners). Called after every change of the LB or of its targets' servers."""
        ...

    def remove(self, lb_id: int) -> None:
        """Close every listener of ``lb_id``; no error when it has none."""
        ...

    def health(self, lb_id: int) -> dict[tuple[int, str], str]:
        """Health per (local_port, target_ip): "healthy", "unhealthy" or "unknown"."""
        ...

    def close(self) -> None:
        """Stop all proxies (emulator shutdown)."""
        ...
