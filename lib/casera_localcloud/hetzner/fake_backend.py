"""An in-memory NodeBackend for tests: records every call and keeps node states, touches
nothing real. Used by this package's tests and by ``--backend fake`` (so other parts' tests
can run the API without Docker)."""

from __future__ import annotations

import threading
import time
from typing import Any


class FakeNodeBackend:
    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s  # how long each call "takes", to observe running actions
        self.nodes: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, ...]] = []
        self.fail_next: dict[str, str] = {}  # method name -> error message, raised once
        self._lock = threading.Lock()

    def _enter(self, method: str, *args: str) -> None:
        with self._lock:
            self.calls.append((method, *args))
            message = self.fail_next.pop(method, None)
        if self.delay_s:
            time.sleep(self.delay_s)
        if message:
            raise RuntimeError(message)

    def create_node(self, server: dict[str, Any], ssh_keys: list[str],
                    user_data: str | None) -> str:
        self._enter("create_node", server["name"])
        ip = server["public_net"]["ipv4"]["ip"]
        with self._lock:
            self.nodes[server["name"]] = {"ip": ip, "running": True, "ssh_keys": ssh_keys,
                                          "user_data": user_data, "firewall": None}
        return ip

    def start_node(self, name: str) -> None:
        self._enter("start_node", name)
        with self._lock:
            self.nodes[name]["running"] = True

    def stop_node(self, name: str, hard: bool) -> None:
        self._enter("stop_node", name, "hard" if hard else "soft")
        with self._lock:
            self.nodes[name]["running"] = False

    def delete_node(self, name: str) -> None:
        self._enter("delete_node", name)
        with self._lock:
            self.nodes.pop(name, None)

    def apply_firewall(self, name: str, inbound_rules: list[dict[str, Any]] | None) -> None:
        self._enter("apply_firewall", name)
        with self._lock:
            if name in self.nodes:
                self.nodes[name]["firewall"] = inbound_rules
