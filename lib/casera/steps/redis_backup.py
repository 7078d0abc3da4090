"""Redis snapshots in B2: take one now, list them with their age, and verify the newest by
restoring it into a scratch ``redis-server`` on this machine.

The backup service (stack service ``backup``) takes a snapshot every
``redis.backup.interval_min`` and uploads it under ``redis.backup.prefix`` with its SHA-256
and what Redis said when it was taken (DBSIZE before and after, replication offset). Its key
can only add files there; reading them back for a verify or a restore uses the operator's
master key, which never leaves this machine.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from casera.context import RunContext
from casera.errors import StepFailed
from casera.plan import Plan, apply
from casera.providers import b2, docker_swarm, redis_db
from casera.result import StepResult, timed
from casera.steps.redis_checks import ServiceTask, asynq_findings, running_task
from casera.steps.storage import master_api

SNAPSHOT_SUFFIX = ".rdb"


@dataclass(frozen=True)
class BackupFile:
    """A backup object in B2 (a Redis snapshot, a pg_dump) as listed, with its file info."""

    name: str
    file_id: str
    size: int
    uploaded_ms: int
    info: dict[str, str]

    def age_s(self, now: float | None = None) -> float:
        return max(0.0, (now if now is not None else time.time()) - self.uploaded_ms / 1000)

    def recorded(self, key: str) -> int | None:
        value = self.info.get(key)
        return int(value) if value is not None and value.lstrip("-").isdigit() else None


def backup_bucket(ctx: RunContext, bucket: str) -> tuple[b2.B2Api, b2.BucketInfo]:
    """The master key's API and the ``b2.buckets`` entry ``bucket``, which must exist."""
    api = master_api(ctx)
    name = ctx.params.b2.buckets[bucket].name
    bucket = b2.get_bucket(api, name)
    if bucket is None:
        raise StepFailed(f"B2 bucket {name} does not exist: run the bootstrap (b2 buckets)")
    return api, bucket


def backup_files(ctx: RunContext, bucket: str, prefix: str, suffix: str) -> list[BackupFile]:
    """Every backup under ``prefix`` whose name ends in ``suffix``, oldest first (the names
    sort by time)."""
    api, info = backup_bucket(ctx, bucket)
    files = b2.list_files(api, info.bucket_id, info.name, prefix)
    return sorted((BackupFile(f.name, f.file_id, f.size, f.upload_ms, f.info) for f in files
                   if f.name.endswith(suffix)), key=lambda f: f.name)


def snapshots(ctx: RunContext) -> list[BackupFile]:
    """Every Redis snapshot under the prefix, oldest first."""
    backup = ctx.params.redis.backup
    return backup_files(ctx, backup.bucket, backup.prefix, SNAPSHOT_SUFFIX)


def age_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def backup_task(ctx: RunContext) -> tuple[ServiceTask | None, str]:
    """The backup service's running task and its node, for a backup taken now the way the
    scheduled ones are. A dry run may plan without one (the stack not deployed yet)."""
    task = running_task(ctx, "backup")
    if task is None and not ctx.dry_run:
        raise StepFailed("no running backup task: is the stack deployed (bootstrap)?")
    return task, task.node if task else "<the backup task's node>"


def take_snapshot(ctx: RunContext) -> StepResult:
    """One snapshot now, by the backup service itself (its command run inside its task), so
    it goes the way the scheduled ones go: ``redis-cli --rdb``, then an upload with the
    backup key. A new file in B2 each run: a change, shown in a dry run and not made."""
    backup = ctx.params.redis.backup
    with timed(StepResult("redis snapshot", f"{backup.bucket}/{backup.prefix}",
                          dry_run=ctx.dry_run)) as result:
        task, where = backup_task(ctx)
        plan = Plan()
        plan.add(f"+ snapshot of redis uploaded to {ctx.params.b2.buckets[backup.bucket].name}"
                 f"/{backup.prefix}<UTC time>.rdb (by the backup task on {where})",
                 partial(run_backup_command, task, list(backup.snapshot_command)) if task else None)
        applied = apply(ctx, result, plan)
        if applied.dry_run:
            return result
        record = applied.made[0]
        result.reason = f"{record['name']} uploaded"
        listed = {s.name: s for s in snapshots(ctx)}
        found = listed.get(record["name"])
        result.check("listed in B2", found is not None,
                     f"{record['name']}, {found.size} bytes" if found else "NOT listed")
        if found is not None:
            result.check("metadata", all(found.info.get(k) == record.get(k) for k in
                                         ("sha256", "dbsize", "repl_offset")),
                         f"sha256 {found.info.get('sha256', '?')[:12]}..., DBSIZE "
                         f"{found.info.get('dbsize')}, offset {found.info.get('repl_offset')}")
        ctx.shared["redis_snapshot"] = record
    return result


def run_backup_command(task: ServiceTask, command: list[str], what: str = "snapshot",
                       timeout_s: float = 1800) -> dict[str, str]:
    """Run one of the backup service's jobs inside its task (``--once``, ``--pg-dump-once``)
    and return the JSON record it printed (the uploaded file's name and metadata). A job
    that does not finish in ``timeout_s`` fails the step, saying so (an image older than the
    flag runs its schedule loop instead and never returns); the exec is left to the task."""
    pool = ThreadPoolExecutor(max_workers=1)
    running = pool.submit(docker_swarm.exec_output, task.client, task.container_id, command)
    try:
        code, output = running.result(timeout=timeout_s)
    except FutureTimeout:
        raise StepFailed(f"the {what} in the backup task on {task.node} did not finish within "
                         f"{timeout_s:.0f} s ({' '.join(command)}): is the task's image "
                         "current (an older one ignores the flag and keeps running its "
                         "schedule)? Redeploy with the bootstrap, then run again") from None
    finally:
        pool.shutdown(wait=False)
    last = next((line for line in reversed(output.strip().splitlines())
                 if line.startswith("{")), "")
    try:
        record = json.loads(last) if last else {}
    except json.JSONDecodeError:
        record = {}
    if code != 0 or "name" not in record:
        raise StepFailed(f"the {what} in the backup task on {task.node} failed (exit {code}): "
                         f"{record.get('error') or output.strip()[-300:]}")
    return {k: str(v) for k, v in record.items()}


def list_snapshots(ctx: RunContext) -> StepResult:
    """Read-only: every snapshot with its age, size and key count; the newest must be younger
    than twice the schedule's interval, or the backup service is not doing its job."""
    backup = ctx.params.redis.backup
    with timed(StepResult("redis snapshots", f"{backup.bucket}/{backup.prefix}",
                          dry_run=ctx.dry_run)) as result:
        found = snapshots(ctx)
        now = time.time()
        for snap in found[-10:]:
            result.note(snap.name.removeprefix(backup.prefix),
                        f"age {age_text(snap.age_s(now))}, {snap.size} bytes, DBSIZE "
                        f"{snap.info.get('dbsize', '?')}, "
                        f"offset {snap.info.get('repl_offset', '?')}")
        limit = 2 * backup.interval_min * 60
        newest = found[-1] if found else None
        result.check("newest snapshot recent", newest is not None and newest.age_s(now) <= limit,
                     f"{age_text(newest.age_s(now))} old (limit {age_text(limit)}: twice the "
                     f"{backup.interval_min} min schedule)" if newest else "no snapshot at all")
        result.reason = f"{len(found)} snapshot(s)" + (
            ", showing the newest 10" if len(found) > 10 else "")
    return result


def verify_newest_snapshot(ctx: RunContext) -> StepResult:
    """Read-only: download the newest snapshot with the master key, check its SHA-256, load it
    into a scratch redis-server on this machine and compare its key count with what the
    backup service recorded when it took it; Asynq's integrity checked in the copy too."""
    backup = ctx.params.redis.backup
    with timed(StepResult("redis snapshot restore", f"{backup.bucket}/{backup.prefix}",
                          dry_run=ctx.dry_run)) as result:
        verify_newest_into(ctx, result)
    return result


def verify_newest_into(ctx: RunContext, result: StepResult) -> BackupFile | None:
    """:func:`verify_newest_snapshot`'s checks, added to ``result`` (the backup drill adds
    its own beside them in one step); the snapshot checked, or None when there is none."""
    backup = ctx.params.redis.backup
    found = snapshots(ctx)
    if not result.check("a snapshot exists", bool(found),
                        f"{len(found)} under {backup.prefix}"):
        return None
    newest = found[-1]
    api, bucket = backup_bucket(ctx, ctx.params.redis.backup.bucket)
    with tempfile.TemporaryDirectory(prefix="casera-redis-restore-") as tmp:
        rdb = Path(tmp) / "snapshot.rdb"
        b2.download_file(api, bucket.bucket_id, bucket.name, newest.file_id, rdb)
        digest = sha256_file(rdb)
        want = newest.info.get("sha256", "")
        result.check("sha256", digest == want,
                     f"{digest[:16]}... matches the upload's metadata" if digest == want
                     else f"downloaded {digest[:16]}..., metadata says {want[:16] or '?'}")
        with redis_db.scratch_server(rdb, Path(tmp) / "scratch") as scratch:
            facts = redis_db.facts(scratch)
            keys = redis_db.asynq_keys(scratch)
    low = min(newest.recorded("dbsize") or 0, newest.recorded("dbsize_after") or 0)
    high = max(newest.recorded("dbsize") or 0, newest.recorded("dbsize_after") or 0)
    result.check("restored key count", low <= facts.dbsize <= high and
                 newest.recorded("dbsize") is not None,
                 f"{facts.dbsize} keys in the scratch redis-server; DBSIZE was {low}"
                 + (f"-{high}" if high != low else "") + " when the snapshot was taken")
    for name, ok, detail in asynq_findings(keys):
        result.check(f"restored {name}", ok, detail)
    result.reason = (f"{newest.name} ({age_text(newest.age_s())} old) restored into a scratch "
                     f"redis-server {facts.version}")
    ctx.shared["redis_restored"] = {"name": newest.name, "dbsize": facts.dbsize}
    return newest


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for chunk in iter(lambda: source.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
