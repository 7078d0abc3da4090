"""A per-environment lock, so two runs never change one environment at once.

A file created with O_EXCL under outputs/<env>/. It records who holds it; a lock whose process
is gone (same host) is reported as stale, and is broken only when asked (``--break-lock``),
because an operator should see that a run died before the next one starts.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from casera.errors import LockHeld
from casera.paths import outputs_dir


@dataclass(frozen=True)
class LockHolder:
    run_id: str
    operator: str
    host: str
    pid: int
    since: str
    runbook: str

    def alive(self) -> bool | None:
        """True/False on this host; None when the holder runs elsewhere (can't tell)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def describe(self) -> str:
        state = {True: "running", False: "STALE: its process is gone", None: "on another host"}
        return (f"run {self.run_id} ({self.runbook}) by {self.operator} on {self.host}, "
                f"pid {self.pid}, since {self.since} [{state[self.alive()]}]")


def lock_path(env: str) -> Path:
    return outputs_dir(env) / ".lock"


def read_holder(env: str) -> LockHolder | None:
    try:
        return LockHolder(**json.loads(lock_path(env).read_text()))
    except FileNotFoundError:
        return None


def acquire(env: str, holder: LockHolder, break_stale: bool = False) -> None:
    path = lock_path(env)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            current = read_holder(env)
            if current is None:
                continue  # released between our open and read: try once more
            if break_stale and current.alive() is False:
                path.unlink(missing_ok=True)
                continue
            hint = (" Break it with --break-lock if that run is really dead."
                    if current.alive() is not True else "")
            raise LockHeld(f"env {env} is locked by {current.describe()}.{hint}") from None
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(holder), handle)
        return
    raise LockHeld(f"could not take the lock {path}; try again")


def release(env: str, run_id: str) -> None:
    current = read_holder(env)
    if current and current.run_id == run_id:
        lock_path(env).unlink(missing_ok=True)
