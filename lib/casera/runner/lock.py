"""The environment lock, held in the environment itself, so two runs never change one
environment at once: not two runs in one checkout, nor CI and an operator's laptop.

The lock is a Hetzner Cloud Firewall named ``casera-lock-<env>`` with no rules and no targets
(it filters nothing, and applies to no server), created in the environment's own Hetzner
project. A firewall's name "Must be unique per Project" (the create-firewall schema of
Hetzner's OpenAPI, copied in lib/casera_localcloud/hetzner/data/hcloud-openapi.json), so the
create is the atomic test-and-set: the API answers ``uniqueness_error`` (409) to the second
creator (https://docs.hetzner.cloud/reference/cloud#errors), and that is "held". Who holds it is in
the firewall's labels: run id, operator, host, pid, runbook and start time. Hetzner's label
values are at most 63 characters of ``[a-zA-Z0-9._-]``, beginning and ending alphanumeric
(https://docs.hetzner.cloud/reference/cloud#labels), so values are folded into that alphabet.
A project may hold 50 firewalls (https://docs.hetzner.com/cloud/firewalls/faq/); the lock uses
one per environment while a run lasts.

A lock whose holder died is never broken silently: it is reported with its holder and age,
and broken only with ``--break-lock`` (refused even then while its process still runs on this
host), because an operator should see that a run died before the next one starts.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

from casera.errors import CaseraError, LockHeld, ProviderError

if TYPE_CHECKING:
    from casera.operator_secrets import SecretStore
    from casera.params import Params
    from casera.providers.hetzner import Firewall, Hetzner

T = TypeVar("T")

LOCK_PREFIX = "casera-lock-"
LABEL_KEYS = ("run", "operator", "host", "pid", "runbook", "since")
_LABEL_OUTSIDE = re.compile(r"[^a-zA-Z0-9._-]+")
_STAMP = "%Y%m%dT%H%M%SZ"


def label_value(text: str) -> str:
    """``text`` as a valid Hetzner label value: other characters become ``_``, at most 63,
    alphanumeric at both ends."""
    folded = _LABEL_OUTSIDE.sub("_", text)[:63]
    return re.sub(r"^[^a-zA-Z0-9]+|[^a-zA-Z0-9]+$", "", folded)


def lock_name(env: str) -> str:
    return f"{LOCK_PREFIX}{env}"


def this_host() -> str:
    return label_value(socket.gethostname())


@dataclass(frozen=True)
class LockHolder:
    run_id: str
    operator: str
    host: str
    pid: int
    since: str  # UTC, 20260101T120000Z
    runbook: str

    @classmethod
    def for_this_process(cls, run_id: str, operator: str, runbook: str) -> LockHolder:
        return cls(run_id=label_value(run_id), operator=label_value(operator) or "unknown",
                   host=this_host(), pid=os.getpid(),
                   since=datetime.now(UTC).strftime(_STAMP), runbook=label_value(runbook))

    def labels(self) -> dict[str, str]:
        values = (self.run_id, self.operator, self.host, str(self.pid), self.runbook,
                  self.since)
        return {"casera-lock": "true"} | {
            f"casera-lock-{key}": label_value(value)
            for key, value in zip(LABEL_KEYS, values, strict=True)}

    @classmethod
    def from_labels(cls, labels: dict[str, str]) -> LockHolder:
        get = {key: labels.get(f"casera-lock-{key}", "") for key in LABEL_KEYS}
        pid = int(get["pid"]) if get["pid"].isdigit() else -1
        return cls(run_id=get["run"] or "?", operator=get["operator"] or "?",
                   host=get["host"] or "?", pid=pid, since=get["since"] or "?",
                   runbook=get["runbook"] or "?")

    def alive(self) -> bool | None:
        """True/False on this host; None when the holder runs elsewhere (can't tell)."""
        if self.host != this_host() or self.pid <= 0:
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def age(self) -> str:
        try:
            started = datetime.strptime(self.since, _STAMP).replace(tzinfo=UTC)
        except ValueError:
            return "age unknown"
        seconds = int((datetime.now(UTC) - started).total_seconds())
        hours, rest = divmod(max(seconds, 0), 3600)
        return f"{hours}h {rest // 60:02d}m ago" if hours else f"{rest // 60}m {rest % 60:02d}s ago"

    def describe(self) -> str:
        state = {True: "running", False: "STALE: its process is gone",
                 None: "on another host, cannot tell whether it still runs"}
        return (f"run {self.run_id} ({self.runbook}) by {self.operator} on {self.host}, "
                f"pid {self.pid}, since {self.since} ({self.age()}) [{state[self.alive()]}]")


class EnvLock:
    """The lock of one environment, in the Hetzner project ``hz`` talks to."""

    def __init__(self, env: str, hz: Hetzner) -> None:
        self.env, self.hz, self.name = env, hz, lock_name(env)
        self.where = hz.where or "the env's Hetzner project"

    def _read(self) -> Firewall | None:
        return self._call(lambda: self.hz.firewalls.get(self.name))

    def _call(self, call: Callable[[], T]) -> T:
        # The provider names the call and the endpoint; the lock says it was the lock's.
        try:
            return call()
        except ProviderError as exc:
            text = str(exc).removeprefix(f"{exc.system}: ").removesuffix(f" (code {exc.code})")
            raise ProviderError(exc.system, f"env lock: {text}", exc.code, exc.details) from None

    def holder(self) -> LockHolder | None:
        found = self._read()
        return LockHolder.from_labels(found.labels) if found else None

    def acquire(self, holder: LockHolder, break_stale: bool = False,
                grace_s: float = 10.0) -> None:
        """Take the lock or raise :class:`LockHeld` naming its holder. Re-entrant for the same
        run id (a kernel that runs its first cell again keeps the lock it has)."""
        for _ in range(4):
            if self._call(lambda: self.hz.firewalls.create_unique(self.name,
                                                                  holder.labels())):
                return
            found = self._read()
            if found is None:
                continue  # released between our create and read: try again
            current = LockHolder.from_labels(found.labels)
            if current.run_id == holder.run_id and current.host == holder.host:
                return
            if current.alive() is False and grace_s > 0 and not break_stale:
                # A kernel killed a moment ago: its watcher is about to release the lock.
                grace_s = self._wait_for_release(grace_s)
                continue
            if break_stale and current.alive() is not True:
                # Deleting by id: if someone else broke and retook it meanwhile, that is a new
                # firewall with a new id, and our create below meets it as held.
                self._call(lambda f=found: self.hz.firewalls.delete(f))
                continue
            if current.alive() is True and break_stale:
                hint = " Its process still runs on this host: --break-lock does not break it."
            elif current.alive() is True:
                hint = ""
            else:
                hint = (" If that run is really dead, break the lock with --break-lock"
                        f" (or delete the firewall {self.name} in the Hetzner console).")
            raise LockHeld(f"env {self.env} is locked by {current.describe()}.{hint}")
        raise LockHeld(f"could not take the lock {self.name} of env {self.env}; try again")

    def _wait_for_release(self, seconds: float) -> float:
        """Wait until the lock is gone or ``seconds`` pass; returns 0 (the grace is spent)."""
        import time

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._read() is None:
                break
            time.sleep(0.5)
        return 0.0

    def release(self, run_id: str) -> bool:
        """Delete the lock if this run holds it; True when it did."""
        found = self._read()
        if found is None:
            return False
        current = LockHolder.from_labels(found.labels)
        if current.run_id != label_value(run_id):
            return False
        return self._call(lambda: self.hz.firewalls.delete(found))


def env_lock(env: str, params: Params, secrets: SecretStore) -> EnvLock:
    """The lock of ``env``, in the Hetzner project of its params and token."""
    from casera.providers import hetzner

    if not secrets.has("hcloud_token"):
        # The same message as any missing secret: names the variable and the file.
        try:
            secrets.get("hcloud_token")
        except CaseraError as exc:
            raise CaseraError(f"the env lock lives in Hetzner: {exc}") from None
    return EnvLock(env, hetzner.for_env(params, secrets, timeout=15.0))


# Set by the runner for the kernel it starts: ``start_run`` then knows the runner holds the
# lock for this run id and does not take it again.
RUNNER_LOCK_ENV = "CASERA_RUNNER_LOCK_RUN_ID"


def release_when_parent_exits(env: str, run_id: str, api_endpoint: str) -> None:
    """Start a small watcher that releases this run's lock once this process is gone.

    For kernels: nbval and JupyterLab's restart kill them outright (SIGKILL), so no atexit
    runs. The watcher sits in its own session (a kill of the kernel's process group does not
    reach it) and notices its parent's end when it is re-parented, which a zombie kernel
    cannot hide.
    """
    import subprocess
    import sys

    subprocess.Popen([sys.executable, "-m", "casera.runner.lock", env, run_id, api_endpoint,
                      str(os.getpid())], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)


def _watch(env: str, run_id: str, api_endpoint: str, parent: int) -> None:
    import time

    from casera.operator_secrets import SecretStore
    from casera.providers import hetzner

    while os.getppid() == parent:
        time.sleep(0.2)
    hz = hetzner.connect(api_endpoint, SecretStore(env).get("hcloud_token"), timeout=15.0)
    EnvLock(env, hz).release(run_id)


if __name__ == "__main__":
    import sys

    _watch(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
