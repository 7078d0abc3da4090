"""PgBouncer's admin console (``SHOW POOLS``) through psycopg: the pooler's own view of its
pools, which the load test samples while it runs.

The console is the virtual database ``pgbouncer`` on the pooler's port; it speaks only the
simple query protocol and has no transactions, so the query goes through libpq's ``PQexec``
on an autocommit connection (https://www.pgbouncer.org/usage.html#admin-console). The role
must be in ``stats_users`` (the local cloud's pooler lists the app's role). Neon does not
document its pooler's console for customers: there this read fails, and the caller says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from casera.errors import ProviderError
from casera.operator_secrets import Secret
from casera.providers import postgres


@dataclass(frozen=True)
class Pool:
    database: str
    user: str
    cl_active: int  # clients linked to a server connection or idle
    cl_waiting: int  # clients waiting for a server connection
    sv_active: int  # server connections linked to a client
    sv_idle: int
    sv_used: int
    maxwait_s: float  # how long the oldest waiting client has waited
    pool_mode: str

    @property
    def servers(self) -> int:
        return self.sv_active + self.sv_idle + self.sv_used


def open_console(host: str, port: int, user: str, password: Secret, sslmode: str,
                 sslrootcert: str | None = None, hostaddr: str | None = None,
                 timeout: int = 5) -> psycopg.Connection:
    try:
        conn = postgres.connect(host, port, "pgbouncer", user, password, sslmode, sslrootcert,
                                hostaddr, timeout)
    except psycopg.Error as exc:
        raise ProviderError("pgbouncer", f"connect to the admin console on {host}:{port}: "
                            f"{str(exc).strip()}"[:400]) from exc
    conn.autocommit = True
    return conn


def show_pools(conn: psycopg.Connection) -> list[Pool]:
    """``SHOW POOLS``, one :class:`Pool` per (database, user); the console's own row left out."""
    answer = conn.pgconn.exec_(b"SHOW POOLS")
    if answer.status != psycopg.pq.ExecStatus.TUPLES_OK:
        raise ProviderError("pgbouncer", "SHOW POOLS: " + (answer.error_message or b"").decode(
            errors="replace").strip())
    names = [(answer.fname(i) or b"").decode() for i in range(answer.nfields)]
    pools = []
    for row in range(answer.ntuples):
        values = {name: (answer.get_value(row, i) or b"").decode()
                  for i, name in enumerate(names)}
        if values.get("database") == "pgbouncer":
            continue
        pools.append(Pool(values.get("database", ""), values.get("user", ""),
                          int(values.get("cl_active") or 0), int(values.get("cl_waiting") or 0),
                          int(values.get("sv_active") or 0), int(values.get("sv_idle") or 0),
                          int(values.get("sv_used") or 0),
                          float(values.get("maxwait") or 0)
                          + float(values.get("maxwait_us") or 0) / 1e6,
                          values.get("pool_mode", "")))
    return pools
