"""Real services for the stand-in apps, all on loopback and private to the test session:
redis-server, and PostgreSQL 15 with TLS and SCRAM behind PgBouncer in transaction mode (the
shape of Neon's -pooler endpoint). The apps run as plain processes against them, no Docker.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from casera.progress import wait_for

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DB_USER, DB_NAME = "casera", "casera"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(*cmd: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True,
                          capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("redis")
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
         "--appendonly", "yes", "--save", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, decode_responses=True)
    wait_for("test redis-server", client.ping, 15, interval=0.1, show=False)
    yield {"port": port, "client": client}
    process.terminate()
    process.wait(10)


@pytest.fixture()
def r(redis_server: dict[str, Any]) -> redis.Redis:
    client = redis_server["client"]
    client.flushall()
    return client


@pytest.fixture()
def port() -> Any:
    """A function returning a free loopback port."""
    return free_port


@dataclass
class Postgres:
    port: int  # PostgreSQL itself (TLS only)
    pooler_port: int  # PgBouncer, transaction mode, TLS only
    password: str
    user: str = DB_USER
    dbname: str = DB_NAME

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(host="127.0.0.1", port=self.pooler_port, dbname=DB_NAME,
                               user=DB_USER, password=self.password, sslmode="require",
                               prepare_threshold=None, autocommit=True)


def _start_postgres(extra_listen: str | None) -> Iterator[Postgres]:
    """PostgreSQL (TLS only, SCRAM) with PgBouncer in front, as the postgres user.
    ``extra_listen``: one more address for PgBouncer (the nodes' gateway 10.77.0.1)."""
    if not (PG_BIN / "initdb").exists() or not shutil.which("pgbouncer"):
        pytest.skip("PostgreSQL 15 and pgbouncer are not installed")
    # Not pytest's tmp_path: that sits below a root-only directory the postgres user cannot
    # enter, and PostgreSQL refuses to run as root.
    base = Path(tempfile.mkdtemp(prefix="casera-images-pg-"))
    shutil.chown(base, "postgres", "postgres")
    data, run = base / "data", base / "run"
    run.mkdir()
    shutil.chown(run, "postgres", "postgres")
    pg = Postgres(free_port(), free_port(), "pw-" + os.urandom(8).hex())
    _as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres",
                 "--auth-local=trust", "--auth-host=scram-sha-256")
    _as_postgres("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-subj", "/CN=127.0.0.1", "-keyout", str(base / "server.key"),
                 "-out", str(base / "server.crt"))
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(f"listen_addresses = '127.0.0.1'\nport = {pg.port}\n"
                   f"unix_socket_directories = '{run}'\nssl = on\n"
                   f"ssl_cert_file = '{base / 'server.crt'}'\n"
                   f"ssl_key_file = '{base / 'server.key'}'\n")
    (data / "pg_hba.conf").write_text(
        "local all all trust\n"
        "hostssl all all 127.0.0.1/32 scram-sha-256\n"
        "hostnossl all all 0.0.0.0/0 reject\n")
    _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "pg.log"),
                 "-w", "start")
    _as_postgres("psql", "-h", str(run), "-p", str(pg.port), "-U", "postgres", "-c",
                 f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{pg.password}'", "-c",
                 f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}")
    listen = "127.0.0.1" + (f",{extra_listen}" if extra_listen else "")
    (base / "userlist.txt").write_text(f'"{DB_USER}" "{pg.password}"\n')
    (base / "pgbouncer.ini").write_text(
        f"[databases]\n{DB_NAME} = host=127.0.0.1 port={pg.port} dbname={DB_NAME}\n"
        f"[pgbouncer]\nlisten_addr = {listen}\nlisten_port = {pg.pooler_port}\n"
        f"unix_socket_dir =\npool_mode = transaction\nauth_type = scram-sha-256\n"
        f"auth_file = {base / 'userlist.txt'}\n"
        f"client_tls_sslmode = require\nclient_tls_key_file = {base / 'server.key'}\n"
        f"client_tls_cert_file = {base / 'server.crt'}\nserver_tls_sslmode = require\n"
        f"logfile = {base / 'pgbouncer.log'}\n")
    for name in ("userlist.txt", "pgbouncer.ini"):
        shutil.chown(base / name, "postgres", "postgres")
    bouncer = subprocess.Popen(["runuser", "-u", "postgres", "--", "pgbouncer",
                                str(base / "pgbouncer.ini")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for("test pgbouncer", lambda: pg.connect().close() or True, 20, interval=0.2,
                 show=False)
        yield pg
    finally:
        bouncer.terminate()
        bouncer.wait(10)
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D",
                        str(data), "-m", "immediate", "stop"], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    yield from _start_postgres(None)


@pytest.fixture(scope="session")
def postgres_for_nodes() -> Iterator[Postgres]:
    """The same, with PgBouncer also on the nodes' gateway (the bridge must exist first)."""
    from casera_localcloud.registry import NODE_GATEWAY

    yield from _start_postgres(NODE_GATEWAY)


@dataclass
class App:
    """A stand-in app running as a local process, its stdout collected for leak checks."""

    process: subprocess.Popen[str]
    port: int | None
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, dict[str, Any], str]:
        return self.request("GET", path)

    def request(self, method: str, path: str,
                body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any], str]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url(path), data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with OPENER.open(req, timeout=15) as response:
                text = response.read().decode()
                return response.status, json.loads(text), text
        except urllib.error.HTTPError as exc:
            text = exc.read().decode()
            return exc.code, json.loads(text), text

    def logs(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture()
def start_app(tmp_path: Path) -> Iterator[Any]:
    apps: list[App] = []

    def start(module: str, env: dict[str, str], port: int | None = None) -> App:
        log_path = tmp_path / f"{module}-{len(apps)}.log"
        full_env = {key: value for key, value in os.environ.items()
                    if not key.startswith(("DB_", "REDIS_", "CASERA_"))}
        full_env.update(env)
        if port is not None:
            full_env["PORT"] = str(port)
        with open(log_path, "w") as out:
            process = subprocess.Popen(
                [sys.executable, "-u", "-m", f"casera_localcloud.images.apps.{module}"],
                env=full_env, stdout=out, stderr=subprocess.STDOUT, text=True)
        app = App(process, port, log_path, full_env)
        apps.append(app)
        if port is not None:
            def answering() -> bool:
                if process.poll() is not None:
                    raise AssertionError(f"{module} exited: {log_path.read_text()}")
                try:
                    return app.get("/healthz")[0] == 200
                except OSError:
                    return False
            wait_for(f"{module} on {port}", answering, 20, interval=0.1, show=False)
        else:
            time.sleep(0.2)
        return app

    yield start
    for app in apps:
        app.stop()
