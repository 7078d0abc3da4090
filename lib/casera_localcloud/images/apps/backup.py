"""Stand-in for Casera's backup jobs. Redis: every ``BACKUP_INTERVAL_S`` it pulls a snapshot
from Redis with ``redis-cli --rdb`` (the replication protocol: Redis forks, writes an RDB and
streams it, from any node) and uploads it to B2 with the scoped backup key.

The key can list and write under its name prefix only (no delete, no read): a node holding it
can add snapshots but cannot erase or read back the history. Each upload carries its SHA-256
and what Redis said just before the snapshot (``DBSIZE``, ``master_repl_offset``), so a
restore can be checked against them. ``--once`` takes one snapshot and prints its record (the
backup runbook runs it inside the task for an on-demand snapshot).

PostgreSQL: every ``PGDUMP_INTERVAL_S`` (nightly) ``pg_dump --format=custom`` from the
direct host ``PGDUMP_HOST`` (not the pooler: pg_dump needs a session, a snapshot and SET
commands that PgBouncer's transaction mode does not carry), the password from the
``db_password`` secret through a private passfile (never the environment), uploaded under
``PGDUMP_PREFIX`` with the ``b2_pgdump_key`` (list and write under that prefix only), its
SHA-256 in the file info. ``--pg-dump-once`` takes one dump now and prints its record.

Runs on Debian bookworm's python3 with python3-redis 4.3, python3-b2sdk 1.17 and
postgresql-client 15.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import error_text, exit_on_sigterm, log, read_secret, redis_client

HEARTBEAT = Path(os.environ.get("CASERA_HEARTBEAT_FILE", "/tmp/backup-heartbeat"))
WORK_DIR = Path(os.environ.get("BACKUP_WORK_DIR", "/tmp"))
RDB_MAGIC = b"REDIS"


def b2_bucket(secret: str = "b2_backups") -> Any:
    """The backups bucket, found from what B2 granted the key (a bucket-restricted key
    names its bucket in the authorization, so the key needs no listBuckets)."""
    from b2sdk.v2 import B2Api, InMemoryAccountInfo

    key_id, _ = read_secret(f"{secret}_key_id")
    key, _ = read_secret(f"{secret}_key")
    if not key_id or not key:
        raise RuntimeError(f"secrets {secret}_key_id / {secret}_key are not mounted")
    api = B2Api(InMemoryAccountInfo())
    api.authorize_account(os.environ.get("B2_REALM", "production"), key_id, key)
    allowed = api.account_info.get_allowed()
    if not allowed.get("bucketId"):
        raise RuntimeError("the backup key is not restricted to a bucket; refusing to use it")
    return api.BUCKET_CLASS(api, allowed["bucketId"], name=allowed.get("bucketName"))


def _checked_sha256(target: Path, magic: bytes, what: str) -> str:
    """The file's SHA-256 (hex), after checking it starts as its format does: a tool that
    exits 0 with a truncated or foreign file must not become the newest backup."""
    head = target.read_bytes()[:len(magic)]
    if head != magic:
        raise RuntimeError(f"{what} does not start with {magic!r}: {head!r}")
    digest = hashlib.sha256()
    with target.open("rb") as source:
        for chunk in iter(lambda: source.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def snapshot_name(prefix: str, taken: float) -> str:
    # Sortable by name, so the newest snapshot is the last one listed.
    return f"{prefix}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(taken))}.rdb"


def take_snapshot(prefix: str) -> dict[str, Any]:
    """Pull one RDB, check it, upload it with its metadata; returns the record uploaded."""
    r = redis_client()
    # Read just before the fork that writes the snapshot: the snapshot holds at least
    # these writes (the counts of a busy Redis move on while it is taken).
    replication = r.info("replication")
    dbsize = r.dbsize()
    taken = time.time()
    target = WORK_DIR / "casera-snapshot.rdb"
    target.unlink(missing_ok=True)
    host, port = os.environ.get("REDIS_HOST", "redis"), os.environ.get("REDIS_PORT", "6379")
    done = subprocess.run(["redis-cli", "-h", host, "-p", port, "--rdb", str(target)],
                          capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0 or not target.exists():
        raise RuntimeError(f"redis-cli --rdb exited {done.returncode}: "
                           f"{(done.stderr or done.stdout).strip()[-200:]}")
    # A busy Redis changes between the fork and here: the snapshot's own count lies between.
    dbsize_after = r.dbsize()
    sha256 = _checked_sha256(target, RDB_MAGIC, "the snapshot")
    record = {
        "taken_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(taken)),
        "taken_at_ms": str(int(taken * 1000)),
        "dbsize": str(dbsize),
        "dbsize_after": str(dbsize_after),
        "repl_offset": str(replication.get("master_repl_offset", 0)),
        "repl_id": str(replication.get("master_replid", "")),
        "sha256": sha256,
        "size": str(target.stat().st_size),
    }
    name = snapshot_name(prefix, taken)
    uploaded = b2_bucket().upload_local_file(str(target), name,
                                             content_type="application/octet-stream",
                                             file_infos=record)
    target.unlink(missing_ok=True)
    return {"name": name, "file_id": uploaded.id_, **record}


def dump_name(prefix: str, database: str, taken: float) -> str:
    # Sortable by name within the prefix, so the newest dump is the last one listed.
    return f"{prefix}{database}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(taken))}.dump"


PGDUMP_MAGIC = b"PGDMP"  # the custom format's header


def take_dump(prefix: str) -> dict[str, Any]:
    """One ``pg_dump --format=custom`` of the database from the direct host, checked and
    uploaded with its SHA-256; returns the record uploaded."""
    host = os.environ.get("PGDUMP_HOST", "")
    if not host or "-pooler" in host.split(".")[0]:
        raise RuntimeError(f"PGDUMP_HOST is {host!r}: pg_dump needs the direct host, not the "
                           "pooler (no session features in transaction mode)")
    database, user = os.environ.get("DB_NAME", "casera"), os.environ.get("DB_USER", "casera")
    password, _ = read_secret("db_password")
    if not password:
        raise RuntimeError("secret db_password is not mounted")
    taken = time.time()
    with tempfile.TemporaryDirectory(prefix="casera-pgdump-", dir=WORK_DIR) as tmp:
        # A passfile readable by this uid only: the password never enters an environment
        # (/proc/<pid>/environ) or a command line.
        passfile = Path(tmp) / "pgpass"
        passfile.touch(mode=0o600)
        escaped = password.replace("\\", "\\\\").replace(":", "\\:")
        passfile.write_text(f"*:*:*:{user}:{escaped}\n")
        target = Path(tmp) / "casera.dump"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGPASSFILE": str(passfile),
               "PGSSLMODE": os.environ.get("DB_SSLMODE", "require"),
               "PGCONNECT_TIMEOUT": "10", "PGAPPNAME": "casera-pg-dump"}
        done = subprocess.run(
            ["pg_dump", "--format=custom", "--no-password", "--host", host,
             "--port", os.environ.get("PGDUMP_PORT", "5432"), "--username", user,
             "--dbname", database, "--file", str(target)],
            capture_output=True, text=True, timeout=3600, check=False, env=env)
        if done.returncode != 0 or not target.exists():
            raise RuntimeError(f"pg_dump exited {done.returncode}: "
                               f"{(done.stderr or done.stdout).strip()[-300:]}")
        sha256 = _checked_sha256(target, PGDUMP_MAGIC, "the dump")
        version = subprocess.run(["pg_dump", "--version"], capture_output=True, text=True,
                                 check=False).stdout.strip()
        record = {
            "taken_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(taken)),
            "taken_at_ms": str(int(taken * 1000)),
            "database": database,
            "host": host,
            "format": "custom",
            "pg_dump": version[:80],
            "sha256": sha256,
            "size": str(target.stat().st_size),
        }
        name = dump_name(prefix, database, taken)
        uploaded = b2_bucket("b2_pgdump").upload_local_file(
            str(target), name, content_type="application/octet-stream", file_infos=record)
    return {"name": name, "file_id": uploaded.id_, **record}


def _once(job: Any, prefix: str) -> None:
    """The runbook's on-demand run: one JSON line on stdout, non-zero on failure."""
    try:
        print(json.dumps(job(prefix)))
    except Exception as exc:  # noqa: BLE001 - the caller reads the message
        print(json.dumps({"error": error_text(exc)}))
        raise SystemExit(1) from None


def main() -> None:
    exit_on_sigterm()
    prefix = os.environ.get("BACKUP_PREFIX", "redis/")
    dump_prefix = os.environ.get("PGDUMP_PREFIX", "postgres/")
    if "--once" in sys.argv[1:]:
        _once(take_snapshot, prefix)
        return
    if "--pg-dump-once" in sys.argv[1:]:
        _once(take_dump, dump_prefix)
        return
    interval = float(os.environ.get("BACKUP_INTERVAL_S", "900"))
    # 0: no scheduled dumps (a stack without the dump settings).
    dump_interval = float(os.environ.get("PGDUMP_INTERVAL_S", "0"))
    log("starting", interval_s=interval, prefix=prefix, dump_interval_s=dump_interval,
        dump_prefix=dump_prefix)
    HEARTBEAT.touch()
    next_at = time.monotonic()
    # The first dump at start too: a new stack has a dump to drill on from its first minute.
    next_dump_at = time.monotonic() if dump_interval > 0 else float("inf")
    try:
        while True:
            if time.monotonic() >= next_at:
                try:
                    log("snapshot_uploaded", **take_snapshot(prefix))
                    next_at = time.monotonic() + interval
                except Exception as exc:  # noqa: BLE001 - Redis or B2 away: retry soon
                    log("snapshot_failed", error=error_text(exc))
                    next_at = time.monotonic() + min(30.0, interval)
            if time.monotonic() >= next_dump_at:
                try:
                    log("dump_uploaded", **take_dump(dump_prefix))
                    next_dump_at = time.monotonic() + dump_interval
                except Exception as exc:  # noqa: BLE001 - database or B2 away: retry soon
                    log("dump_failed", error=error_text(exc))
                    next_dump_at = time.monotonic() + min(300.0, dump_interval)
            # The heartbeat says the loop runs; a failing snapshot shows in the logs and in
            # the runbook's snapshot age, not as a restart loop.
            HEARTBEAT.touch()
            time.sleep(5)
    except (KeyboardInterrupt, SystemExit):
        log("stopping")


if __name__ == "__main__":
    main()
