"""The emulated Neon account's state on disk: one project, its branches and operations.

The API server and ``up()`` (and tests) are separate processes; every change reads, edits and
writes the JSON under an exclusive ``flock``, so neither overwrites the other's change.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from casera_localcloud.neon.config import NeonConfig

State = dict[str, Any]


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def empty_state() -> State:
    return {"project": None, "branches": {}, "operations": {}}


@contextmanager
def locked(cfg: NeonConfig, write: bool = True) -> Iterator[State]:
    """Yield the state under the lock; written back on a clean exit when ``write``."""
    cfg.home.mkdir(parents=True, exist_ok=True)
    lock_path = cfg.home / "state.lock"
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            path = cfg.state_file
            data = json.loads(path.read_text()) if path.exists() else empty_state()
            yield data
            if write:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
                os.chmod(tmp, 0o600)
                tmp.replace(path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read(cfg: NeonConfig) -> State:
    with locked(cfg, write=False) as data:
        return data
