"""Real nodes for the local cloud: containers that run their own dockerd and sshd.

``backend()`` is what the Hetzner emulator drives (``casera_localcloud.hetzner.backend.
NodeBackend``); ``kill_node``/``partition_node``/``heal_node`` are the drills' hard faults;
``up``/``down``/``status`` serve ``casera local``.
"""

from __future__ import annotations

from casera_localcloud.nodes.backend import NodeInfo, Nodes
from casera_localcloud.nodes.service import down, kernel_limits, status, up

__all__ = ["NodeInfo", "Nodes", "backend", "down", "heal_node", "kernel_limits", "kill_node",
           "partition_node", "status", "up"]


def backend() -> Nodes:
    """The NodeBackend for the Hetzner emulator, on the local cloud's engine."""
    return Nodes()


def kill_node(name: str) -> None:
    Nodes().kill_node(name)


def partition_node(name: str) -> None:
    Nodes().partition_node(name)


def heal_node(name: str) -> None:
    Nodes().heal_node(name)
