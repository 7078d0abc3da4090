"""What the e2e modules share: `casera ...` as CI and operators run it, and the local
Hetzner through the official client. A module of its own (not conftest.py), so the test
modules can import it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import requests
from hcloud import Client

from casera.steps.api_endpoint import ApiEndpoint
from casera_localcloud.local_credentials import read_local_secrets

HETZNER = "http://127.0.0.1:18001/v1"


def casera(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "casera.runner.cli", *args],
                          capture_output=True, text=True, timeout=timeout)
    sys.stdout.write(done.stdout[-3000:])
    sys.stderr.write(done.stderr[-3000:])
    return done


def hcloud() -> Client:
    return Client(read_local_secrets()["CASERA_HCLOUD_TOKEN"], api_endpoint=HETZNER)


@dataclass
class ProbeRow:
    start: float  # unix seconds, as casera.load_stats expects
    ms: float
    ok: bool
    what: str
    detail: str = ""


@dataclass
class SteadyProbe:
    """Steady requests through the load balancer (its loopback address only), alternately a
    write (``POST /items``: a row inserted and an Asynq job enqueued) and a read of what it
    wrote (``GET /items/<id>``, through the pooler), at most ``rate`` a second and for at most
    ``max_s`` seconds: bounded, never a load test. Use as a context manager; ``rows`` has
    every request, ``failed`` the failures.

    Not ``/readyz``: a stopping api task answers it 503 on purpose while it still serves
    everything else (the drain that takes it out of the LB's rotation), so a readiness probe
    through the LB would count the drain working as requests failing."""

    api: ApiEndpoint
    rate: float = 4.0
    max_s: float = 1500.0
    rows: list[ProbeRow] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        if not self.api.address.startswith("127."):
            raise ValueError(f"the probe only sends to loopback, not {self.api.address}")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _one(self, session: requests.Session, method: str, path: str, want: int,
             body: dict[str, str] | None = None) -> requests.Response | None:
        started, t0 = time.time(), time.monotonic()
        detail, answer = "", None
        try:
            answer = session.request(method, self.api.url(path), json=body, timeout=10)
            ok = answer.status_code == want
            detail = "" if ok else f"HTTP {answer.status_code} {answer.text[:80]}"
        except requests.RequestException as exc:
            ok, detail = False, f"{type(exc).__name__}: {str(exc)[:120]}"
        self.rows.append(ProbeRow(started, (time.monotonic() - t0) * 1000, ok,
                                  f"{method} /{path.split('/')[1]}", detail))
        return answer if ok else None

    def _run(self) -> None:
        session = self.api.requests_session()
        deadline = time.monotonic() + self.max_s
        write, last_id = True, None
        while not self.stop.is_set() and time.monotonic() < deadline:
            began = time.monotonic()
            if write or last_id is None:
                made = self._one(session, "POST", "/items", 201, {"name": "e2e-probe"})
                last_id = int(made.json()["id"]) if made is not None else last_id
            else:
                self._one(session, "GET", f"/items/{last_id}", 200)
            write = not write
            self.stop.wait(max(0.0, 1 / self.rate - (time.monotonic() - began)))

    @property
    def failed(self) -> list[ProbeRow]:
        return [row for row in self.rows if not row.ok]

    def __enter__(self) -> SteadyProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(timeout=15)
