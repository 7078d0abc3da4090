"""Roles of the local Neon's default branch: real PostgreSQL login roles, the pooler's
auth file kept in step, and the API's record of each role (the password included: Neon stores
passwords, ``store_passwords: true``, and hands them back through ``reveal_password``).

As on Neon, a role made through the API is a member of ``neon_superuser`` and has CREATEROLE
and CREATEDB, never SUPERUSER ("Manage roles", https://neon.com/docs/manage/roles: roles
created in the Console, CLI or API are granted membership in neon_superuser; Neon shows
them with "Create role, Create DB, Bypass RLS"). A password is Neon-generated; resetting it
changes it at once: the old one is refused from the next connection on, both direct and
through the pooler (https://neon.com/faqs/reset-database-password: "The reset is immediate:
the old password stops working"). Connections already open stay open.
"""

from __future__ import annotations

import re
import secrets
import string
import time
from typing import Any

from psycopg import sql

from casera_localcloud.neon import cluster, pgbouncer, state
from casera_localcloud.neon.config import MAIN_BRANCH_ID, ROLE, NeonConfig
from casera_localcloud.neon.instances import main_instance, main_pooler

GROUP = "neon_superuser"
# Neon's role names: at most 63 bytes (PostgreSQL's NAMEDATALEN - 1; neonctl roles,
# https://neon.com/docs/cli/roles.md). pg_ is reserved by PostgreSQL itself; the names Neon
# uses for its own roles are refused too.
MAX_NAME_BYTES = 63
RESERVED = ("neon_superuser", "cloud_admin", "postgres", "neon_service")
# Neon's generated passwords: "npg_" and random letters and digits (what the Console and the
# API hand out since 2025); long enough for SCRAM to be the weak link, never the password.
PASSWORD_ALPHABET = string.ascii_letters + string.digits


def new_password() -> str:
    return "npg_" + "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(16))


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a role's name, or None."""
    if not name:
        return "role.name must not be empty"
    if len(name.encode()) > MAX_NAME_BYTES:
        return f"role.name {name[:20]!r}...: at most {MAX_NAME_BYTES} bytes"
    if name.startswith("pg_") or name in RESERVED:
        return f"role.name {name!r} is reserved"
    if re.search(r"[\x00-\x1f\"]", name):
        return f"role.name {name!r} holds a control character or a double quote"
    return None


def records(st: state.State) -> dict[str, dict[str, Any]]:
    """name -> the API's record of each role of the default branch. A state written before
    roles were recorded has the project's owner role only."""
    if "roles" not in st:
        stamp = (st.get("project") or {}).get("created_at") or state.now_iso()
        st["roles"] = {ROLE: {"name": ROLE, "protected": False, "created_at": stamp,
                              "updated_at": stamp}}
    return st["roles"]


def view(branch_id: str, record: dict[str, Any], password: str | None = None) -> dict[str, Any]:
    """A role as Neon's API v2 ``Role`` schema shows it; ``password`` only in the answers
    that make one (create, reset_password)."""
    shown = {"branch_id": branch_id, "name": record["name"],
             "protected": bool(record.get("protected")),
             "created_at": record["created_at"], "updated_at": record["updated_at"]}
    if password is not None:
        shown["password"] = password
    return shown


def ensure_group(conn: Any) -> list[str]:
    """``neon_superuser`` and the owner role's membership and attributes (idempotent)."""
    done = []
    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (GROUP,)).fetchone() is None:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN CREATEDB CREATEROLE BYPASSRLS").format(
            sql.Identifier(GROUP)))
        done.append(f"created role {GROUP}")
    row = conn.execute("SELECT rolcreaterole AND rolcreatedb AND rolbypassrls, "
                       "pg_has_role(%s, %s, 'MEMBER') FROM pg_roles WHERE rolname = %s",
                       (ROLE, GROUP, ROLE)).fetchone()
    if row is not None and not (row[0] and row[1]):
        conn.execute(sql.SQL("ALTER ROLE {} CREATEDB CREATEROLE BYPASSRLS").format(
            sql.Identifier(ROLE)))
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(GROUP),
                                                     sql.Identifier(ROLE)))
        done.append(f"role {ROLE}: member of {GROUP}, CREATEROLE CREATEDB BYPASSRLS")
    return done


# The three changes below touch the compute only; the caller holds the state lock, so it
# calls refresh_pooler (which reads the state) once the lock is let go. Each ends by dropping
# the compute's client connections, as Neon does ("Connections to the compute endpoint are
# dropped", resetProjectBranchRolePassword and createProjectBranchRole,
# https://neon.com/docs/reference/api/branches/reset-project-branch-role-password): a
# transaction in flight fails; PgBouncer opens new server connections for the next ones.


def drop_connections(conn: Any) -> int:
    """Terminate every client backend but this admin session; how many."""
    rows = conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = "
        "'client backend' AND pid <> pg_backend_pid()").fetchall()
    return len(rows)


def create(cfg: NeonConfig, name: str, password: str) -> None:
    with cluster.admin(main_instance(cfg)) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB CREATEROLE BYPASSRLS PASSWORD {} "
                             "IN ROLE {}").format(sql.Identifier(name), sql.Literal(password),
                                                   sql.Identifier(GROUP)))
        drop_connections(conn)


def set_password(cfg: NeonConfig, name: str, password: str) -> None:
    with cluster.admin(main_instance(cfg)) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(name),
                                                                sql.Literal(password)))
        drop_connections(conn)


def drop(cfg: NeonConfig, name: str) -> None:
    with cluster.admin(main_instance(cfg)) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        drop_connections(conn)


def login_roles(cfg: NeonConfig) -> list[str]:
    """The branch's roles the pooler lets in: every role the API made, and the owner."""
    names = set(records(state.read(cfg)))
    return sorted(names | {ROLE})


def refresh_pooler(cfg: NeonConfig, allowed: list[str] | None | bool = False) -> bool:
    """The pooler's auth file (SCRAM verifiers) and stats users as the compute's roles are
    now; reloaded when either changed, and the reload given its event-loop turn, so the next
    client meets the new password. ``allowed`` False: the hba as it is."""
    pooler = main_pooler(cfg)
    if not pgbouncer.is_running(pooler):
        return False
    names = login_roles(cfg)
    if allowed is False:
        from casera_localcloud.neon import service  # service imports this module

        st = state.read(cfg)
        allowed = service.allowlist_for(st, st["branches"][MAIN_BRANCH_ID])
    changed = pgbouncer.write_auth(pooler, names, allowed)  # type: ignore[arg-type]
    changed = pgbouncer.configure(pooler, cfg, cfg.listen_addresses(), names) or changed
    if changed:
        pgbouncer.reload(pooler)
        time.sleep(0.3)
    return changed



def reapply(cfg: NeonConfig) -> list[str]:
    """The roles the API knows, with the passwords it stores, applied to the main compute
    again: after an in-place restore its pg_authid is the old one, while on Neon the control
    plane's role spec (names, passwords) is applied to a compute whenever it starts. Grants
    made by SQL are data and stay as restored."""
    from casera_localcloud.neon.service import scram_matches  # service imports this module

    done = []
    records_now = records(state.read(cfg))
    with cluster.admin(main_instance(cfg)) as conn:
        ensure_group(conn)
        for name, record in sorted(records_now.items()):
            password = record.get("password")
            if not password:
                continue
            row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                               (name,)).fetchone()
            if row is None:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB CREATEROLE BYPASSRLS "
                                     "PASSWORD {} IN ROLE {}").format(
                    sql.Identifier(name), sql.Literal(password), sql.Identifier(GROUP)))
                done.append(f"role {name} made again (the restored data predates it)")
            elif not scram_matches(row[0], password):
                conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(password)))
                done.append(f"role {name}: the stored password applied again")
    refresh_pooler(cfg)
    return done
