"""The emulator's state: one JSON file, rewritten atomically on every change.

A few zones and a handful of records fit in memory many times over; JSON keeps the state
readable with ``jq`` while debugging a runbook. Only the serving process writes it;
``service`` reads it (for the token) when no emulator is running.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
TOKEN_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


def new_id() -> str:
    """Cloudflare's identifiers: 32 lowercase hex digits."""
    return secrets.token_hex(16)


def new_token() -> str:
    """40 characters from the alphabet Cloudflare's API tokens use."""
    return "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(40))


def now() -> str:
    """Cloudflare's timestamp form, microseconds and a Z."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def state_path(state_dir: Path) -> Path:
    return Path(state_dir) / STATE_FILE


def read_state(state_dir: Path) -> dict[str, Any]:
    """The state on disk, or an empty one; read-only use outside the serving process."""
    path = state_path(state_dir)
    if not path.exists():
        return {}
    return json.loads(path.read_text())


class Store:
    """Zones, records and tokens, guarded by one lock so that a check-then-create (the
    duplicate and CNAME rules) cannot interleave with another request's."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        data = read_state(self.state_dir)
        self.account: dict[str, str] = data.get("account") or {
            "id": new_id(), "name": "casera-local"}
        self.tokens: list[str] = list(data.get("tokens") or [])
        self.zones: dict[str, dict[str, Any]] = dict(data.get("zones") or {})
        self.records: dict[str, dict[str, Any]] = dict(data.get("records") or {})
        if not data:
            self.save()

    def save(self) -> None:
        with self.lock:
            payload = {"account": self.account, "tokens": self.tokens, "zones": self.zones,
                       "records": self.records}
            path = state_path(self.state_dir)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(payload, indent=1, sort_keys=True))
            # The file holds the API token: owner-only, like secrets/local.env.
            os.chmod(tmp, 0o600)
            tmp.replace(path)

    def ensure_token(self, token: str) -> bool:
        with self.lock:
            if token in self.tokens:
                return False
            self.tokens.append(token)
            self.save()
            return True

    def zone_by_name(self, name: str) -> dict[str, Any] | None:
        name = name.lower().rstrip(".")
        return next((z for z in self.zones.values() if z["name"] == name), None)

    def ensure_zone(self, name: str) -> tuple[dict[str, Any], bool]:
        with self.lock:
            found = self.zone_by_name(name)
            if found:
                return found, False
            stamp = now()
            zone = {"id": new_id(), "name": name.lower().rstrip("."), "status": "active",
                    "paused": False, "type": "full", "created_on": stamp,
                    "modified_on": stamp, "activated_on": stamp}
            self.zones[zone["id"]] = zone
            self.save()
            return zone, True
