"""Stand-in for Dozzle: containers on this node and their recent logs, read from the Docker
socket (HTTP over a unix socket, the Engine API), on port 9999.

GET /                      text: every container with its last lines
GET /api/containers        JSON list (id, name, image, state, status)
GET /api/logs/<id>?tail=N  the container's last N log lines as text
GET /healthz               200 when the Docker socket answers, else 503 with the reason
GET /healthcheck           the same, at real Dozzle's path (what `dozzle healthcheck` and the
                           runbook's SSH-tunnel probe ask; amir20/dozzle internal/web/routes.go)

It listens where DOZZLE_ADDR says, as real Dozzle does; the stack sets the node's loopback.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from .common import AppHandler, error_text, serve

DOCKER_SOCKET = os.environ.get("DOCKER_SOCKET", "/var/run/docker.sock")


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def docker_get(path: str) -> bytes:
    conn = UnixHTTPConnection(DOCKER_SOCKET)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status >= 400:
            raise OSError(f"docker {path}: {response.status} {body[:200]!r}")
        return body
    finally:
        conn.close()


def demux(raw: bytes) -> str:
    """Logs of a container without a TTY come framed: 8-byte header (stream, 0, 0, 0, size)."""
    out, pos = [], 0
    while pos + 8 <= len(raw) and raw[pos] in (0, 1, 2) and raw[pos + 1:pos + 4] == b"\0\0\0":
        size = int.from_bytes(raw[pos + 4:pos + 8], "big")
        out.append(raw[pos + 8:pos + 8 + size])
        pos += 8 + size
    if pos == 0:  # a TTY container's log is the plain stream
        return raw.decode(errors="replace")
    return b"".join(out).decode(errors="replace")


def containers() -> list[dict[str, Any]]:
    listed = json.loads(docker_get("/containers/json?all=1"))
    return [{"id": c["Id"][:12], "name": (c.get("Names") or ["?"])[0].lstrip("/"),
             "image": c.get("Image"), "state": c.get("State"), "status": c.get("Status")}
            for c in listed]


def logs(container_id: str, tail: int = 50) -> str:
    return demux(docker_get(f"/containers/{quote(container_id)}/logs"
                            f"?stdout=1&stderr=1&timestamps=1&tail={tail}"))


class Handler(AppHandler):
    server_version = "casera-dozzle-standin"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        tail = int((parse_qs(url.query).get("tail") or ["50"])[0])
        try:
            if url.path in ("/healthz", "/healthcheck"):
                docker_get("/_ping")
                self.send_body(HTTPStatus.OK, b'{"status": "ok"}', "application/json")
            elif url.path == "/api/containers":
                self.send_body(HTTPStatus.OK, json.dumps(containers()).encode(), "application/json")
            elif url.path.startswith("/api/logs/"):
                text = logs(url.path[len("/api/logs/"):], tail)
                self.send_body(HTTPStatus.OK, text.encode(), "text/plain; charset=utf-8")
            elif url.path == "/":
                parts = []
                for c in containers():
                    parts.append(f"== {c['name']} ({c['id']}, {c['image']}): {c['status']}\n")
                    parts.append(logs(c["id"], tail))
                self.send_body(HTTPStatus.OK, "".join(parts).encode(), "text/plain; charset=utf-8")
            else:
                self.send_body(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        except OSError as exc:
            self.send_body(HTTPStatus.SERVICE_UNAVAILABLE,
                       json.dumps({"error": error_text(exc), "socket": DOCKER_SOCKET}).encode(),
                       "application/json")


def main() -> None:
    # DOZZLE_ADDR is real Dozzle's setting, so the stack file sets the same for both.
    host, _, port_text = os.environ.get("DOZZLE_ADDR", ":9999").rpartition(":")
    serve(Handler, host or "0.0.0.0", int(port_text), socket=DOCKER_SOCKET)


if __name__ == "__main__":
    main()
