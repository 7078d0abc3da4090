"""What the HTTP emulators (B2, Cloudflare, Hetzner, the Neon API) share: a threaded server,
a handler that answers every method through one ``dispatch()`` and always in JSON, and the
foreground loop that a SIGTERM from ``casera local down`` ends cleanly.

What stays in each emulator is what its vendor decides: routes, auth, the error shape
(``refusal``), the body's framing limits. Only the plumbing that was the same in all four
lives here.
"""

from __future__ import annotations

import json
import math
import signal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType


class BaseEmulatorServer(ThreadingHTTPServer):
    # Handler threads must not keep ``down`` waiting on a client's kept-alive connection.
    daemon_threads = True
    allow_reuse_address = True


class JsonHandler(BaseHTTPRequestHandler):
    """Every method, known to the vendor or not, goes through ``dispatch()``: an unknown path
    must answer the vendor's 404 and a known one its 405 (or whatever it sends), never
    http.server's HTML 501."""

    # Every SDK the runbooks use (requests, httpx, b2sdk) keeps connections alive.
    protocol_version = "HTTP/1.1"
    content_type = "application/json"

    def dispatch(self) -> None:
        raise NotImplementedError

    def refusal(self, code: int, message: str | None,
                explain: str | None) -> tuple[int, object]:
        """The vendor's (status, JSON body) for what http.server refuses by itself (a
        malformed request line or header; 501 for a method without a ``do_*``)."""
        raise NotImplementedError

    def answer_headers(self) -> dict[str, str]:
        """Headers the vendor adds to every answer."""
        return {}

    def do_GET(self) -> None:  # noqa: N802 - names fixed by BaseHTTPRequestHandler
        self.dispatch()

    def do_HEAD(self) -> None:  # noqa: N802
        self.dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self.dispatch()

    def do_PUT(self) -> None:  # noqa: N802
        self.dispatch()

    def do_PATCH(self) -> None:  # noqa: N802
        self.dispatch()

    def do_DELETE(self) -> None:  # noqa: N802
        self.dispatch()

    def do_OPTIONS(self) -> None:  # noqa: N802
        self.dispatch()

    def body_length(self) -> int | None:
        """The request's Content-Length (0 without one), or None when it is not a byte count:
        ``1*DIGIT`` (RFC 9110, section 8.6), so no sign, space or non-ASCII digit."""
        text = self.headers.get("Content-Length") or "0"
        return int(text) if text.isascii() and text.isdigit() else None

    def send_json(self, status: int, payload: object,
                  headers: dict[str, str] | None = None) -> None:
        """Answer ``payload`` as JSON (None: an empty body, no Content-Type). Always with
        Content-Length, which a kept-alive connection needs; a HEAD answer carries the
        headers of the GET and no body (RFC 9110, section 9.3.2)."""
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        if payload is not None:
            self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in {**self.answer_headers(), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if getattr(self, "command", None) != "HEAD":
            self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """http.server's own refusals would be an HTML page; a client of the vendor's API
        parses its JSON error. The request could not be parsed, so nothing follows it on
        this connection."""
        self.log_error("refused: %d %s", code, message)
        self.close_connection = True
        status, body = self.refusal(code, message, explain)
        try:
            self.send_json(status, body, {"Connection": "close"})
        except OSError:
            pass  # the client is gone; nothing to tell it


def strict_json(raw: bytes) -> object:
    """``json.loads`` as a JSON parser: Python's accepts NaN and Infinity, which are not JSON
    (RFC 8259, section 6), and turns 1e400 into inf. Raises ValueError (RecursionError for
    absurd nesting)."""
    return json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:40]} is out of range")
    return number


def serve_until_stopped(server: ThreadingHTTPServer) -> None:
    """Serve in the foreground until SIGINT or SIGTERM (what ``process.stop`` sends), then
    close the listening socket; the caller closes what the server used."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
