"""The plumbing every HTTP emulator shares (casera_localcloud.http_server): every method goes
through ``dispatch``, http.server's own refusals come back in the vendor's JSON, HEAD has no
body, and a Content-Length that is not ``1*DIGIT`` is refused before a byte is read."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from localcloud_harness import raw_exchange, raw_request

from casera_localcloud.http_server import BaseEmulatorServer, JsonHandler, strict_json


class Echo(JsonHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass

    def refusal(self, code: int, message: str | None,
                explain: str | None) -> tuple[int, object]:
        return 418, {"refused": code}

    def dispatch(self) -> None:
        length = self.body_length()
        if length is None:
            self.close_connection = True
            self.send_json(400, {"bad_length": self.headers.get("Content-Length")})
            return
        self.send_json(200, {"method": self.command, "bytes": len(self.rfile.read(length))})


@pytest.fixture
def port() -> Iterator[int]:
    server = BaseEmulatorServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_every_method_reaches_dispatch(port: int, method: str) -> None:
    status, kind, body = raw_request(port, method, "/x", b"abc", {"Content-Length": "3"})
    assert (status, kind) == (200, "application/json")
    assert json.loads(body) == {"method": method, "bytes": 3}


def test_head_answers_headers_only(port: int) -> None:
    answer = raw_exchange(port, b"HEAD /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: " in head, head
    assert body == b""


# Spaces around the value are optional whitespace that the header parser drops (RFC 9110,
# section 5.5), so " 3" is a valid 3; a sign, a hex or decimal form, or an Arabic-Indic digit
# (which str.isdigit() accepts and int() would read) is not.
@pytest.mark.parametrize("length", ["+3", "-1", "0x3", "3.0", "\u0663"])
def test_a_length_that_is_not_digits_is_refused(port: int, length: str) -> None:
    request = (f"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\nabc"
               .encode())
    head, _, body = raw_exchange(port, request).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert set(json.loads(body)) == {"bad_length"}


def test_what_http_server_refuses_comes_back_as_the_vendors_json(port: int) -> None:
    for request in (b"BREW /x HTTP/1.1\r\nHost: x\r\n\r\n",  # no do_BREW: 501
                    b"GET /x HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n"):
        head, _, body = raw_exchange(port, request).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 418") and b"Connection: close" in head, head
        assert json.loads(body)["refused"] in (400, 431, 501)


@pytest.mark.parametrize("text", [b"NaN", b"[Infinity]", b"1e400", b'{"a": -Infinity}'])
def test_strict_json_refuses_what_is_not_json(text: bytes) -> None:
    with pytest.raises(ValueError):
        strict_json(text)
