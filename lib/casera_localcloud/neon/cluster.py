"""PostgreSQL instances of the local Neon: the main branch's compute and one per branch.

Each instance is a cluster of its own (initdb or a restored base backup) run by ``pg_ctl`` as
the ``postgres`` user, never the Debian-managed ``15/main`` cluster, so ``up`` does not depend
on what the package did. Settings live in ``casera.conf`` inside the data directory, included
from ``postgresql.conf``: a restored branch rewrites that one file and keeps the rest.

Admin access is peer authentication over a Unix socket in a directory only ``postgres`` can
enter, with root mapped to ``postgres`` (pg_ident): no admin password exists to leak, and every
TCP client, loopback included, goes through the allowlist and SCRAM.

TLS ends at the pooler, as it ends at Neon's proxy (neondatabase/neon#3416: the proxy "acts
as an endpoint" for TLS): the pooler reaches its compute in plain text over the compute's Unix
socket, in a directory only ``postgres`` can enter. Every TCP client of the compute (the
direct endpoint) still needs TLS, SCRAM and the allowlist, as Neon's direct endpoint does (it
too is reached through the proxy, which refuses plain text). The pooler enforces the allowlist
for pooled connections.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from casera.errors import CaseraError
from casera_localcloud import debian
from casera_localcloud.neon.config import PG_BIN, PGBOUNCER, RUNUSER, NeonConfig
from casera_localcloud.neon.tls import server_files

OWNER = "postgres"


@dataclass(frozen=True)
class Instance:
    """One PostgreSQL server: the main compute or a branch's."""

    name: str
    data_dir: Path
    port: int
    socket_dir: Path
    log_file: Path
    archive_dir: Path | None  # only the main branch archives: branches' WAL is not history

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host={self.socket_dir} port={self.port} user=postgres dbname={dbname}"


def as_postgres(args: list[str], check: bool = True,
                timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(RUNUSER), "-u", OWNER, "--", *args], capture_output=True,
                            text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise CaseraError(f"{' '.join(args[:2])} failed ({result.returncode}): "
                          f"{(result.stderr or result.stdout).strip()[-800:]}")
    return result


def ensure_packages() -> list[str]:
    """Install Debian's PostgreSQL 15 and PgBouncer when missing (a fresh Debian 12)."""
    if (PG_BIN / "postgres").exists() and PGBOUNCER.exists():
        return []
    debian.install("postgresql-15", "pgbouncer")
    return ["installed postgresql-15 and pgbouncer"]


def owned_dir(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    shutil.chown(path, OWNER, OWNER)
    os.chmod(path, mode)
    return path


def initdb(inst: Instance) -> None:
    owned_dir(inst.data_dir)
    # 1 MB WAL segments instead of 16: every archived segment is kept for the whole history
    # window, and a mostly idle local database should not archive 16 MB per forced switch.
    as_postgres([str(PG_BIN / "initdb"), "-D", str(inst.data_dir), "--encoding=UTF8",
                 "--locale=C.UTF-8", "--auth-local=peer", "--auth-host=scram-sha-256",
                 "--wal-segsize=1"])


def archive_command(archive_dir: Path) -> str:
    # Idempotent and atomic: a segment archived twice (after a crash) is fine when identical,
    # and restore_command never sees a half-copied file.
    # A .partial segment (the old timeline's last one, written at a promotion) is never read
    # back by recovery; two restores to nearby times can each write one under the same name,
    # and refusing the second would stall the archiver for good: the newer one wins.
    target = f"{archive_dir}/%f"
    copy = f"cp %p '{target}.tmp' && mv '{target}.tmp' '{target}'"
    return (f"case '%f' in *.partial) {copy} ;; *) if [ -f '{target}' ]; then "
            f"cmp -s %p '{target}'; else {copy}; fi ;; esac")


def render_conf(inst: Instance, cfg: NeonConfig, listen: Iterable[str],
                extra: dict[str, str] | None = None) -> str:
    crt, key, _ca = server_files(cfg)
    settings: dict[str, str] = {
        "listen_addresses": ",".join(listen),
        "port": str(inst.port),
        "unix_socket_directories": str(inst.socket_dir),
        "unix_socket_permissions": "0700",
        "ssl": "on",
        "ssl_cert_file": str(crt),
        "ssl_key_file": str(key),
        "ssl_min_protocol_version": "TLSv1.2",
        "password_encryption": "scram-sha-256",
        "max_connections": "60",
        "shared_buffers": "32MB",
        "wal_level": "replica",
        "max_wal_senders": "4",
        "logging_collector": "off",
        "log_connections": "on",
        "archive_mode": "on" if inst.archive_dir else "off",
    }
    if inst.archive_dir:
        settings["archive_command"] = archive_command(inst.archive_dir)
        # Bounds how stale the archive is when nothing forces a switch; branch creation
        # forces one itself, so this only matters if the main data directory is lost.
        settings["archive_timeout"] = "300"
    settings.update(extra or {})
    lines = ["# written by casera_localcloud.neon; edits are overwritten by `casera local up`"]
    lines += [f"{k} = '{_quote(v)}'" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    return value.replace("'", "''")


RESTART_KEYS = ("listen_addresses", "port", "unix_socket_directories", "archive_mode",
                "shared_buffers", "max_connections", "wal_level", "max_wal_senders")


def write_conf(inst: Instance, text: str) -> str:
    """Write casera.conf. Returns "restart", "reload" or "" for what the change needs."""
    main_conf = inst.data_dir / "postgresql.conf"
    include = "include_if_exists = 'casera.conf'"
    if include not in main_conf.read_text():
        with main_conf.open("a") as fh:
            fh.write(f"\n{include}\n")
    path = inst.data_dir / "casera.conf"
    old = path.read_text() if path.exists() else ""
    if old == text:
        return ""
    path.write_text(text)
    shutil.chown(path, OWNER, OWNER)

    def restart_lines(s: str) -> set[str]:
        return {ln for ln in s.splitlines() if ln.split(" ", 1)[0] in RESTART_KEYS}

    return "restart" if restart_lines(old) != restart_lines(text) else "reload"


def allowlist_networks(ips: list[str]) -> list[str]:
    """Neon's allowlist entries (addresses, CIDRs, or ``first-last`` ranges) as CIDRs."""
    nets: list[str] = []
    for raw in ips:
        entry = raw.strip()
        if "-" in entry:
            first, last = (ipaddress.ip_address(p.strip()) for p in entry.split("-", 1))
            nets += [str(n) for n in ipaddress.summarize_address_range(first, last)]  # type: ignore[arg-type]
        else:
            nets.append(str(ipaddress.ip_network(entry, strict=False)))
    return nets


def validate_allowlist(ips: list[str]) -> str | None:
    """The problem with an allowlist, or None when every entry parses."""
    try:
        allowlist_networks(ips)
    except ValueError as exc:
        return str(exc)
    return None


def hba_client_lines(allowed: list[str] | None) -> list[str]:
    """TCP rules shared by PostgreSQL and PgBouncer: TLS only, SCRAM, allowlist when set.

    Plain text is refused before the address is looked at, as Neon does: "Neon rejects
    connections that do not use SSL/TLS, behaving in the same way as standalone Postgres with
    only hostssl records in a pg_hba.conf" (https://neon.com/docs/connect/connect-securely).
    """
    lines = ["hostnossl all all 0.0.0.0/0 reject", "hostnossl all all ::/0 reject"]
    nets = allowlist_networks(allowed) if allowed else ["0.0.0.0/0", "::/0"]
    lines += [f"hostssl all all {net} scram-sha-256" for net in nets]
    # Nothing matches below this line, which PostgreSQL and PgBouncer both treat as refusal.
    return lines


def write_hba(inst: Instance, allowed: list[str] | None) -> bool:
    """Write pg_hba.conf and pg_ident.conf. Returns True when pg_hba.conf changed."""
    hba = "\n".join([
        "# written by casera_localcloud.neon from the project's IP allowlist",
        "local all postgres peer map=admin",
        "local replication postgres peer map=admin",
        # The pooler's way in: the Unix socket, plain text behind the pooler's TLS. Only
        # postgres (and root) can enter the socket directory, and SCRAM still applies.
        "local all all scram-sha-256",
        *hba_client_lines(allowed),
    ]) + "\n"
    ident = "admin root postgres\nadmin postgres postgres\n"
    (inst.data_dir / "pg_ident.conf").write_text(ident)
    path = inst.data_dir / "pg_hba.conf"
    changed = not path.exists() or path.read_text() != hba
    if changed:
        path.write_text(hba)
    for name in ("pg_hba.conf", "pg_ident.conf"):
        shutil.chown(inst.data_dir / name, OWNER, OWNER)
    return changed


def pg_ctl(inst: Instance, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(inst.data_dir), *args],
                       timeout=timeout)


def is_running(inst: Instance) -> bool:
    if not (inst.data_dir / "PG_VERSION").exists():
        return False
    res = as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(inst.data_dir), "status"], check=False)
    return res.returncode == 0


def start(inst: Instance, timeout: int = 120) -> None:
    owned_dir(inst.socket_dir)
    owned_dir(inst.log_file.parent, 0o755)
    pg_ctl(inst, "-l", str(inst.log_file), "-w", "-t", str(timeout), "start",
           timeout=timeout + 10)


def stop(inst: Instance) -> bool:
    if not is_running(inst):
        return False
    pg_ctl(inst, "-m", "fast", "-w", "stop")
    return True


def restart(inst: Instance) -> None:
    pg_ctl(inst, "-m", "fast", "-w", "-l", str(inst.log_file), "restart")


def reload(inst: Instance) -> None:
    pg_ctl(inst, "reload")


def admin(inst: Instance, dbname: str = "postgres") -> psycopg.Connection:
    return psycopg.connect(inst.conninfo(dbname), autocommit=True, connect_timeout=10)


def scram_verifier(inst: Instance, role: str) -> str | None:
    with admin(inst) as conn:
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                           (role,)).fetchone()
    return row[0] if row else None
