"""``up()``, ``down()`` and ``status()`` of the local Neon, and the changes the API applies.

Everything here is idempotent: ``up`` compares what runs with what the state says and only
starts, reloads or restarts what differs, so a second ``up`` takes seconds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import shutil
import socket
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from psycopg import sql

from casera.errors import CaseraError
from casera.progress import wait_for
from casera_localcloud import process
from casera_localcloud.local_credentials import read_local_secrets, write_local_secret
from casera_localcloud.neon import cluster, pgbouncer, pitr, roles, state
from casera_localcloud.neon.cluster import Instance, owned_dir
from casera_localcloud.neon.config import (
    DATABASE,
    MAIN_BRANCH_ID,
    MAIN_ENDPOINT_ID,
    PLANS,
    PROJECT_ID,
    RETENTION_DEFAULT,
    RETENTION_MAX,
    ROLE,
    NeonConfig,
    load_config,
)
from casera_localcloud.neon.instances import (
    branch_instance,
    branch_pooler,
    main_instance,
    main_pooler,
)
from casera_localcloud.neon.pgbouncer import Pooler
from casera_localcloud.neon.tls import ensure_tls

# A new base backup when the newest is older than this: it bounds how much WAL a branch
# must replay, which is what makes branch creation take seconds rather than minutes.
BASE_BACKUP_MAX_AGE = timedelta(hours=6)


# ---------------------------------------------------------------- project and allowlist


def new_project(plan: str) -> dict[str, Any]:
    stamp = state.now_iso()
    return {
        "id": PROJECT_ID,
        "name": "casera",
        "plan": plan,
        "region_id": "local",
        "pg_version": 15,
        "history_retention_seconds": RETENTION_DEFAULT[plan],
        "settings": {"allowed_ips": {"ips": [], "protected_branches_only": False}},
        "default_branch_id": MAIN_BRANCH_ID,
        "created_at": stamp,
        "updated_at": stamp,
    }


def change_plan(st: state.State, plan: str) -> list[str]:
    """Move the emulated account to ``plan``; what changed (nothing when already on it).

    Refused (``ApiError`` 400 from the API, ``CaseraError`` from ``up``) while the project uses
    what the new plan lacks: an IP allowlist on a plan without IP Allow, or a history window
    over its maximum. Neon does not publish what a downgrade does to them, and silently
    keeping or dropping either would leave the local cloud unlike anything real; clearing
    them first is the honest order, and it is what leaves a test's cloud as it found it.
    """
    if plan not in PLANS:
        raise PlanRefused(f"plan must be one of {', '.join(PLANS)}, not {plan!r}")
    project = st["project"]
    if project["plan"] == plan:
        return []
    ips = project["settings"]["allowed_ips"].get("ips") or []
    if plan != "scale" and ips:
        raise PlanRefused(f"the project has an IP allowlist ({len(ips)} entries) and the "
                          f"{plan} plan has no IP Allow: clear it first (PATCH the project "
                          "with settings.allowed_ips.ips = [])")
    retention = project["history_retention_seconds"]
    if retention > RETENTION_MAX[plan]:
        raise PlanRefused(f"history_retention_seconds is {retention}, over the {plan} plan's "
                          f"{RETENTION_MAX[plan]}: lower it first")
    old = project["plan"]
    project["plan"] = plan
    project["updated_at"] = state.now_iso()
    return [f"project {PROJECT_ID} moved from the {old} to the {plan} plan"]


class PlanRefused(CaseraError):
    """A plan change the project's settings do not allow (see :func:`change_plan`)."""


def main_branch_record() -> dict[str, Any]:
    stamp = state.now_iso()
    return {"id": MAIN_BRANCH_ID, "name": "main", "parent_id": None,
            "parent_timestamp": None, "endpoint_id": MAIN_ENDPOINT_ID, "slot": None,
            "current_state": "ready", "default": True, "protected": False,
            "created_at": stamp, "updated_at": stamp}


def allowlist_for(st: state.State, branch: dict[str, Any]) -> list[str] | None:
    """The allowlist a branch's compute enforces; None means everyone (Neon's empty list)."""
    allowed = st["project"]["settings"]["allowed_ips"]
    if not allowed.get("ips"):
        return None
    if allowed.get("protected_branches_only") and not branch.get("protected"):
        return None
    return list(allowed["ips"])


def computes(cfg: NeonConfig, st: state.State) -> list[tuple[dict[str, Any], Instance, Pooler]]:
    found = []
    for branch in st["branches"].values():
        if branch["id"] == MAIN_BRANCH_ID:
            found.append((branch, main_instance(cfg), main_pooler(cfg)))
        elif branch.get("slot") is not None:
            found.append((branch, branch_instance(cfg, branch["id"], branch["slot"]),
                          branch_pooler(cfg, branch["id"], branch["slot"])))
    return found


def reload_and_confirm(inst: Instance, timeout: float = 10) -> None:
    """Reload and wait until new connections see it: pg_ctl reload only sends SIGHUP, and a
    client connecting right after an allowlist change must meet the new rules."""
    with cluster.admin(inst) as conn:
        row = conn.execute("SELECT pg_conf_load_time()").fetchone()
    before = row[0] if row else None
    cluster.reload(inst)

    def reloaded() -> bool:
        with cluster.admin(inst) as conn:
            got = conn.execute("SELECT pg_conf_load_time()").fetchone()
        return bool(got and got[0] != before)

    wait_for(f"{inst.name} to reload its configuration", reloaded, timeout, interval=0.05,
             show=False)


def apply_allowlist(cfg: NeonConfig, st: state.State) -> list[str]:
    """Write every compute's and pooler's hba from the project's allowlist; reload."""
    done = []
    for branch, inst, pooler in computes(cfg, st):
        if not cluster.is_running(inst):
            continue
        allowed = allowlist_for(st, branch)
        if cluster.write_hba(inst, allowed):
            reload_and_confirm(inst)
            done.append(f"{inst.name}: pg_hba.conf rewritten and reloaded")
        if pgbouncer.is_running(pooler) and pgbouncer.write_auth(
                pooler, roles.login_roles(cfg), allowed):
            pgbouncer.reload(pooler)
            # PgBouncer handles SIGHUP in its event loop; give it that loop turn.
            time.sleep(0.3)
            done.append(f"{pooler.name} pooler: hba reloaded")
    return done


# ---------------------------------------------------------------- computes


def scram_matches(verifier: str | None, password: str) -> bool:
    """Whether a pg_authid SCRAM verifier is for ``password`` (so ``up`` does not reset it)."""
    if not verifier or not verifier.startswith("SCRAM-SHA-256$"):
        return False
    try:
        iterations_salt, keys = verifier.split("$", 1)[1].split("$")
        iterations, salt = iterations_salt.split(":")
        stored_key = base64.b64decode(keys.split(":")[0])
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt),
                                     int(iterations))
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        return hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key)
    except ValueError:
        return False


def ensure_role_and_database(inst: Instance, password: str, reset: bool = True) -> list[str]:
    """The project's owner role (with ``password`` when it is made, or when ``reset``), its
    database, and ``neon_superuser``."""
    done = []
    with cluster.admin(inst) as conn:
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                           (ROLE,)).fetchone()
        if row is None:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(ROLE), sql.Literal(password)))
            done.append(f"created role {ROLE}")
        elif reset and not scram_matches(row[0], password):
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(ROLE), sql.Literal(password)))
            done.append(f"reset the password of role {ROLE} to the one the project stores")
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                        (DATABASE,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(DATABASE), sql.Identifier(ROLE)))
            done.append(f"created database {DATABASE}")
        done += roles.ensure_group(conn)
    return done


def ensure_postgres(cfg: NeonConfig, inst: Instance, listen: list[str],
                    allowed: list[str] | None) -> list[str]:
    """Configure and run a compute as the state says; report what changed."""
    done = []
    need = cluster.write_conf(inst, cluster.render_conf(inst, cfg, listen))
    hba_changed = cluster.write_hba(inst, allowed)
    if not cluster.is_running(inst):
        cluster.start(inst)
        done.append(f"started PostgreSQL {inst.name} on port {inst.port}")
    elif need == "restart":
        cluster.restart(inst)
        done.append(f"restarted PostgreSQL {inst.name} (listen/port settings changed)")
    elif need or hba_changed:
        reload_and_confirm(inst)
        done.append(f"reloaded PostgreSQL {inst.name}")
    return done


def ensure_pooler(cfg: NeonConfig, pooler: Pooler, listen: list[str],
                  allowed: list[str] | None) -> list[str]:
    names = roles.login_roles(cfg)
    need = pgbouncer.configure(pooler, cfg, listen, names)
    auth_changed = pgbouncer.write_auth(pooler, names, allowed)
    if not pgbouncer.is_running(pooler):
        pgbouncer.start(pooler)
        return [f"started PgBouncer {pooler.name} on port {pooler.port}"]
    if need:
        pgbouncer.stop(pooler)
        pgbouncer.start(pooler)
        return [f"restarted PgBouncer {pooler.name} (its settings changed)"]
    if auth_changed:
        pgbouncer.reload(pooler)
        return [f"reloaded PgBouncer {pooler.name}"]
    return []


def create_branch_compute(cfg: NeonConfig, branch_id: str, target: datetime) -> None:
    """Restore the main branch as of ``target`` into the branch's own compute and pooler."""
    st = state.read(cfg)
    branch = st["branches"][branch_id]
    inst = branch_instance(cfg, branch_id, branch["slot"])
    pooler = branch_pooler(cfg, branch_id, branch["slot"])
    listen = cfg.listen_addresses()
    allowed = allowlist_for(st, branch)
    pitr.restore(cfg, main_instance(cfg), inst, target, listen, allowed)
    ensure_pooler(cfg, pooler, listen, allowed)
    # An allowlist change made while the restore ran must reach this compute too.
    apply_allowlist(cfg, state.read(cfg))


def start_kept_branch_compute(cfg: NeonConfig, branch_id: str) -> None:
    """Start a compute on a branch's kept data directory (a branch a restore preserved: the
    main branch's data as it was). As a branch it never archives: its WAL is not the
    project's history, and it would collide with the main branch's segment names."""
    st = state.read(cfg)
    branch = st["branches"][branch_id]
    inst = branch_instance(cfg, branch_id, branch["slot"])
    allowed = allowlist_for(st, branch)
    listen = cfg.listen_addresses()
    # The main compute's runtime files are not this compute's.
    (inst.data_dir / "postmaster.pid").unlink(missing_ok=True)
    ensure_postgres(cfg, inst, listen, allowed)
    ensure_pooler(cfg, branch_pooler(cfg, branch_id, branch["slot"]), listen, allowed)
    apply_allowlist(cfg, state.read(cfg))


def restore_main_in_place(cfg: NeonConfig, target: datetime, kept_id: str, slot: int,
                          timeout: float = 300) -> None:
    """The main branch's data replaced by its own state at ``target``; the data before kept
    under ``branches/<kept_id>`` (no compute runs on it). Ports, endpoint and pooler stay,
    so connection strings keep working; open connections are cut, as on Neon.

    The state at ``target`` is built beside the running main (on the kept branch's slot
    port) with archiving ON, so the new timeline's history file reaches the archive: later
    point-in-time branches follow it (recovery_target_timeline 'latest'), and the next
    restore picks a timeline id no one used. Only then is the main stopped and swapped.
    If anything fails before the swap, the main branch is untouched."""
    main = main_instance(cfg)
    scratch = Instance(name="restoring", data_dir=cfg.home / "branches" / f"restoring-{kept_id}",
                       port=cfg.branch_port_base + slot, socket_dir=cfg.run_dir,
                       log_file=cfg.home / "log" / "postgres-restoring.log",
                       archive_dir=cfg.wal_dir)
    st = state.read(cfg)
    allowed = allowlist_for(st, st["branches"][MAIN_BRANCH_ID])
    listen = cfg.listen_addresses()
    kept_dir = cfg.home / "branches" / kept_id
    try:
        pitr.restore(cfg, main, scratch, target, ["127.0.0.1"], allowed, timeout)
        histories = [p.name for p in (scratch.data_dir / "pg_wal").glob("*.history")]
        wait_for(f"the new timeline's history ({', '.join(histories)}) in the archive",
                 lambda: all((cfg.wal_dir / h).exists() for h in histories), 60,
                 interval=0.2, show=False)
        cluster.stop(scratch)
    except BaseException:
        cluster.stop(scratch)
        shutil.rmtree(scratch.data_dir, ignore_errors=True)
        raise
    pooler = main_pooler(cfg)
    pgbouncer.stop(pooler)
    cluster.stop(main)
    owned_dir(kept_dir.parent)
    main.data_dir.rename(kept_dir)
    scratch.data_dir.rename(main.data_dir)
    (main.data_dir / "postmaster.pid").unlink(missing_ok=True)
    ensure_postgres(cfg, main, listen, allowed)
    ensure_pooler(cfg, pooler, listen, allowed)
    # A base backup on the new timeline: branches after the restore start from it.
    pitr.take_base_backup(cfg, main)


def delete_branch_compute(cfg: NeonConfig, branch: dict[str, Any]) -> None:
    if branch.get("slot") is None:
        # A branch without a compute may still hold data (one a restore preserved).
        shutil.rmtree(cfg.home / "branches" / branch["id"], ignore_errors=True)
        return
    pooler = branch_pooler(cfg, branch["id"], branch["slot"])
    inst = branch_instance(cfg, branch["id"], branch["slot"])
    pgbouncer.stop(pooler)
    cluster.stop(inst)
    shutil.rmtree(pooler.conf_dir, ignore_errors=True)
    shutil.rmtree(inst.data_dir, ignore_errors=True)


def maybe_base_backup(cfg: NeonConfig, retention_seconds: int) -> list[str]:
    found = pitr.backups(cfg)
    if found and datetime.now(UTC) - found[-1][0] < BASE_BACKUP_MAX_AGE:
        return pitr.prune(cfg, retention_seconds)
    path = pitr.take_base_backup(cfg, main_instance(cfg))
    return [f"took base backup {path.name}", *pitr.prune(cfg, retention_seconds)]


# ---------------------------------------------------------------- API server process


def _api_pidfile(cfg: NeonConfig) -> Path:
    return cfg.home / "api.pid"


def api_pid(cfg: NeonConfig) -> int | None:
    return process.running_pid(_api_pidfile(cfg))


def api_answers(cfg: NeonConfig) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", cfg.api_port), timeout=1):
            return True
    except OSError:
        return False


def api_code_digest() -> str:
    """A digest of the code the API server runs (this package and the HTTP server under it):
    a server started from other code is restarted by ``up``, or a checkout's new endpoints
    would stay unserved while the old process answers."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted([*here.glob("*.py"), here.parent / "http_server.py"]):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def ensure_api(cfg: NeonConfig) -> list[str]:
    stamp = cfg.home / "api.code"
    code = api_code_digest()
    ran = stamp.read_text().strip() if stamp.exists() else ""
    lines = []
    if api_pid(cfg) and api_answers(cfg):
        if ran == code:
            return []
        lines += stop_api(cfg)
        lines.append(f"the Neon API's code changed ({ran or 'unknown'} -> {code}): restarted")
    pid = process.start_detached(f"the Neon API on {cfg.api_url}",
                                 [sys.executable, "-m", "casera_localcloud.neon"],
                                 _api_pidfile(cfg), cfg.home / "log" / "api.log",
                                 lambda: api_answers(cfg), 30, show=False, cwd=cfg.home)
    stamp.write_text(code + "\n")
    return [*lines, f"started the Neon API on {cfg.api_url} (pid {pid})"]


def stop_api(cfg: NeonConfig) -> list[str]:
    pid = process.stop(_api_pidfile(cfg), "the Neon API", 15)
    if pid is None:
        return []
    return [f"stopped the Neon API (pid {pid})"]


# ---------------------------------------------------------------- up / down / status


def _secret(name: str, make: Any) -> tuple[str, bool]:
    value = os.environ.get(name) or read_local_secrets().get(name)
    if value:
        write_local_secret(name, value)
        return value, False
    value = make()
    write_local_secret(name, value)
    return value, True


def ensure_traversable(path: Path) -> list[str]:
    """Give every ancestor of ``path`` the search bit for others: PostgreSQL runs as
    ``postgres`` and must walk down to its data directory (a 0700 CASERA_LOCAL_HOME, such as
    a pytest tmp dir, would stop it with a bare "permission denied")."""
    done = []
    for parent in reversed(path.parents):
        mode = parent.stat().st_mode & 0o7777
        if not mode & 0o001:
            os.chmod(parent, mode | 0o001)
            done.append(f"made {parent} traversable for the postgres user (o+x)")
    return done


def api_key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def up(plan: str | None = None) -> list[str]:
    """Start the local Neon (idempotent). ``plan`` ("launch" or "scale") changes the
    emulated account's plan (default: CASERA_NEON_PLAN); left out, a new project is on
    Launch, as the seed's, and an existing one keeps its plan."""
    plan = plan or os.environ.get("CASERA_NEON_PLAN") or None
    if plan is not None and plan not in PLANS:
        raise CaseraError(f"plan must be one of {', '.join(PLANS)} (CASERA_NEON_PLAN), "
                          f"not {plan!r}")
    started = time.monotonic()
    cfg = load_config()
    lines = cluster.ensure_packages()
    cfg.home.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.home, 0o755)
    lines += ensure_traversable(cfg.home)
    for sub in ("wal", "basebackups", "branches", "run", "pgbouncer"):
        owned_dir(cfg.home / sub)
    owned_dir(cfg.home / "log", 0o755)
    lines += ensure_tls(cfg)

    password, made = _secret("CASERA_DB_PASSWORD", lambda: secrets.token_urlsafe(24))
    if made:
        lines.append("generated CASERA_DB_PASSWORD (secrets/local.env)")
    api_key, made = _secret("CASERA_NEON_API_KEY", lambda: "neon_local_" + secrets.token_hex(24))
    if made:
        lines.append("generated CASERA_NEON_API_KEY (secrets/local.env)")

    with state.locked(cfg) as st:
        if st["project"] is None:
            st["project"] = new_project(plan or "launch")
            st["branches"][MAIN_BRANCH_ID] = main_branch_record()
            lines.append(f"created project {PROJECT_ID} on the {st['project']['plan']} plan")
        elif plan:
            lines += change_plan(st, plan)
        st["api_key_sha256"] = api_key_hash(api_key)
        # Neon never changes a password by itself: once the API reset the owner role's
        # password (a DB password rotation retires it that way), up leaves it alone rather
        # than bring CASERA_DB_PASSWORD, a retired credential, back to life.
        reset_by_api = bool(roles.records(st)[ROLE].get("password"))
        snapshot = {"project": st["project"], "branches": dict(st["branches"])}

    main = main_instance(cfg)
    if not (main.data_dir / "PG_VERSION").exists():
        cluster.initdb(main)
        lines.append(f"initialised the main compute in {main.data_dir}")
    listen = cfg.listen_addresses()
    main_branch = snapshot["branches"][MAIN_BRANCH_ID]
    allowed = allowlist_for(snapshot, main_branch)
    lines += ensure_postgres(cfg, main, listen, allowed)
    # The pooler's auth file copies the role's verifier, so the role comes first.
    lines += ensure_role_and_database(main, password, reset=not reset_by_api)
    lines += ensure_pooler(cfg, main_pooler(cfg), listen, allowed)
    lines += maybe_base_backup(cfg, snapshot["project"]["history_retention_seconds"])
    for branch, inst, pooler in computes(cfg, snapshot):
        if branch["id"] == MAIN_BRANCH_ID or branch["current_state"] != "ready":
            continue
        branch_allowed = allowlist_for(snapshot, branch)
        try:
            lines += ensure_postgres(cfg, inst, listen, branch_allowed)
            lines += ensure_pooler(cfg, pooler, listen, branch_allowed)
        except CaseraError as exc:
            # One broken branch must not keep the rest of the local cloud down.
            lines.append(f"branch {branch['id']} did not start: {exc} (delete it via the API)")
    lines += ensure_api(cfg)
    took = time.monotonic() - started
    if not lines:
        lines.append("neon: everything already up")
    return [*lines, f"neon: up in {took:.1f}s (listening on {', '.join(listen)})"]


def down(purge: bool = False) -> list[str]:
    """Stop the API, poolers and computes. Data stays unless ``purge``: branches, archive
    and base backups are the local Neon's history, like a real project's."""
    cfg = load_config()
    if not cfg.home.exists():
        return ["neon: nothing to stop"]
    lines = stop_api(cfg)
    st = state.read(cfg)
    if st["project"] is not None:
        for _branch, inst, pooler in reversed(computes(cfg, st)):
            if pgbouncer.stop(pooler):
                lines.append(f"stopped PgBouncer {pooler.name}")
            if cluster.stop(inst):
                lines.append(f"stopped PostgreSQL {inst.name}")
    if purge:
        shutil.rmtree(cfg.home)
        lines.append(f"removed {cfg.home}")
    return lines or ["neon: nothing was running"]


def status() -> list[str]:
    cfg = load_config()
    if not cfg.state_file.exists():
        return ["neon: not set up (run `casera local up`)"]
    st = state.read(cfg)
    project = st["project"]
    ips = project["settings"]["allowed_ips"]["ips"]
    lines = [
        f"neon API {cfg.api_url}: {'answering' if api_answers(cfg) else 'DOWN'}",
        f"project {project['id']}: plan {project['plan']}, history retention "
        f"{project['history_retention_seconds']}s, allowlist "
        f"{', '.join(ips) if ips else '(empty: every address allowed)'}",
        f"CA certificate (sslrootcert): {cfg.ca_file}",
    ]
    start = pitr.history_start(cfg)
    lines.append(f"history from {start.isoformat() if start else '(no base backup yet)'}")
    for branch, inst, pooler in computes(cfg, st):
        pg_ok = cluster.is_running(inst)
        pool_ok = pgbouncer.is_running(pooler)
        lines.append(f"branch {branch['id']} ({branch['current_state']}): PostgreSQL "
                     f"{inst.port} {'up' if pg_ok else 'DOWN'}, PgBouncer {pooler.port} "
                     f"{'up' if pool_ok else 'DOWN'}")
    return lines
