"""What every stand-in app shares: secrets, logging, its Postgres and Redis connections, and
the HTTP serve loop of the ones that answer HTTP (admin, api, dozzle).

The apps run in images on Debian bookworm's python3 (3.11) with python3-psycopg 3.1 and
python3-redis 4.3, so they use only what those versions have.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SOURCE_FILE = "file"
SOURCE_ENV = "env"
SOURCE_MISSING = "missing"

# Registered secret values, so that log() can scrub them even if a bug passes one in.
_known_values: set[str] = set()
_log_lock = threading.Lock()


def secrets_dir() -> Path:
    # Overridable so tests can run the apps as plain processes without /run/secrets.
    return Path(os.environ.get("CASERA_SECRETS_DIR", "/run/secrets"))


def env_var_for(name: str) -> str:
    """The environment variable a secret falls back to: the seed's pre-migration setup
    passed DB_PASSWORD, SECRET_KEY, ... as plain env vars."""
    return name.upper()


def read_secret(name: str) -> tuple[str | None, str]:
    """(value, source): the Docker secret file wins over the env var, as the migration needs
    both to work while services move from env vars to secrets one at a time."""
    path = secrets_dir() / name
    try:
        value = path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        value = None
    if value is not None:
        _remember(value)
        return value, SOURCE_FILE
    value = os.environ.get(env_var_for(name))
    if value:
        _remember(value)
        return value, SOURCE_ENV
    return None, SOURCE_MISSING


def secret_names() -> list[str]:
    raw = os.environ.get("CASERA_SECRET_NAMES", "db_password,secret_key")
    return [name.strip() for name in raw.split(",") if name.strip()]


def secret_sources() -> dict[str, str]:
    """Where each known secret comes from; names and sources only, never values."""
    return {name: read_secret(name)[1] for name in secret_names()}


def _remember(value: str) -> None:
    if len(value) >= 4:  # masking shorter strings would garble ordinary log text
        _known_values.add(value)


def scrub(text: str) -> str:
    for value in _known_values:
        if value in text:
            text = text.replace(value, "********")
    return text


def log(event: str, **fields: Any) -> None:
    """One JSON line on stdout (Docker and Dozzle collect it), secrets scrubbed."""
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "app": os.environ.get("CASERA_APP", Path(sys.argv[0]).stem), "event": event}
    record.update(fields)
    line = scrub(json.dumps(record, default=str))
    with _log_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def redis_client() -> Any:
    import redis

    return redis.Redis(
        host=os.environ.get("REDIS_HOST", "redis"),
        port=int(os.environ.get("REDIS_PORT", "6379")),
        db=int(os.environ.get("REDIS_DB", "0")),
        socket_timeout=5, socket_connect_timeout=3, decode_responses=True,
    )


def pg_connect() -> Any:
    """A connection through the pooler. TLS is required unless DB_SSLMODE says otherwise."""
    import psycopg

    password, _ = read_secret("db_password")
    kwargs: dict[str, Any] = {
        "host": os.environ.get("DB_HOST", "localhost"),
        "port": int(os.environ.get("DB_PORT", "5432")),
        "dbname": os.environ.get("DB_NAME", "casera"),
        "user": os.environ.get("DB_USER", "casera"),
        "sslmode": os.environ.get("DB_SSLMODE", "require"),
        "connect_timeout": int(os.environ.get("DB_CONNECT_TIMEOUT", "5")),
        "application_name": os.environ.get("CASERA_APP", "casera-standin"),
    }
    if password is not None:
        kwargs["password"] = password
    if os.environ.get("DB_SSLROOTCERT"):
        kwargs["sslrootcert"] = os.environ["DB_SSLROOTCERT"]
    # PgBouncer in transaction mode (Neon's -pooler, and bookworm's 1.18) cannot keep
    # server-side prepared statements, which psycopg 3 makes after 5 runs of one query.
    return psycopg.connect(prepare_threshold=None, **kwargs)


# Neon drops every connection to the compute when a role is made or a password reset
# (resetProjectBranchRolePassword: "Connections to the compute endpoint are dropped",
# https://neon.com/docs/reference/api/branches/reset-project-branch-role-password), which the
# DB password rotation does. A transaction cut that way never committed, so it is run once
# more, on a new connection: the contract the rotation runbook states for Casera's real app.
# 57P01 admin_shutdown (pg_terminate_backend), 57P02/57P03, class 08 (connection lost); no
# SQLSTATE at all: the socket closed under the client (PgBouncer's "server conn crashed?").
DROPPED_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "08000", "08003", "08006"})


def retry_dropped(work: Any, what: str) -> Any:
    """``work()``, run once more when its connection was dropped under it."""
    import psycopg

    try:
        return work()
    except psycopg.OperationalError as exc:
        if exc.sqlstate is not None and exc.sqlstate not in DROPPED_SQLSTATES:
            raise
        log("db_retry", what=what, error=error_text(exc))
        return work()


ITEMS_DDL = """
CREATE TABLE IF NOT EXISTS items (
    id           bigserial PRIMARY KEY,
    name         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    task_id      text,
    processed_at timestamptz,
    processed_by text,
    process_count integer NOT NULL DEFAULT 0
)
"""
# Tables made before the counter existed get it too. How many times workers processed each
# item: the Redis runbooks' "processed exactly once" is read from it (Asynq is at least once).
ITEMS_COUNTER_DDL = ("ALTER TABLE items ADD COLUMN IF NOT EXISTS "
                     "process_count integer NOT NULL DEFAULT 0")


def error_text(exc: BaseException) -> str:
    """A one-line, scrubbed description of an error, safe for logs and JSON answers."""
    return scrub(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}")


def exit_on_sigterm() -> None:
    """As PID 1 in a container, a process without a SIGTERM handler ignores the signal and
    Docker kills it after the grace period; exit at once instead (rolling updates wait)."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, handler)


class AppHandler(BaseHTTPRequestHandler):
    """A stand-in's request handler: whole answers with Content-Length, one log line each."""

    def send_body(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, body: object) -> None:
        self.send_body(status, json.dumps(body, default=str).encode(), "application/json")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature
        # Paths only: a query string could carry anything a client chose to put there.
        log("request", method=getattr(self, "command", None),
            path=getattr(self, "path", "").split("?", 1)[0],
            status=args[1] if len(args) > 1 else None, client=self.client_address[0])


# Set once SIGTERM arrives in a server that drains (see serve): /readyz answers 503 from then.
_draining = threading.Event()


def draining() -> bool:
    return _draining.is_set()


def drain_seconds() -> float:
    """``DRAIN_S``: how long a stopping server keeps serving while it reports not ready, so
    that the load balancer's health check takes it out before it stops accepting. The stack
    sets it from the LB's health-check window; 0 stops at once."""
    raw = os.environ.get("DRAIN_S", "0").strip() or "0"
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"DRAIN_S={raw!r} is not a number of seconds") from None
    if not 0 <= value <= 600:
        raise SystemExit(f"DRAIN_S={raw!r} must be 0..600 seconds")
    return value


class _CountingServer(ThreadingHTTPServer):
    """Counts requests being handled, so a stopping server can wait for them to finish."""

    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.active = 0
        self._active_lock = threading.Lock()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._active_lock:
            self.active += 1
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._active_lock:
                self.active -= 1


def serve(handler: type[BaseHTTPRequestHandler], host: str, port: int, *,
          drain_s: float = 0.0, **fields: Any) -> None:
    """Serve until SIGTERM. Then, with ``drain_s``, keep serving that long while /readyz says
    503 (the LB's health checks take the task out of rotation meanwhile), stop accepting,
    let the requests in flight finish (bounded), and exit. Without it, exit at once
    (see exit_on_sigterm). Daemon threads: a slow client must not hold the task past
    Docker's grace period."""
    if drain_s <= 0:
        exit_on_sigterm()
    stop = threading.Event()
    if drain_s > 0:
        def on_sigterm(signum: int, frame: object) -> None:
            _draining.set()  # at once: the next health check must already see it
            stop.set()

        signal.signal(signal.SIGTERM, on_sigterm)
    server = _CountingServer((host, port), handler)
    log("listening", port=port, drain_s=drain_s, **fields)
    if drain_s <= 0:
        try:
            server.serve_forever()
        except (KeyboardInterrupt, SystemExit):
            log("stopping")
        return
    loop = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    loop.start()
    try:
        # A short wait in a loop: the signal handler runs on this (the main) thread between
        # waits.
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    log("draining", seconds=drain_s, in_flight=server.active)
    time.sleep(drain_s)
    server.shutdown()  # no new connections are accepted once serve_forever returns
    server.server_close()
    deadline = time.monotonic() + 5.0
    while server.active and time.monotonic() < deadline:
        time.sleep(0.05)
    log("stopping", in_flight=server.active)
