"""The locustfile the load test runs (``locust -f`` this file, in its own process: locust
monkey-patches the standard library with gevent on import, which a Jupyter kernel, or any
process that imported ssl first, must not suffer; so this folder is no package and nothing
imports it). Everything it needs comes from the environment that :mod:`load_generator` sets:

CASERA_LOAD_BASE_URL   the LB's address (https://127.0.1.1:443)
CASERA_LOAD_HOSTNAME   the API's hostname: TLS name checked, SNI and Host sent (may be empty)
CASERA_LOAD_CA_FILE    the only CA trusted (the origin CA); empty: plain http
CASERA_LOAD_STAGES     JSON [[end_s, users, spawn_rate], ...]: the profile's shape
CASERA_LOAD_RATE       requests/s per user at most (constant_throughput)
CASERA_LOAD_WRITE_SHARE share of POST /items among the requests
CASERA_LOAD_LOG        every request as one line: start (unix s), name, ms, ok (1/0), status
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

from locust import HttpUser, LoadTestShape, constant_throughput, events, task
from requests.adapters import HTTPAdapter

BASE_URL = os.environ.get("CASERA_LOAD_BASE_URL", "http://127.0.0.1")
HOSTNAME = os.environ.get("CASERA_LOAD_HOSTNAME") or None
CA_FILE = os.environ.get("CASERA_LOAD_CA_FILE") or None
STAGES: list[list[float]] = json.loads(os.environ.get("CASERA_LOAD_STAGES", "[[10, 1, 1]]"))
RATE = float(os.environ.get("CASERA_LOAD_RATE", "1"))
WRITE_SHARE = float(os.environ.get("CASERA_LOAD_WRITE_SHARE", "0"))
_items: list[int] = []
_logs: list[Any] = []


def _log() -> Any:
    if not _logs:  # opened on the first request: importing this module writes nothing
        _logs.append(open(os.environ.get("CASERA_LOAD_LOG", os.devnull), "a",  # noqa: SIM115
                          buffering=1 << 16))
    return _logs[0]


@events.request.add_listener
def _record(request_type: str, name: str, response_time: float, response: Any = None,
            exception: BaseException | None = None, start_time: float | None = None,
            **_: Any) -> None:
    status = getattr(response, "status_code", 0) or 0
    _log().write(f"{start_time or 0:.3f}\t{request_type} {name}\t{response_time:.1f}\t"
               f"{0 if exception else 1}\t{status}\n")


@events.quitting.add_listener
def _close(**_: Any) -> None:
    for log in _logs:
        log.flush()


class _PinnedAdapter(HTTPAdapter):
    """The LB's address in the URL, the API's hostname checked (as ApiEndpoint does)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        if HOSTNAME and CA_FILE:
            kwargs.update(server_hostname=HOSTNAME, assert_hostname=HOSTNAME)
        super().init_poolmanager(*args, **kwargs)


class ApiUser(HttpUser):
    host = BASE_URL
    wait_time = constant_throughput(RATE)

    def on_start(self) -> None:
        self.client.trust_env = False
        self.client.mount(BASE_URL, _PinnedAdapter())
        if HOSTNAME:
            self.client.headers["Host"] = HOSTNAME
        if CA_FILE:
            self.client.verify = CA_FILE

    @task
    def mix(self) -> None:
        if random.random() < WRITE_SHARE:
            answer = self.client.post("/items", json={"name": "load-test"}, name="/items")
            if answer.status_code == 201:
                _items.append(int(answer.json()["id"]))
                del _items[:-1000]
        elif _items and random.random() < 0.5:
            self.client.get(f"/items/{random.choice(_items)}", name="/items/[id]")
        else:
            self.client.get("/readyz", name="/readyz")


class StagedShape(LoadTestShape):
    """Users per stage; stops after the last stage's end (the profile's time bound)."""

    def tick(self) -> tuple[int, float] | None:
        now = self.get_run_time()
        for end, users, spawn_rate in STAGES:
            if now < end:
                return int(users), float(spawn_rate)
        return None
