"""PgBouncer in transaction mode: the ``-pooler`` endpoint in front of a compute.

Clients must use TLS (``client_tls_sslmode=require``) and pass the same allowlist as the
compute (``auth_type=hba`` with ``auth_hba_file``), checked with SCRAM against the role's
verifier copied from ``pg_authid`` into ``auth_file``. Because the client authenticated with
SCRAM against that very verifier, PgBouncer can log in to the compute with it (SCRAM
pass-through) and no plaintext password is ever stored.

TLS ends here, as at Neon's proxy: PgBouncer reaches its compute in plain text over the
compute's Unix socket (``server_tls_sslmode=disable``), so on the compute ``pg_stat_ssl`` says
"no TLS" for pooled sessions, as it would behind Neon's pooler. Clients prove TLS from their
own side (``casera.steps.database.verify_database``).
"""

from __future__ import annotations

import os
import pwd
import signal
from dataclasses import dataclass
from pathlib import Path

from casera.progress import wait_for
from casera_localcloud import process
from casera_localcloud.neon.cluster import (
    OWNER,
    Instance,
    as_postgres,
    hba_client_lines,
    owned_dir,
    scram_verifier,
)
from casera_localcloud.neon.config import PGBOUNCER, ROLE, NeonConfig
from casera_localcloud.neon.tls import server_files


@dataclass(frozen=True)
class Pooler:
    name: str
    port: int
    conf_dir: Path
    compute: Instance

    @property
    def ini(self) -> Path:
        return self.conf_dir / "pgbouncer.ini"

    @property
    def pidfile(self) -> Path:
        return self.conf_dir / "pgbouncer.pid"

    @property
    def logfile(self) -> Path:
        return self.conf_dir / "pgbouncer.log"


def render_ini(p: Pooler, cfg: NeonConfig, listen: list[str],
               stats_users: list[str] | None = None) -> str:
    crt, key, _ca = server_files(cfg)
    return f"""; written by casera_localcloud.neon; edits are overwritten by `casera local up`
[databases]
* = host={p.compute.socket_dir} port={p.compute.port}

[pgbouncer]
listen_addr = {",".join(listen)}
listen_port = {p.port}
unix_socket_dir =
pidfile = {p.pidfile}
logfile = {p.logfile}
pool_mode = transaction
max_client_conn = 200
default_pool_size = 10
auth_type = hba
auth_hba_file = {p.conf_dir / "hba.conf"}
auth_file = {p.conf_dir / "userlist.txt"}
client_tls_sslmode = require
client_tls_cert_file = {crt}
client_tls_key_file = {key}
; PgBouncer's default, TLSv1.2 and 1.3 only, written out because verify_database checks it
client_tls_protocols = secure
server_tls_sslmode = disable
; drivers send these at startup; Neon's pooler accepts them too
ignore_startup_parameters = extra_float_digits,options,search_path
; read-only SHOW commands (SHOW POOLS) on the admin console, for the load-test runbook's pool
; figures; Neon does not document its pooler's console for customers, so there the runbook
; falls back to pg_stat_activity
stats_users = {", ".join(stats_users or [ROLE])}
"""


def _write(path: Path, text: str, mode: int = 0o600) -> bool:
    """Write ``path`` as a new file (renamed into place). PgBouncer re-reads its auth file on
    a reload only when the file's inode, size or mtime (whole seconds) changed: a verifier
    rewritten in place within the same second, at the same length (every SCRAM verifier
    has it), would be skipped and the old password still let in."""
    if path.exists() and path.read_text() == text:
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.chown(tmp, *_owner_ids())
    tmp.replace(path)
    return True


def _owner_ids() -> tuple[int, int]:
    entry = pwd.getpwnam(OWNER)
    return entry.pw_uid, entry.pw_gid


def write_auth(p: Pooler, roles: list[str], allowed: list[str] | None) -> bool:
    """userlist.txt (SCRAM verifiers) and hba.conf. Returns True when either changed."""
    users = []
    for role in roles:
        verifier = scram_verifier(p.compute, role)
        if verifier:
            users.append(f'"{role}" "{verifier}"')
    changed = _write(p.conf_dir / "userlist.txt", "\n".join(users) + "\n")
    hba = "\n".join(["# written by casera_localcloud.neon from the project's IP allowlist",
                     *hba_client_lines(allowed)]) + "\n"
    return _write(p.conf_dir / "hba.conf", hba) or changed


def pid(p: Pooler) -> int | None:
    return process.running_pid(p.pidfile)


def is_running(p: Pooler) -> bool:
    return pid(p) is not None


def configure(p: Pooler, cfg: NeonConfig, listen: list[str],
              stats_users: list[str] | None = None) -> bool:
    """Write the ini. Returns True when it changed, which calls for a restart: listen and
    server settings are not all taken over by a reload (``stats_users`` alone is: the roles
    step reloads after adding a role)."""
    owned_dir(p.conf_dir)
    new = render_ini(p, cfg, listen, stats_users)
    if p.ini.exists() and p.ini.read_text() == new:
        return False
    _write(p.ini, new)
    return True


def start(p: Pooler, timeout: float = 30) -> None:
    as_postgres([str(PGBOUNCER), "-d", str(p.ini)])
    wait_for(f"PgBouncer {p.name} on port {p.port}", lambda: is_running(p), timeout,
             interval=0.2, show=False)


def reload(p: Pooler) -> None:
    value = pid(p)
    if value:
        os.kill(value, signal.SIGHUP)


def stop(p: Pooler, timeout: float = 30) -> bool:
    # SIGTERM (what process.stop sends), not SIGINT ("safe shutdown"): a client left idle
    # in a transaction would otherwise hold down() for as long as it likes.
    return process.stop(p.pidfile, f"PgBouncer {p.name}", timeout, kill=True) is not None
