"""The emulated project's state: one JSON file, rewritten whole after each change.

A project holds a few dozen objects, so rewriting the file is cheap and keeps a restart
(or a crash between two writes) from ever seeing half of a change: the file is replaced
atomically. Objects are kept in their API shape; keys starting with ``_`` are the
emulator's own bookkeeping and never leave it (see ``public``).
"""

from __future__ import annotations

import copy
import json
import os
import threading
from pathlib import Path
from typing import Any

from casera_localcloud.hetzner.errors import not_found

KINDS = ("ssh_keys", "servers", "firewalls", "load_balancers", "actions", "certificates")
_NAMES = {"ssh_keys": "SSH key", "servers": "server", "firewalls": "firewall",
          "load_balancers": "load balancer", "actions": "action",
          "certificates": "certificate"}


class Store:
    def __init__(self, state_dir: Path | None) -> None:
        # RLock: handlers hold it across helper calls that take it again.
        self.lock = threading.RLock()
        self.path = state_dir / "state.json" if state_dir else None
        self.tables: dict[str, dict[int, dict[str, Any]]] = {kind: {} for kind in KINDS}
        self.next_id = 1
        if self.path and self.path.exists():
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        raw = json.loads(self.path.read_text())
        self.next_id = raw["next_id"]
        for kind in KINDS:
            self.tables[kind] = {int(k): v for k, v in raw.get(kind, {}).items()}

    def save(self) -> None:
        if not self.path:
            return
        # Under the lock up to the rename: otherwise an older snapshot could land last.
        with self.lock:
            raw: dict[str, Any] = {"next_id": self.next_id}
            for kind in KINDS:
                raw[kind] = {str(k): v for k, v in self.tables[kind].items()}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text(json.dumps(raw, indent=1, sort_keys=True))
            os.chmod(tmp, 0o600)  # uploaded certificates' private keys live here
            os.replace(tmp, self.path)

    def new_id(self) -> int:
        with self.lock:
            ident = self.next_id
            self.next_id += 1
            return ident

    def table(self, kind: str) -> dict[int, dict[str, Any]]:
        return self.tables[kind]

    def get(self, kind: str, ident: object) -> dict[str, Any]:
        """The stored object (mutable, hold the lock) or ``not_found``."""
        try:
            key = int(str(ident))
        except ValueError:
            raise not_found(_NAMES[kind], ident) from None
        obj = self.tables[kind].get(key)
        if obj is None:
            raise not_found(_NAMES[kind], ident)
        return obj

    def find_by_name(self, kind: str, name: str) -> dict[str, Any] | None:
        return next((o for o in self.tables[kind].values() if o.get("name") == name), None)


def public(obj: Any) -> Any:
    """A deep copy without the emulator's private ``_`` keys, safe to serialise."""
    if isinstance(obj, dict):
        return {k: public(v) for k, v in obj.items() if not k.startswith("_")}
    if isinstance(obj, list):
        return [public(v) for v in obj]
    return copy.copy(obj)
