"""PostgreSQL (Neon) through ``psycopg``. TLS is never optional: sslmode comes from params and
the schema allows only require/verify-ca/verify-full (the plain-text probe of
``verify_database`` is the one ``disable``, and it must be refused).

:func:`probe` connects, reads what the steps decide on (:class:`ConnectionFacts`: the server
version and the client's own TLS session) and closes; a refused or failed connection is a
:class:`casera.errors.ProviderError` (system ``postgres``) whose ``details["error"]`` is the
server's or libpq's full text.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path

import psycopg
from psycopg import pq

from casera.errors import ProviderError
from casera.operator_secrets import Secret

# libpq's names for what PQsslAttribute reports
# (https://www.postgresql.org/docs/15/libpq-status.html#LIBPQ-PQSSLATTRIBUTE).
TLS_ATTRIBUTES = ("library", "protocol", "cipher", "key_bits", "compression")


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


@cache
def _loaded_libpq() -> ctypes.CDLL | None:
    """The libpq this process already runs psycopg on, or None when it cannot be told.

    psycopg wraps ``PQsslInUse`` but not ``PQsslAttribute`` (psycopg/pq/_pq_ctypes.py:
    "TODO: PQsslAttribute"), so it is called here through ctypes, and in the very library
    psycopg loaded: a second libpq copy would not know this PGconn's layout.
    """
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None  # no procfs (macOS): the attributes stay unknown
    paths = {line.split()[-1] for line in maps.splitlines()
             if re.search(r"/libpq[-.][^/]*\.so", line)}
    if pq.__impl__ == "binary":
        paths = {p for p in paths if "psycopg_binary" in p} or paths
    if len(paths) != 1:
        return None
    lib = ctypes.CDLL(paths.pop())
    lib.PQsslAttribute.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.PQsslAttribute.restype = ctypes.c_char_p
    return lib


def tls_attributes(conn: psycopg.Connection) -> dict[str, str] | None:
    """What the client's own TLS session says (protocol, cipher, ...), or None when this
    platform's libpq cannot be reached. Empty when the connection is not encrypted.

    This is the client's view, which is what counts behind a TLS-terminating proxy (Neon's,
    or its pooler): the server's ``pg_stat_ssl`` there describes the proxy's own link.
    """
    lib = _loaded_libpq()
    if lib is None:
        return None
    found: dict[str, str] = {}
    for name in TLS_ATTRIBUTES:
        value = lib.PQsslAttribute(conn.pgconn.pgconn_ptr, name.encode())
        if value is not None:
            found[name] = value.decode()
    return found


@dataclass(frozen=True)
class ConnectionFacts:
    """One connection as the client saw it. ``tls`` is the client's own TLS session
    (:data:`TLS_ATTRIBUTES`), empty when not encrypted, None when this platform's libpq
    cannot be asked (``ssl_in_use`` still says whether it was encrypted)."""

    server_version: str
    ssl_in_use: bool
    tls: dict[str, str] | None


def probe(host: str, port: int, dbname: str, user: str, password: Secret, sslmode: str,
          sslrootcert: str | None = None, hostaddr: str | None = None,
          timeout: int = 5) -> ConnectionFacts:
    """Connect as the app does, read the facts, close."""
    try:
        # Positional, as connect() is declared: tests replace connect() to steer one attempt.
        with connect(host, port, dbname, user, password, sslmode, sslrootcert, hostaddr,
                     timeout) as conn:
            row = conn.execute("show server_version").fetchone()
            in_use = bool(conn.pgconn.ssl_in_use)
            return ConnectionFacts(server_version=str(row[0]) if row else "",
                                   ssl_in_use=in_use,
                                   tls=tls_attributes(conn) if in_use else {})
    except psycopg.Error as exc:
        text = str(exc).strip()
        last = text.splitlines()[-1][:200] if text else type(exc).__name__
        raise ProviderError("postgres", f"{host}:{port}/{dbname} (sslmode={sslmode}): {last}",
                            code=exc.sqlstate or type(exc).__name__,
                            details={"error": text or type(exc).__name__}) from exc


def connect_uri(uri: Secret, sslmode: str, sslrootcert: str | None = None,
                timeout: int = 10) -> psycopg.Connection:
    """Connect with a connection URI as Neon hands it out (it holds the password); params'
    ``sslmode`` and ``sslrootcert`` win over the URI's, so a branch is checked as strictly
    as the main endpoint."""
    kwargs: dict[str, object] = {"sslmode": sslmode, "connect_timeout": timeout,
                                 "application_name": "casera-runbooks"}
    if sslrootcert:
        kwargs["sslrootcert"] = os.path.expanduser(sslrootcert)
    try:
        return psycopg.connect(uri.reveal(), **kwargs, prepare_threshold=None,
                               autocommit=True)
    except psycopg.Error as exc:
        # The message can quote the conninfo: keep only the server's words, masked.
        raise ProviderError("postgres", str(exc).replace(uri.reveal(), "***"),
                            code=type(exc).__name__) from exc


@dataclass(frozen=True)
class TableFacts:
    """One table of the ``public`` schema: its rows, and its newest row by the first
    timestamp column (``created_at`` in the app's tables), when it has one."""

    name: str
    rows: int
    newest_column: str | None
    newest: datetime | None


def table_facts(conn: psycopg.Connection) -> dict[str, TableFacts]:
    """Row count and newest row of every table in the ``public`` schema (exact counts: the
    restore's inspection compares them, so an estimate from the statistics would not do)."""
    from psycopg import sql

    found: dict[str, TableFacts] = {}
    tables = conn.execute(
        "SELECT c.relname, (SELECT a.attname FROM pg_attribute a WHERE a.attrelid = c.oid "
        "AND a.attnum > 0 AND NOT a.attisdropped AND a.atttypid IN "
        "('timestamptz'::regtype, 'timestamp'::regtype) ORDER BY a.attnum LIMIT 1) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1").fetchall()
    for name, column in tables:
        if column:
            row = conn.execute(sql.SQL("SELECT count(*), max({}) FROM {}").format(
                sql.Identifier(column), sql.Identifier("public", name))).fetchone()
        else:
            row = conn.execute(sql.SQL("SELECT count(*), NULL FROM {}").format(
                sql.Identifier("public", name))).fetchone()
        assert row is not None
        found[name] = TableFacts(name, int(row[0]), column, row[1])
    return found


def acts_as(conn: psycopg.Connection, member: str, owner: str) -> bool:
    """Whether ``member`` has ``owner``'s privileges and its sessions act as ``owner``: a
    member of it (with INHERIT) and ``role`` set to it at login (``ALTER ROLE ... SET
    role``), so what it creates is ``owner``'s and the other login role can use it too."""
    row = conn.execute(
        "SELECT pg_has_role(%s, %s, 'USAGE'), EXISTS (SELECT 1 FROM pg_db_role_setting s "
        "JOIN pg_roles r ON r.oid = s.setrole WHERE r.rolname = %s AND s.setdatabase = 0 "
        "AND %s = ANY (s.setconfig))", (member, owner, member, f"role={owner}")).fetchone()
    return bool(row and row[0] and row[1])


def make_act_as(conn: psycopg.Connection, member: str, owner: str) -> None:
    """``GRANT owner TO member`` and ``ALTER ROLE member SET role = owner``: run as a role
    with CREATEROLE (on Neon every role the API made has it, through neon_superuser)."""
    from psycopg import sql

    with conn.transaction():
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(owner),
                                                     sql.Identifier(member)))
        conn.execute(sql.SQL("ALTER ROLE {} SET role = {}").format(sql.Identifier(member),
                                                                  sql.Literal(owner)))


# ------------------------------------------------------------------ scratch server (drills)

@dataclass(frozen=True)
class ScratchServer:
    """A throwaway PostgreSQL on this machine: reached only through a Unix socket in a
    private directory (no TCP listener at all), as ``user`` with trust auth there."""

    socket_dir: Path
    port: int
    user: str
    bin_dir: Path
    version: str

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(host=str(self.socket_dir), port=self.port, user=self.user,
                               dbname=dbname, autocommit=True, connect_timeout=10)


SCRATCH_USER = "casera_scratch"


def server_bin_dir() -> Path:
    """The newest PostgreSQL server binaries on this machine (Debian puts each major version
    under /usr/lib/postgresql/<N>/bin; PG_BIN overrides): initdb, pg_ctl, pg_restore. A
    restore needs a pg_restore at least as new as the pg_dump that wrote the dump."""
    override = os.environ.get("CASERA_PG_BIN")
    candidates = [Path(override)] if override else sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
    for candidate in candidates:
        if all((candidate / tool).exists() for tool in ("initdb", "pg_ctl", "pg_restore")):
            return candidate
    raise ProviderError("postgres", "no PostgreSQL server binaries (initdb, pg_ctl, "
                        "pg_restore) under /usr/lib/postgresql/<N>/bin: install Debian's "
                        "postgresql-15 (`make install` does), or set CASERA_PG_BIN")


def _as_owner(owner: str | None) -> list[str]:
    # initdb and postgres refuse to run as root: as root (CI, the local cloud's machine) the
    # scratch server runs as the postgres user Debian's package makes; elsewhere as the
    # operator, who owns the temp directory already.
    return ["runuser", "-u", owner, "--"] if owner else []


def _run(args: list[str], what: str, timeout: float) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise ProviderError("postgres", f"{what} did not finish within {timeout:.0f} s",
                            code="timeout") from exc
    if done.returncode != 0:
        text = (done.stderr or done.stdout).strip()
        raise ProviderError("postgres", f"{what} failed (exit {done.returncode}): "
                            f"{text[-600:]}", code="exit", details={"error": text})
    return done.stdout


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def scratch_server(timeout: float = 120) -> Iterator[ScratchServer]:
    """initdb + pg_ctl start in a new temp directory of its own (fsync off: nothing here must
    survive), yield, then stop it (immediate) and remove the directory whatever happened.
    The directory is the server user's, 0700, directly under the system's temp dir: a
    caller's temp dir may not be traversable by the postgres user."""
    bin_dir = server_bin_dir()
    owner = None
    if os.geteuid() == 0:
        owner = "postgres"
        try:
            pwd.getpwnam(owner)
        except KeyError as exc:
            raise ProviderError("postgres", "running as root and there is no postgres user "
                                "to run the scratch server as (Debian's postgresql-15 makes "
                                "it)") from exc
    workdir = Path(tempfile.mkdtemp(prefix="casera-scratch-pg-"))
    data, sockets = workdir / "data", workdir / "sockets"
    for path in (workdir, data, sockets):
        path.mkdir(exist_ok=True)
        os.chmod(path, 0o700)
        if owner:
            shutil.chown(path, owner, owner)
    port = _free_port()
    try:
        yield from _started(bin_dir, owner, workdir, data, sockets, port, timeout)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _started(bin_dir: Path, owner: str | None, workdir: Path, data: Path, sockets: Path,
             port: int, timeout: float) -> Iterator[ScratchServer]:
    _run([*_as_owner(owner), str(bin_dir / "initdb"), "-D", str(data), "-U", SCRATCH_USER,
          "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync",
          "--no-instructions"], "initdb of the scratch PostgreSQL", timeout)
    options = (f"-c listen_addresses='' -p {port} -k {sockets} -c fsync=off "
               "-c full_page_writes=off -c synchronous_commit=off")
    log = workdir / "postgres.log"
    started = False
    try:
        _run([*_as_owner(owner), str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log),
              "-o", options, "-w", "-t", str(int(timeout)), "start"],
             "start of the scratch PostgreSQL", timeout + 10)
        started = True
        version = _run([str(bin_dir / "postgres"), "--version"], "postgres --version",
                       30).strip()
        yield ScratchServer(sockets, port, SCRATCH_USER, bin_dir, version)
    finally:
        if started:
            subprocess.run([*_as_owner(owner), str(bin_dir / "pg_ctl"), "-D", str(data),
                            "-m", "immediate", "-w", "-t", "60", "stop"],
                           capture_output=True, timeout=90, check=False)


def restore_dump(server: ScratchServer, dump: Path, dbname: str,
                 timeout: float = 1800) -> None:
    """Create ``dbname`` in the scratch server and ``pg_restore`` a custom-format dump into
    it, stopping at the first error (a dump that does not restore whole is a failed drill).
    Owners and grants are left out: the scratch server has none of live's roles."""
    with server.connect() as conn:
        from psycopg import sql

        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    _run([str(server.bin_dir / "pg_restore"), "--no-owner", "--no-acl", "--exit-on-error",
          "--host", str(server.socket_dir), "--port", str(server.port),
          "--username", server.user, "--dbname", dbname, str(dump)],
         f"pg_restore of {dump.name}", timeout)


def read_only_table_facts(host: str, port: int, dbname: str, user: str, password: Secret,
                          sslmode: str, sslrootcert: str | None = None,
                          hostaddr: str | None = None) -> dict[str, TableFacts]:
    """:func:`table_facts` of a live database in a read-only transaction: a drill that must
    not change anything cannot, even by mistake."""
    try:
        with connect(host, port, dbname, user, password, sslmode, sslrootcert, hostaddr,
                     10) as conn:
            conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            conn.commit()
            return table_facts(conn)
    except psycopg.Error as exc:
        text = str(exc).strip()
        raise ProviderError("postgres", f"{host}:{port}/{dbname}: "
                            f"{text.splitlines()[-1][:200] if text else type(exc).__name__}",
                            code=exc.sqlstate or type(exc).__name__) from exc
