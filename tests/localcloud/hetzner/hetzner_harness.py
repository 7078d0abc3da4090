"""Test harness for the Hetzner emulator: an emulator on a free port with a temporary state
dir and the fake node backend, driven through the real hcloud client, and a checker of its
answers against the OpenAPI spec (the emulator's package data, validation.SPEC_FILE, a copy
of openapi/hcloud.json from the public repo MaximilianKoestler/hcloud-openapi).

A module with a unique name rather than conftest.py, so that ``import`` cannot pick up
another directory's conftest.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import requests
from hcloud import Client
from openapi_schema_validator import OAS30Validator

from casera_localcloud.hetzner import validation
from casera_localcloud.hetzner.app import Emulator
from casera_localcloud.hetzner.fake_backend import FakeNodeBackend
from casera_localcloud.hetzner.server import EmulatorHTTPServer, create_app

TOKEN = "test-token-0123456789"


def _nullable_refs(node: Any) -> Any:
    """Rewrite ``{"allOf": [ref], "nullable": true}`` as ``anyOf [ref, null]``.

    OpenAPI 3.0 leaves open whether ``nullable`` reaches into ``allOf``; Hetzner means it
    does (it answers ``"iso": null``), openapi-schema-validator says it does not. This says
    what Hetzner means, without loosening anything else.
    """
    if isinstance(node, list):
        return [_nullable_refs(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable_refs(value) for key, value in node.items()}
    if node.get("nullable") and len(node.get("allOf", [])) == 1:
        inner = node.pop("allOf")[0]
        node.pop("nullable")
        node["anyOf"] = [inner, {"enum": [None]}]
    return node


@cache
def _spec() -> dict[str, Any]:
    return _nullable_refs(validation.spec())


# Where hcloud 2.27 (the client the runbooks use) expects more than the spec copy says.
NEWER_THAN_SPEC: dict[tuple[str, str, int], dict[str, Any]] = {
    # hcloud reads response["action"] from a Load Balancer delete; the copy says 204.
    ("DELETE", "/load_balancers/{id}", 200): {
        "$ref": "#/components/schemas/delete_server_response"},
}


def response_schema(method: str, template: str | None, status: int) -> dict[str, Any] | None:
    """The spec's schema for this answer; None when the spec expects no body."""
    if template and (override := NEWER_THAN_SPEC.get((method, template, status))):
        return override
    spec = _spec()
    if template is None or template.startswith("/_emulator/"):
        return {"$ref": "#/components/schemas/error_response"} if status >= 400 else None
    responses = spec["paths"][template][method.lower()]["responses"]
    entry = responses.get(str(status)) or responses.get(f"{str(status)[0]}xx")
    assert entry is not None, f"{method} {template}: the spec has no {status} answer"
    content = entry.get("content")
    return content["application/json"]["schema"] if content else None


def schema_errors(method: str, template: str | None, status: int,
                  body: dict[str, Any] | None) -> list[str]:
    schema = response_schema(method, template, status)
    if schema is None:
        return [] if body is None or template is None or template.startswith("/_emulator/") \
            else [f"{method} {template} {status}: body where the spec has none"]
    # The spec's $refs point into its own components; give them to the validator as the
    # root document so "#/components/..." resolves.
    validator = OAS30Validator({**schema, "components": _spec()["components"]})
    return [f"{method} {template} {status}: {'/'.join(map(str, e.absolute_path))}: "
            f"{e.message}" for e in validator.iter_errors(body)]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_port_range(count: int) -> range:
    for _ in range(50):
        start = free_port()
        if start + count > 65535:
            continue
        try:
            for port in range(start, start + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return range(start, start + count)
    raise RuntimeError("no free port range")


@dataclass
class Running:
    app: Emulator
    backend: FakeNodeBackend
    server: EmulatorHTTPServer
    url: str
    state_dir: Path
    answers: list[tuple[str, str | None, int, Any]] = field(default_factory=list)

    def client(self, token: str = TOKEN) -> Client:
        client = Client(token, api_endpoint=self.url, poll_interval=0.05)
        # hcloud sleeps at least 1 s before a retry; the retry itself is what is tested.
        client._client._retry_interval_func = lambda retries: 0.01
        return client

    def raw(self, method: str, path: str, token: str | None = TOKEN,
            **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.request(method, self.url + path, headers=headers, timeout=10, **kwargs)

    def set_faults(self, **values: Any) -> None:
        answer = self.raw("POST", "/_emulator/faults", json=values)
        assert answer.status_code == 200, answer.text

    def idle(self) -> None:
        self.app.actions.wait_idle(timeout=20)


def start(state_dir: Path, backend: FakeNodeBackend, **options: Any) -> Running:
    options.setdefault("node_network", "127.0.0.0/24")
    options.setdefault("lb_ports", free_port_range(5))
    app = create_app(state_dir, backend, **options)
    answers: list[tuple[str, str | None, int, Any]] = []
    lock = threading.Lock()

    def record(method: str, template: str | None, status: int, body: Any) -> None:
        with lock:
            answers.append((method, template, status, body))

    server = EmulatorHTTPServer(app, "127.0.0.1", 0, TOKEN, on_response=record)
    # A short poll interval: shutdown() waits for it, once per test.
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    return Running(app, backend, server, url, state_dir, answers)


def stop_and_check(running: Running) -> None:
    """Stop the emulator, then fail if any answer it gave does not match the spec."""
    running.server.shutdown_all()
    problems = [p for answer in running.answers for p in schema_errors(*answer)]
    assert not problems, "answers that do not match the OpenAPI spec:\n" + "\n".join(problems)
