"""The steady probe the e2e tests and benches run through the LB: what it counts as a failure,
and its bounds (rate, time, loopback only). Against a tiny local HTTP server, no cloud."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest
from http_fixtures import JsonHandler

from casera.steady_probe import SteadyProbe
from casera.steps.api_endpoint import ApiEndpoint


class Items(JsonHandler):
    """Also PUT/GET /uploads/<name> (kept in ``server.files``; GET answers other bytes while
    ``server.garbled`` is set)."""

    def do_PUT(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.files[self.path] = body  # type: ignore[attr-defined]
        self.send_json(201, {"size": len(body)})

    def _upload(self) -> None:
        body = self.server.files.get(self.path)  # type: ignore[attr-defined]
        if body is None:
            self.send_json(404, {"error": "no such upload"})
            return
        if self.server.garbled.is_set():  # type: ignore[attr-defined]
            body = b"garbled"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    """POST /items answers 201 with an id; GET /items/<id> answers 200, or 503 while the
    server's ``broken`` flag is set (a request that fails mid-roll)."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.made += 1  # type: ignore[attr-defined]
        self.send_json(201, {"id": self.server.made})  # type: ignore[attr-defined]

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.startswith("/uploads/"):
            self._upload()
        elif self.server.broken.is_set():  # type: ignore[attr-defined]
            self.send_json(503, {"draining": True})
        else:
            self.send_json(200, {"id": int(self.path.rsplit("/", 1)[1])})


@pytest.fixture()
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Items)
    httpd.made, httpd.broken = 0, threading.Event()  # type: ignore[attr-defined]
    httpd.files, httpd.garbled = {}, threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def endpoint(httpd: ThreadingHTTPServer) -> ApiEndpoint:
    return ApiEndpoint("127.0.0.1", httpd.server_address[1], None, None)


def until(what: str, condition) -> None:
    """Waits on the probe's own rows rather than fixed sleeps: a loaded CI machine may send
    fewer requests in a given time."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"waited 10 s for {what}"
        time.sleep(0.02)


def test_writes_then_reads_what_it_wrote_and_counts_a_503_as_failed(server) -> None:
    with SteadyProbe(endpoint(server), rate=40) as probe:
        until("a read answered", lambda: any(r.ok and r.what == "GET items" for r in probe.rows))
        server.broken.set()
        until("a read refused", lambda: bool(probe.failed()))
        server.broken.clear()
        refused_at = len(probe.rows)
        until("a read answered again", lambda: any(
            r.ok and r.what == "GET items" for r in probe.rows[refused_at:]))
    whats = [r.what for r in probe.rows]
    assert whats[0] == "POST items" and whats[1] == "GET items"  # it reads what it wrote
    failed = probe.failed()
    assert failed and all(r.what == "GET items -> 503" for r in failed), failed
    assert all('"draining": true' in r.detail for r in failed)
    assert server.made == sum(1 for r in probe.rows if r.what == "POST items")


def test_stops_by_itself_after_max_s(server) -> None:
    probe = SteadyProbe(endpoint(server), rate=20, max_s=0.5)
    with probe:
        probe._thread.join(5)  # the block would never end on its own
        assert not probe._thread.is_alive()
    assert 0 < len(probe.rows) <= 20 * 0.5 + 2


def test_refuses_a_rate_above_the_bound_and_a_non_loopback_address() -> None:
    with pytest.raises(ValueError, match="probe rate"):
        SteadyProbe(ApiEndpoint("127.0.0.1", 80, None, None), rate=500)
    with pytest.raises(ValueError, match="loopback"):
        SteadyProbe(ApiEndpoint("10.77.0.11", 80, None, None), rate=1)


def test_with_b2_it_uploads_through_the_api_and_counts_other_bytes_back_as_failed(
        server) -> None:
    with SteadyProbe(endpoint(server), rate=40, b2=True) as probe:
        until("an upload read back", lambda: any(
            r.ok and r.what == "GET uploads" for r in probe.rows))
        server.garbled.set()
        until("a download that differs", lambda: bool(probe.failed()))
    whats = [r.what for r in probe.rows[:4]]
    assert whats == ["POST items", "GET items", "PUT uploads", "GET uploads"], whats
    failed = probe.failed()
    assert failed and all(r.what == "GET uploads -> 200" and "differ" in r.detail for r in failed)
    assert server.files and all(p.startswith("/uploads/steady-probe-") for p in server.files)


def test_without_b2_it_never_uploads(server) -> None:
    with SteadyProbe(endpoint(server), rate=40) as probe:
        until("four requests", lambda: len(probe.rows) >= 4)
    assert not server.files and {r.what for r in probe.rows} <= {"POST items", "GET items"}
