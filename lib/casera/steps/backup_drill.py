"""The backup drill (issue 12): prove every backup by restoring it, touching nothing live.

- :func:`take_dump`: on request only (``dump_now``), the backup service's pg_dump run now,
  inside its task, the way the nightly one runs: one new file in B2, nothing else.
- :func:`verify_newest_dump`: the newest dump under ``neon.backup.prefix`` downloaded with the
  operator's master key, its SHA-256 checked against what the backup job recorded at upload
  (a mismatch is red and names the dump: bit rot, or an object replaced by someone holding a
  write key), restored whole into a scratch PostgreSQL on this machine, and its row counts
  compared with live's, read in a read-only transaction from the direct host.
- :func:`verify_redis_snapshot`: the Redis runbook's own restore check of the newest snapshot
  (SHA-256, scratch ``redis-server``, Asynq integrity), plus its age and live's key count.

Ages come from B2's upload timestamp, so a job that stopped uploading shows, whatever its
logs say. Scratch servers run here, on the operator's machine: the same code works against
real B2 and Neon, and nothing is started on the nodes.
"""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path

from casera.context import RunContext
from casera.db_roles import app_credential
from casera.errors import ProviderError
from casera.plan import Plan, apply
from casera.providers import b2, postgres, redis_db
from casera.result import StepResult, timed
from casera.steps import redis_backup
from casera.steps.redis_backup import BackupFile, age_text, sha256_file
from casera.steps.redis_checks import redis_client

DUMP_SUFFIX = ".dump"
# Tables listed one by one in the result; the rest are summed up.
SHOWN_TABLES = 20


def dumps(ctx: RunContext) -> list[BackupFile]:
    """Every dump under the prefix, oldest first."""
    backup = ctx.params.neon.backup
    return redis_backup.backup_files(ctx, backup.bucket, backup.prefix, DUMP_SUFFIX)


def checksum_finding(digest: str, recorded: str) -> tuple[bool, str]:
    """Whether a downloaded file's SHA-256 is the one recorded at upload, and the words for
    it. No recorded checksum is a failure too: the file cannot be vouched for."""
    if not recorded:
        return False, f"downloaded {digest[:16]}..., but the upload recorded no sha256"
    if digest == recorded:
        return True, f"{digest[:16]}... matches the upload's metadata"
    return False, f"downloaded {digest[:16]}..., the upload recorded {recorded[:16]}...: " \
                  "the object is not the dump that was uploaded (corrupted or replaced)"


def take_dump(ctx: RunContext, dump_now: bool) -> StepResult:
    """A pg_dump now, by the backup service itself (its command run inside its task), so it
    goes the way the nightly one goes. Only when asked (``dump_now``): otherwise the drill
    proves the newest scheduled dump. A new file in B2: a change, shown in a dry run."""
    backup = ctx.params.neon.backup
    with timed(StepResult("pg_dump now", f"{backup.bucket}/{backup.prefix}",
                          dry_run=ctx.dry_run)) as result:
        if not dump_now:
            result.reason = ("not asked (dump_now=False): the drill proves the newest "
                             "scheduled dump")
            return result
        task, where = redis_backup.backup_task(ctx)
        plan = Plan()
        plan.add(f"+ pg_dump of {ctx.params.neon.database} from {ctx.params.neon.direct_host} "
                 f"uploaded to {ctx.params.b2.buckets[backup.bucket].name}/{backup.prefix}"
                 f"{ctx.params.neon.database}-<UTC time>.dump (by the backup task on {where})",
                 partial(redis_backup.run_backup_command, task, list(backup.dump_command),
                         "pg_dump", backup.dump_timeout_s) if task else None)
        applied = apply(ctx, result, plan)
        if applied.dry_run:
            return result
        record = applied.made[0]
        result.reason = f"{record['name']} uploaded"
        found = {d.name: d for d in dumps(ctx)}.get(record["name"])
        result.check("listed in B2", found is not None,
                     f"{record['name']}, {found.size} bytes" if found else "NOT listed")
        if found is not None:
            result.check("sha256 recorded", found.info.get("sha256") == record.get("sha256")
                         and len(found.info.get("sha256", "")) == 64,
                         f"{found.info.get('sha256', '?')[:12]}...")
    return result


def _live_tables(ctx: RunContext) -> dict[str, postgres.TableFacts]:
    """Live's row counts, as the app logs in: after a DB password rotation that is the other
    login role (``neon.role``'s own password is then retired and refused)."""
    n = ctx.params.neon
    app = app_credential(ctx)
    return postgres.read_only_table_facts(n.direct_host, n.direct_port, n.database, app.role,
                                          app.password, n.sslmode, n.sslrootcert, n.hostaddr)


def verify_newest_dump(ctx: RunContext) -> StepResult:
    """Read-only: the newest dump's age, SHA-256 and a whole restore into a scratch
    PostgreSQL on this machine, its row counts beside live's. A checksum that does not match
    stops here, red, naming the dump (nothing of it is restored)."""
    backup = ctx.params.neon.backup
    with timed(StepResult("pg_dump restore drill", f"{backup.bucket}/{backup.prefix}",
                          dry_run=ctx.dry_run)) as result:
        found = dumps(ctx)
        if not result.check("a dump exists", bool(found),
                            f"{len(found)} under {backup.prefix}" if found else
                            f"none under {backup.prefix}: is the backup service running "
                            "(its logs: dump_failed)? `-p dump_now=true` takes one"):
            return result
        newest = found[-1]
        result.target = f"{ctx.params.b2.buckets[backup.bucket].name}/{newest.name}"
        age, limit = newest.age_s(), backup.max_age_min * 60
        result.check("age", age <= limit, f"{newest.name} uploaded {age_text(age)} ago "
                     f"(limit {age_text(limit)}: neon.backup.max_age_min)")
        api, bucket = redis_backup.backup_bucket(ctx, ctx.params.neon.backup.bucket)
        with tempfile.TemporaryDirectory(prefix="casera-pg-drill-") as tmp:
            local = Path(tmp) / "newest.dump"
            b2.download_file(api, bucket.bucket_id, bucket.name, newest.file_id, local)
            ok, detail = checksum_finding(sha256_file(local), newest.info.get("sha256", ""))
            if not result.check(f"sha256 of {newest.name}", ok, detail):
                result.reason = f"{newest.name}: checksum mismatch, not restored"
                return result
            try:
                with postgres.scratch_server() as scratch:
                    postgres.restore_dump(scratch, local, "drill")
                    with scratch.connect("drill") as conn:
                        restored = postgres.table_facts(conn)
                    version = scratch.version
            except ProviderError as exc:
                result.check("restored whole", False, str(exc)[:400])
                return result
        # pg_restore exiting 0 is not enough: a dump with no table restores "fine" too, and
        # holds none of the app's data (on a new environment too, whose first dump came
        # before the app's first table: `-p dump_now=true` takes a new one).
        if not result.check("restored whole", bool(restored),
                            f"{len(restored)} tables, {sum(t.rows for t in restored.values())} "
                            f"rows into a scratch {version}"):
            return result
        live = _live_tables(ctx)
        _compare_tables(result, restored, live)
        result.reason = (f"{newest.name} ({age_text(age)} old, {newest.size} bytes) restored "
                         "into a scratch PostgreSQL and compared with live")
        ctx.shared["dump_drill"] = {
            "name": newest.name, "age_s": round(age, 1),
            "restored": {k: v.rows for k, v in restored.items()},
            "live": {k: v.rows for k, v in live.items()}}
    return result


def _compare_tables(result: StepResult, restored: dict[str, postgres.TableFacts],
                    live: dict[str, postgres.TableFacts]) -> None:
    """Row counts side by side. Live moves on after the dump (writes, deletes, a migration),
    so a difference is information, not a failure: what the drill proves is the restore."""
    names = sorted(set(restored) | set(live))
    same = [n for n in names if n in restored and n in live
            and restored[n].rows == live[n].rows]
    for name in names[:SHOWN_TABLES]:
        then, now = restored.get(name), live.get(name)
        if then is None:
            assert now is not None
            result.note(f"table {name}", f"not in the dump; live {now.rows} rows (made "
                        "after the dump?)")
        elif now is None:
            result.note(f"table {name}", f"{then.rows} rows in the dump; NOT live (dropped "
                        "after the dump?)")
        else:
            result.note(f"table {name}", f"{then.rows} rows in the dump, {now.rows} live"
                        + ("" if then.rows == now.rows else
                           f" ({now.rows - then.rows:+d} since the dump)"))
    if len(names) > SHOWN_TABLES:
        result.note("more tables", f"{len(names) - SHOWN_TABLES} not shown")
    result.note("row counts", f"{len(same)} of {len(names)} tables match live exactly")


def verify_redis_snapshot(ctx: RunContext) -> StepResult:
    """Read-only: the Redis runbook's restore check of the newest snapshot (SHA-256, scratch
    redis-server, key count against what was recorded, Asynq integrity), plus its age
    (twice ``redis.backup.interval_min`` at most) and live's key count beside it."""
    backup = ctx.params.redis.backup
    with timed(StepResult("redis snapshot restore drill", f"{backup.bucket}/{backup.prefix}",
                          dry_run=ctx.dry_run)) as result:
        newest = redis_backup.verify_newest_into(ctx, result)
        if newest is None:
            return result
        result.target = f"{ctx.params.b2.buckets[backup.bucket].name}/{newest.name}"
        age, limit = newest.age_s(), 2 * backup.interval_min * 60
        result.check("age", age <= limit, f"{newest.name} uploaded {age_text(age)} ago "
                     f"(limit {age_text(limit)}: twice redis.backup.interval_min)")
        restored = int(ctx.shared["redis_restored"]["dbsize"])
        # DBSIZE only: a read that cannot change anything.
        with redis_client(ctx) as (client, task):
            live = redis_db.facts(client).dbsize
        result.note("key count", f"{restored} keys in the snapshot, {live} live on "
                    f"{task.node}" + ("" if live == restored else
                                      f" ({live - restored:+d} since the snapshot)"))
        ctx.shared["redis_drill"] = {"name": newest.name, "age_s": round(age, 1),
                                     "restored": restored, "live": live}
    return result


def checks_summary(result: StepResult) -> str:
    """The result's checks (not its notes: table names and counts vary), names only, the
    backup's file name as ``<backup>``: stable text for the runbook's nbval-checked cell."""
    name = result.target.split("/", 1)[-1]
    return "\n".join(f"[{c.mark()}] {c.name.replace(name, '<backup>')}"
                     for c in result.checks if c.kind == "check")
