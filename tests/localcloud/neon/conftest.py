"""A private local Neon for the test session: its own CASERA_LOCAL_HOME, project dir (so the
real secrets/local.env is untouched) and ports, so it runs beside an operator's local cloud.

Allowlist tests need a client whose address is not loopback: every loopback client comes
from 127.0.0.1, so the session makes a network namespace (``casera_localcloud.neon.netns``).
The local Neon listens on the namespace's host end because the session adds it to
CASERA_NEON_LISTEN_EXTRA before ``up()``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from casera_localcloud.neon.netns import Netns
from casera_localcloud.neon.netns import create as make_netns
from casera_localcloud.neon.netns import remove as remove_netns


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _pick_base() -> int:
    # Ports used: base (main), base+1.. (branches), base+20 (pooler), base+21.. (branch
    # poolers), base+50 (API). Start from the pid so parallel sessions rarely collide.
    start = 20000 + (os.getpid() % 150) * 100
    for base in range(start, 40000, 100):
        if all(_free(base + off) for off in (0, 1, 2, 3, 20, 21, 22, 23, 50)):
            return base
    raise RuntimeError("no free port range for the test Neon")


@dataclass
class NeonEnv:
    home: Path
    project_dir: Path
    base: int
    api_url: str
    api_key: str
    password: str
    ca_file: Path
    netns: Netns
    up_seconds: float
    environ: dict[str, str | None]

    @property
    def pg_port(self) -> int:
        return self.base

    @property
    def pooler_port(self) -> int:
        return self.base + 20

    def api(self, method: str, path: str, body: dict[str, Any] | None = None,
            token: str | None = "default") -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {self.api_key if token == 'default' else token}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.api_url + path, data=data, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    def conninfo(self, port: int, **extra: Any) -> dict[str, Any]:
        info: dict[str, Any] = {"host": "127.0.0.1", "port": port, "user": "casera",
                                "password": self.password, "dbname": "casera",
                                "sslmode": "require"}
        info.update(extra)
        return info


@contextmanager
def applied(environ: dict[str, str | None]) -> Iterator[None]:
    """Set (or, for None, unset) variables for a while. Only while the Neon tests run, so
    other parts' tests in the same session never see this private CASERA_LOCAL_HOME."""
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


@pytest.fixture(scope="session")
def neon_session() -> Iterator[NeonEnv]:
    if os.geteuid() != 0:
        pytest.skip("the local Neon runs PostgreSQL as the postgres user: needs root")
    if not shutil.which("nsenter"):
        pytest.skip("nsenter is needed for the allowlist client")
    root = Path(tempfile.mkdtemp(prefix="casera-neon-test-", dir="/tmp"))
    # The postgres user must traverse down to its data directories.
    os.chmod(root, 0o755)
    base = _pick_base()
    netns = make_netns(f"t{os.getpid()}")
    environ: dict[str, str | None] = {
        "CASERA_LOCAL_HOME": str(root / "home"),
        "CASERA_PROJECT_DIR": str(root / "project"),
        "CASERA_NEON_PG_PORT": str(base),
        "CASERA_NEON_BRANCH_PORT_BASE": str(base + 1),
        "CASERA_NEON_POOLER_PORT": str(base + 20),
        "CASERA_NEON_API_PORT": str(base + 50),
        "CASERA_NEON_LISTEN_EXTRA": netns.host_ip,
        "CASERA_NEON_PLAN": None,
        "CASERA_DB_PASSWORD": None,
        "CASERA_NEON_API_KEY": None,
    }
    from casera_localcloud import neon
    from casera_localcloud.local_credentials import read_local_secrets

    try:
        with applied(environ):
            started = time.monotonic()
            lines = neon.up()
            up_seconds = time.monotonic() - started
            print("\n".join(lines))
            secrets = read_local_secrets()
        yield NeonEnv(
            home=root / "home", project_dir=root / "project", base=base,
            api_url=f"http://127.0.0.1:{base + 50}/api/v2",
            api_key=secrets["CASERA_NEON_API_KEY"], password=secrets["CASERA_DB_PASSWORD"],
            ca_file=root / "home" / "neon" / "tls" / "ca.crt", netns=netns,
            up_seconds=up_seconds, environ=environ,
        )
    finally:
        try:
            with applied(environ):
                print("\n".join(neon.down(purge=True)))
        finally:
            remove_netns(netns)
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def neon_env(neon_session: NeonEnv) -> Iterator[NeonEnv]:
    with applied(neon_session.environ):
        yield neon_session
