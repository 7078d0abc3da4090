"""A private local Neon for the test session: its own CASERA_LOCAL_HOME, project dir (so the
real secrets/local.env is untouched) and ports, so it runs beside an operator's local cloud.

Allowlist tests need a client whose address is not loopback: every loopback client comes
from 127.0.0.1, so the session makes a network namespace joined to the host by a veth pair
(host 10.78.N.1, client 10.78.N.2) and runs the client there with ``nsenter --net`` (``ip
netns exec`` would remount /sys, see notes/local-engine.md). The local Neon listens on the
host end because the session adds it to CASERA_NEON_LISTEN_EXTRA before ``up()``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
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
class Netns:
    name: str
    host_ip: str
    client_ip: str

    def run_client(self, conninfo: dict[str, Any], timeout: float = 20) -> tuple[bool, str]:
        """Connect with psycopg from inside the namespace. (connected, detail)."""
        code = (
            "import json, sys, psycopg\n"
            "kw = json.loads(sys.argv[1])\n"
            "try:\n"
            "    with psycopg.connect(**kw, connect_timeout=5) as c:\n"
            "        print(c.execute('select inet_client_addr()').fetchone()[0])\n"
            "except Exception as e:\n"
            "    print(e); sys.exit(3)\n"
        )
        res = subprocess.run(["nsenter", f"--net=/var/run/netns/{self.name}", sys.executable,
                              "-c", code, json.dumps(conninfo)], capture_output=True,
                             text=True, timeout=timeout)
        return res.returncode == 0, (res.stdout + res.stderr).strip()


def _make_netns() -> Netns:
    pid = os.getpid()
    subnet = pid % 250 + 1
    ns = Netns(f"casera-neon-t{pid}", f"10.78.{subnet}.1", f"10.78.{subnet}.2")
    host_if, ns_if = f"cnh{pid}", f"cnn{pid}"
    cmds = [
        ["ip", "netns", "add", ns.name],
        ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
        ["ip", "link", "set", ns_if, "netns", ns.name],
        ["ip", "addr", "add", f"{ns.host_ip}/24", "dev", host_if],
        ["ip", "link", "set", host_if, "up"],
    ]
    inside = [
        ["ip", "addr", "add", f"{ns.client_ip}/24", "dev", ns_if],
        ["ip", "link", "set", ns_if, "up"],
        ["ip", "link", "set", "lo", "up"],
    ]
    for cmd in cmds:
        subprocess.run(cmd, check=True, capture_output=True)
    for cmd in inside:
        subprocess.run(["nsenter", f"--net=/var/run/netns/{ns.name}", *cmd], check=True,
                       capture_output=True)
    return ns


def _remove_netns(ns: Netns) -> None:
    pid = ns.name.removeprefix("casera-neon-t")
    subprocess.run(["ip", "link", "del", f"cnh{pid}"], capture_output=True)
    subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)


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
    netns = _make_netns()
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
    from casera.localcloud import neon
    from casera.localcloud.secrets_file import read_local_secrets

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
            _remove_netns(netns)
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def neon_env(neon_session: NeonEnv) -> Iterator[NeonEnv]:
    with applied(neon_session.environ):
        yield neon_session
