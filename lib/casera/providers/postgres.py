"""PostgreSQL (Neon) through ``psycopg``. TLS is never optional: sslmode comes from params and
the schema allows only require/verify-ca/verify-full."""

from __future__ import annotations

import os

import psycopg

from casera.secrets import Secret


def connect(host: str, port: int, dbname: str, user: str, password: Secret, sslmode: str,
            sslrootcert: str | None = None, hostaddr: str | None = None,
            timeout: int = 5) -> psycopg.Connection:
    kwargs: dict[str, object] = {
        "host": host, "port": port, "dbname": dbname, "user": user,
        "password": password.reveal(), "sslmode": sslmode, "connect_timeout": timeout,
        "application_name": "casera-runbooks",
    }
    if sslrootcert:
        kwargs["sslrootcert"] = os.path.expanduser(sslrootcert)
    if hostaddr:
        kwargs["hostaddr"] = hostaddr
    # PgBouncer in transaction mode (Neon's pooler, the local cloud's 1.18) cannot keep
    # server-side prepared statements across transactions.
    return psycopg.connect(**kwargs, prepare_threshold=None)


def server_version(conn: psycopg.Connection) -> str:
    row = conn.execute("select version()").fetchone()
    return str(row[0]) if row else "?"
