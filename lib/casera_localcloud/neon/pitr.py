"""Point-in-time recovery: what makes a branch at time T hold exactly what was committed
before T, as a Neon branch does.

The main compute archives every WAL segment into ``neon/wal``; base backups
(``pg_basebackup -X none``) go to ``neon/basebackups``. A branch at T starts from the newest
base backup that finished before T and replays archived WAL up to T
(``recovery_target_time``, then ``promote``: the default action, ``pause``, would leave the
branch read-only).
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

from casera.errors import CaseraError
from casera.progress import wait_for
from casera_localcloud.neon import cluster
from casera_localcloud.neon.cluster import PG_BIN, Instance, as_postgres, owned_dir
from casera_localcloud.neon.config import NeonConfig

META = "casera-backup.json"


def backups(cfg: NeonConfig) -> list[tuple[datetime, Path]]:
    """Finished base backups, oldest first, with the time each became usable."""
    found = []
    if cfg.backups_dir.exists():
        for d in cfg.backups_dir.iterdir():
            meta = d / META
            if meta.exists():
                found.append((datetime.fromisoformat(json.loads(meta.read_text())["end_time"]),
                              d))
    return sorted(found)


def take_base_backup(cfg: NeonConfig, main: Instance) -> Path:
    owned_dir(cfg.backups_dir)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    dest = cfg.backups_dir / stamp
    # -X none: the backup relies on the archive, and pg_basebackup waits until the WAL it
    # needs is archived, so the backup is restorable once the command returns.
    as_postgres([str(PG_BIN / "pg_basebackup"), "-D", str(dest), "-X", "none", "-c", "fast",
                 "-h", str(main.socket_dir), "-p", str(main.port), "-U", "postgres"],
                timeout=600)
    (dest / META).write_text(json.dumps({"end_time": datetime.now(UTC).isoformat()}))
    return dest


def history_start(cfg: NeonConfig) -> datetime | None:
    found = backups(cfg)
    return found[0][0] if found else None


def prune(cfg: NeonConfig, retention_seconds: int) -> list[str]:
    """Drop base backups no branch within the retention window can need (keep the newest
    one older than the window start), then the archived WAL older than the oldest kept."""
    found = backups(cfg)
    horizon = datetime.now(UTC).timestamp() - retention_seconds
    older = [item for item in found if item[0].timestamp() < horizon]
    dropped = [path for _, path in older[:-1]]
    for path in dropped:
        shutil.rmtree(path)
    kept = [path for _, path in found if path not in dropped]
    if dropped and kept:
        label = (kept[0] / "backup_label").read_text()
        first_wal = label.split("(file ", 1)[1].split(")", 1)[0]
        as_postgres([str(PG_BIN / "pg_archivecleanup"), str(cfg.wal_dir), first_wal])
    return [f"pruned base backup {p.name}" for p in dropped]


def archive_through_now(cfg: NeonConfig, main: Instance, timeout: float = 60) -> str:
    """Make sure the archive holds a commit later than now, and the segment holding it.

    Recovery to a time T stops at the first commit after T; with none in the archive it ends
    with "recovery ended before configured recovery target was reached". A transaction with
    an xid writes a commit record, and pg_switch_wal closes the segment so it gets archived.
    """
    with cluster.admin(main) as conn:
        conn.execute("SELECT txid_current()")
        row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
    assert row is not None
    segment = str(row[0])
    wait_for(f"WAL segment {segment} in the archive",
             lambda: (cfg.wal_dir / segment).exists(), timeout, interval=0.2, show=False)
    return segment


def restore(cfg: NeonConfig, main: Instance, inst: Instance, target: datetime,
            listen: list[str], allowed: list[str] | None, timeout: float = 300) -> None:
    """Create ``inst`` as the main branch's state at ``target`` and start it, promoted."""
    candidates = [path for end, path in backups(cfg) if end < target]
    if not candidates:
        raise CaseraError(f"no base backup finished before {target.isoformat()}")
    archive_through_now(cfg, main)
    if inst.data_dir.exists():
        shutil.rmtree(inst.data_dir)
    owned_dir(inst.data_dir.parent, 0o755)
    as_postgres(["cp", "-a", str(candidates[-1]), str(inst.data_dir)])
    (inst.data_dir / META).unlink(missing_ok=True)
    recovery = {
        "restore_command": f"cp '{cfg.wal_dir}/%f' '%p'",
        "recovery_target_time": target.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00"),
        "recovery_target_action": "promote",
    }
    cluster.write_conf(inst, cluster.render_conf(inst, cfg, listen, recovery))
    cluster.write_hba(inst, allowed)
    signal = inst.data_dir / "recovery.signal"
    signal.touch()
    shutil.chown(signal, "postgres", "postgres")
    try:
        cluster.start(inst, timeout=int(timeout))
    except CaseraError as exc:
        raise CaseraError(f"branch {inst.name} did not start: {exc}; log tail: "
                          f"{_tail(inst.log_file)}") from exc

    def promoted() -> bool:
        if signal.exists():
            return False
        with cluster.admin(inst) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        return bool(row is not None and not row[0])

    wait_for(f"branch {inst.name} to reach {target.isoformat()} and promote", promoted,
             timeout, interval=0.3, show=False)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"

