"""A steady, bounded probe through the load balancer, for the benches and the e2e tests that
must show a change loses no request (scale-out, scale-in, a killed node): alternately a write
(``POST /items``: a row inserted and an Asynq job enqueued) and a read of what it wrote
(``GET /items/<id>``, through the pooler), at most ``MAX_RATE_PER_S`` requests a second, for at
most ``max_s`` seconds, to a loopback address only (never a load test, never anyone else's
host).

With ``b2=True`` every other pair is an upload through the api instead (``PUT
/uploads/<name>``, then ``GET`` of it, byte-compared): the api's own B2 key at work, what a
B2 key rotation must not break.

Not ``/readyz``: a stopping api task answers it 503 on purpose while it still serves everything
else (the drain that takes it out of the LB's rotation), so a readiness probe through the LB
would count the drain working as requests failing."""

from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import dataclass, field

import requests

from casera.load_stats import Figures, figures
from casera.steps.api_endpoint import ApiEndpoint

MAX_RATE_PER_S = 50.0


@dataclass
class Row:
    start: float  # unix seconds, as casera.load_stats expects
    ms: float
    ok: bool
    what: str = ""
    detail: str = ""  # why it failed: the status and the start of the body, or the exception


@dataclass
class SteadyProbe:
    """``with SteadyProbe(api, rate) as probe:`` sends until the block ends; ``rows`` holds
    every request, ``failed()`` the ones that did not answer as expected."""

    api: ApiEndpoint
    rate: float = 5.0
    max_s: float = 1800.0  # a probe whose block never ends still stops
    b2: bool = False  # also uploads and downloads through the api (its B2 key)
    rows: list[Row] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        if not 0 < self.rate <= MAX_RATE_PER_S:
            raise ValueError(f"probe rate must be in (0, {MAX_RATE_PER_S:g}] requests a "
                             f"second, got {self.rate}")
        if not ipaddress.ip_address(self.api.address).is_loopback:
            raise ValueError(f"the probe sends to loopback addresses only, not "
                             f"{self.api.address}")
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._uploaded: dict[str, bytes] = {}  # path -> what its last acknowledged PUT sent

    def _one(self, session: requests.Session, method: str, path: str,
             want: int, body: dict | bytes | None = None) -> requests.Response | None:
        started, t0 = time.time(), time.monotonic()
        answer: requests.Response | None = None
        detail = ""
        try:
            answer = session.request(method, self.api.url(path), timeout=10,
                                     **({"data": body} if isinstance(body, bytes) else
                                        {"json": body}))
            ok = answer.status_code == want
            detail = "" if ok else f"HTTP {answer.status_code} {answer.text[:80]}"
            if ok and method == "GET" and isinstance(self._uploaded.get(path), bytes):
                ok = answer.content == self._uploaded[path]
                detail = "" if ok else "downloaded bytes differ from the upload"
        except requests.RequestException as exc:
            ok, detail = False, f"{type(exc).__name__}: {str(exc)[:120]}"
        # A Response is falsy for a 4xx or 5xx: compare it with None, never test it as a bool.
        status = "error" if answer is None else answer.status_code
        self.rows.append(Row(started, (time.monotonic() - t0) * 1000, ok,
                             f"{method} {path.split('/')[1]}" + ("" if ok else f" -> {status}"),
                             detail))
        return answer if ok else None

    def run(self) -> None:
        session = self.api.requests_session()
        last_id: int | None = None
        deadline = time.monotonic() + self.max_s
        n = 0
        while not self.stop.is_set() and time.monotonic() < deadline:
            began = time.monotonic()
            step = n % (4 if self.b2 else 2)
            if step == 0 or (step == 1 and last_id is None):
                made = self._one(session, "POST", "/items", 201, {"name": "steady-probe"})
                last_id = int(made.json()["id"]) if made is not None else last_id
            elif step == 1:
                self._one(session, "GET", f"/items/{last_id}", 200)
            else:
                # A few names, each rewritten (B2 keeps every version): read what was written.
                path = f"/uploads/steady-probe-{(n // 4) % 4}"
                if step == 2:
                    data = f"steady probe {n} {began}".encode()
                    if self._one(session, "PUT", path, 201, data) is not None:
                        self._uploaded[path] = data
                elif path in self._uploaded:
                    self._one(session, "GET", path, 200)
            n += 1
            self.stop.wait(max(0.0, 1 / self.rate - (time.monotonic() - began)))

    def __enter__(self) -> SteadyProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(15)

    def failed(self) -> list[Row]:
        return [r for r in self.rows if not r.ok]

    def figures(self, since: float = 0.0, until: float = float("inf")) -> Figures | None:
        rows = [r for r in self.rows if since <= r.start < until]
        return figures(rows) if rows else None  # type: ignore[arg-type]


def summary(label: str, f: Figures | None) -> str:
    if f is None:
        return f"{label}: no requests"
    return (f"{label}: {f.requests} requests, {f.errors} failed ({f.error_ratio:.2%}), "
            f"p99 {f.p99_ms:.0f} ms")
