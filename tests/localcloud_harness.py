"""What tests that start their own piece of the local cloud share: free ports, environment
switching, and a private local Neon (real PostgreSQL + PgBouncer + the API) on free ports
with its own CASERA_LOCAL_HOME and project dir, so it runs beside an operator's local cloud
and never touches the checkout's secrets/local.env.

Importable from every test folder: tests/conftest.py puts tests/ on sys.path.
"""

from __future__ import annotations

import http.client
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Ports a local Neon uses, as offsets from its base: the main compute, branch computes, the
# pooler, branch poolers. The API's offset is the caller's (see local_neon).
NEON_PORT_OFFSETS = (0, 1, 2, 3, 20, 21, 22, 23)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def raw_request(port: int, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None,
                timeout: float = 10) -> tuple[int, str, bytes]:
    """(status, Content-Type, body) of one request to 127.0.0.1:``port`` over plain HTTP with
    exactly ``headers``: what a client that skips the vendor SDK's own checks sends."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, answer.getheader("Content-Type") or "", answer.read()
    finally:
        connection.close()


def raw_exchange(port: int, request: bytes, host: str = "127.0.0.1") -> bytes:
    """All a server answers to ``request`` sent as bytes, until it closes the connection:
    for requests no HTTP client library would send (a malformed line, a huge header)."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port_base(offsets: tuple[int, ...], shift: int = 0) -> int:
    """A base port with ``base + offset`` free for every offset, in blocks of 100 from 20000.
    The first block comes from the pid so parallel sessions rarely collide; ``shift`` moves
    within a block, so two users of one session (0 and 50) stay apart."""
    start = 20000 + (os.getpid() % 150) * 100 + shift
    for base in range(start, 40000, 100):
        if all(port_free(base + off) for off in offsets):
            return base
    raise RuntimeError(f"no free port range for offsets {offsets} from {start}")


@contextmanager
def applied(environ: dict[str, str | None]) -> Iterator[None]:
    """Set (None: unset) environment variables for a while, then put them back, so other
    parts' tests in the same session never see a private CASERA_LOCAL_HOME."""
    saved = {name: os.environ.get(name) for name in environ}
    for name, value in environ.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class LocalNeon:
    root: Path
    base: int
    api_port: int
    environ: dict[str, str | None]
    api_key: str
    password: str
    up_lines: list[str]
    up_seconds: float

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def project_dir(self) -> Path:
        return self.root / "project"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/api/v2"

    @property
    def ca_file(self) -> Path:
        return self.home / "neon" / "tls" / "ca.crt"


@contextmanager
def local_neon(root: Path, *, api_offset: int, shift: int = 0,
               listen_extra: str | None = None) -> Iterator[LocalNeon]:
    """``neon.up()`` under ``root`` on free ports (the API at base + ``api_offset``), and
    ``neon.down(purge=True)`` after. The variables are applied only around up and down: wrap
    the code that needs them in ``applied(neon.environ)``."""
    from casera_localcloud import neon
    from casera_localcloud.local_credentials import read_local_secrets

    os.chmod(root, 0o755)  # PostgreSQL runs as postgres and must walk down to its data
    base = free_port_base((*NEON_PORT_OFFSETS, api_offset), shift)
    environ: dict[str, str | None] = {
        "CASERA_LOCAL_HOME": str(root / "home"),
        "CASERA_PROJECT_DIR": str(root / "project"),
        "CASERA_NEON_PG_PORT": str(base),
        "CASERA_NEON_BRANCH_PORT_BASE": str(base + 1),
        "CASERA_NEON_POOLER_PORT": str(base + 20),
        "CASERA_NEON_API_PORT": str(base + api_offset),
        "CASERA_NEON_LISTEN_EXTRA": listen_extra,
        "CASERA_NEON_PLAN": None,
        "CASERA_DB_PASSWORD": None,
        "CASERA_NEON_API_KEY": None,
    }
    try:
        with applied(environ):
            started = time.monotonic()
            lines = neon.up()
            up_seconds = time.monotonic() - started
            secrets = read_local_secrets()
        yield LocalNeon(root=root, base=base, api_port=base + api_offset, environ=environ,
                        api_key=secrets["CASERA_NEON_API_KEY"],
                        password=secrets["CASERA_DB_PASSWORD"], up_lines=lines,
                        up_seconds=up_seconds)
    finally:
        with applied(environ):
            print("\n".join(neon.down(purge=True)))
