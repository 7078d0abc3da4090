"""Disaster recovery of the database: Neon's production branch back to a point in time.

The ``database-pitr`` scenario of the DR runbook (issue 12), in four steps:

1. :func:`check_restore_to` refuses, before anything is read or changed, a scenario not built
   yet, and a ``restore_to`` that is not an ISO 8601 time with a zone, or lies in the future.
2. :func:`check_restore_window` reads the project's restore window from Neon's API
   (``history_retention_seconds``) and refuses a ``restore_to`` outside it, saying how far
   back the plan reaches.
3. :func:`inspect_point_in_time` makes a branch at ``restore_to`` WITH its own compute (Neon
   gives a point-in-time branch none unless asked), compares row counts and newest rows per
   table with the live branch, and deletes it again. Nothing live changes.
4. :func:`restore_in_place` restores the production branch in place behind the gate; the
   state before is kept as branch ``pre-restore-<T>``, so the restore can be undone by
   restoring from that branch. Connection strings stay; open connections are cut.
5. :func:`verify_after_restore`: the tables seen at ``restore_to`` are back, the app's
   ``/readyz`` is green through the load balancer, and the RTO is reported.

A re-run with the same ``restore_to`` finds ``pre-restore-<T>`` and changes nothing.

Not done here: a restore to an LSN (Neon has it; the runbook takes times), restoring a branch
from another branch. Scenarios ``quorum-lost`` and ``total-loss`` are
:mod:`casera.steps.quorum_recovery`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial

from casera.context import RunContext
from casera.errors import StepFailed
from casera.plan import Plan, apply
from casera.providers import neon, postgres
from casera.result import StepResult, timed
from casera.steps.database import neon_client, plan_of
from casera.steps.load_balancer import wait_readyz_through_lb

SCENARIOS = ("database-pitr", "quorum-lost", "total-loss", "uploads")
BUILT = ("database-pitr", "quorum-lost", "total-loss", "uploads")
PRESERVE_PREFIX = "pre-restore-"
INSPECT_PREFIX = "inspect-"
# Newest rows shown per table: enough to see where the data stops, short enough to read.
SHOWN_TABLES = 20


def parse_restore_to(restore_to: str) -> datetime:
    """``restore_to`` as an aware UTC time, or StepFailed naming the parameter."""
    text = restore_to.strip()
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise StepFailed(f"parameter restore_to={restore_to!r} is not an ISO 8601 time "
                         "(e.g. 2026-12-02T10:15:00Z); nothing was changed") from exc
    if when.tzinfo is None:
        raise StepFailed(f"parameter restore_to={restore_to!r} has no time zone: say which "
                         "(e.g. 2026-12-02T10:15:00Z or +01:00); nothing was changed")
    return when.astimezone(UTC)


def stamp(when: datetime) -> str:
    """The time as Neon takes it and as branch names carry it (microseconds kept: a restore
    to T must not round into the rows written just after T)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def preserved_name(when: datetime) -> str:
    return PRESERVE_PREFIX + stamp(when)


def _dry_without_target(ctx: RunContext, result: StepResult, restore_to: str) -> bool:
    """An empty restore_to is allowed in a dry run only: it shows the window and stops."""
    if restore_to.strip():
        return False
    if not ctx.dry_run:
        raise StepFailed("parameter restore_to is empty: a restore needs the time to go back "
                         "to (ISO 8601, e.g. -p restore_to=2026-12-02T10:15:00Z); nothing "
                         "was changed")
    result.reason = "no restore_to given: nothing to plan (dry run)"
    return True


def check_restore_to(ctx: RunContext, scenario: str, restore_to: str,
                     file_name: str = "") -> StepResult:
    """Refuse, before anything is read or changed, a scenario that is unknown or not built
    yet, a ``restore_to`` that is malformed or in the future, and a ``file_name`` missing
    from scenario uploads or given to another. Marks the run's start, from which the RTO is
    counted."""
    with timed(StepResult("dr scenario", scenario, dry_run=ctx.dry_run)) as result:
        if scenario not in SCENARIOS:
            raise StepFailed(f"parameter scenario={scenario!r} is not one of "
                             f"{', '.join(SCENARIOS)}; nothing was changed")
        if scenario not in BUILT:
            raise StepFailed(f"scenario {scenario!r} is not built yet (issue 12); built: "
                             f"{', '.join(BUILT)}; nothing was changed")
        if (scenario == "uploads") != bool(file_name.strip()):
            raise StepFailed(
                "scenario uploads needs parameter file_name (the file as listed in the "
                "bucket, -p file_name=...); nothing was changed" if scenario == "uploads" else
                f"parameter file_name={file_name!r} is for scenario uploads only; leave it "
                "empty; nothing was changed")
        ctx.shared["dr_started"] = time.time()
        if scenario != "database-pitr":
            if restore_to.strip():
                raise StepFailed(f"parameter restore_to={restore_to!r} is for scenario "
                                 f"database-pitr only; scenario {scenario} restores the "
                                 "state as it is. Leave restore_to empty; nothing was changed")
            result.reason = {"quorum-lost": "two of three managers dead: fence them, force a "
                             "new cluster on the survivor, replace them",
                             "total-loss": "every server gone: new servers, a new swarm, the "
                             "secrets from the operator's store, Redis from B2",
                             "uploads": f"{file_name} deleted or overwritten by mistake: "
                             "un-hide it, or copy a previous version back",
                             }.get(scenario, "")
            return result
        if _dry_without_target(ctx, result, restore_to):
            return result
        when = parse_restore_to(restore_to)
        now = datetime.now(UTC)
        if when > now:
            raise StepFailed(f"parameter restore_to={stamp(when)} is in the future (now "
                             f"{stamp(now)}); nothing was changed")
        result.reason = (f"restore the database to {stamp(when)} "
                         f"({_ago(now - when)} ago)")
    return result


def _ago(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def check_restore_window(ctx: RunContext, restore_to: str) -> StepResult:
    """``restore_to`` inside the project's restore window, read from Neon's API now."""
    p = ctx.params.neon
    with timed(StepResult("neon restore window", p.project_id, dry_run=ctx.dry_run)) as result:
        project = neon_client(ctx).project(p.project_id)
        raw, limits = plan_of(project)
        now = datetime.now(UTC)
        window = timedelta(seconds=project.history_retention_seconds)
        earliest = now - window
        reach = (f"history_retention_seconds {project.history_retention_seconds} "
                 f"({_ago(window)}) on the {limits.title if limits else raw} plan reaches "
                 f"back to {stamp(earliest)}")
        result.note("restore window", reach)
        if _dry_without_target(ctx, result, restore_to):
            return result
        when = parse_restore_to(restore_to)
        if when < earliest:
            raise StepFailed(f"restore_to={stamp(when)} is outside Neon's restore window: "
                             f"{reach}; nothing was changed. Older states exist only in "
                             "backups of our own (issue 12: the nightly pg_dump)")
        if when > now:
            raise StepFailed(f"restore_to={stamp(when)} is in the future; nothing was changed")
        result.check("restore_to inside the window", earliest <= when <= now,
                     f"{stamp(when)} is {_ago(now - when)} back; the window reaches "
                     f"{_ago(window)}")
    return result


# ------------------------------------------------------------------ the branches


def main_branch(ctx: RunContext, api: neon.NeonClient) -> neon.NeonBranch:
    p = ctx.params.neon
    branches = api.branches(p.project_id)
    found = next((b for b in branches if b.name == p.branch or b.id == p.branch), None)
    if found is None:
        raise StepFailed(f"params neon.branch={p.branch!r}: no such branch in Neon project "
                         f"{p.project_id} (branches: {', '.join(b.name for b in branches)})")
    return found


@dataclass(frozen=True)
class Facts:
    tables: dict[str, postgres.TableFacts]


def _facts(ctx: RunContext, api: neon.NeonClient, branch_id: str) -> Facts:
    p = ctx.params.neon
    uri = api.connection_uri(p.project_id, branch_id, p.database, p.role)
    with postgres.connect_uri(uri, p.sslmode, p.sslrootcert) as conn:
        return Facts(postgres.table_facts(conn))


def _when(value: datetime | None) -> str:
    return stamp(value) if value else "-"


def _compare(result: StepResult, at: Facts, now: Facts) -> None:
    names = sorted(set(at.tables) | set(now.tables))
    for name in names[:SHOWN_TABLES]:
        then, live = at.tables.get(name), now.tables.get(name)
        if then is None:
            assert live is not None
            result.note(f"table {name}", f"not at restore_to; now {live.rows} rows "
                        "(it goes with the restore)")
        elif live is None:
            result.note(f"table {name}", f"{then.rows} rows at restore_to; GONE now "
                        "(the restore brings it back)")
        else:
            newest = (f"; newest {then.newest_column} at restore_to {_when(then.newest)}, "
                      f"now {_when(live.newest)}" if then.newest_column else "")
            result.note(f"table {name}", f"{then.rows} rows at restore_to, {live.rows} now "
                        f"({live.rows - then.rows:+d}){newest}")
    if len(names) > SHOWN_TABLES:
        result.note("more tables", f"{len(names) - SHOWN_TABLES} not shown")


def inspect_point_in_time(ctx: RunContext, restore_to: str, timeout: float = 600) -> StepResult:
    """A branch at ``restore_to`` with its own compute, compared with the live branch (row
    counts and newest rows per table), then deleted. Nothing live changes. After the restore
    (``pre-restore-<T>`` exists) there is nothing to inspect: 0 changes."""
    p = ctx.params.neon
    with timed(StepResult("inspect restore point", restore_to or "-",
                          dry_run=ctx.dry_run)) as result:
        if _dry_without_target(ctx, result, restore_to):
            return result
        when = parse_restore_to(restore_to)
        result.target = stamp(when)
        api = neon_client(ctx)
        main = main_branch(ctx, api)
        kept = api.branch_by_name(p.project_id, preserved_name(when))
        plan = Plan()
        if kept is not None:
            result.reason = (f"already restored to {stamp(when)}: branch {kept.name} holds "
                             "the state from before")
            apply(ctx, result, plan)
            return result
        name = INSPECT_PREFIX + stamp(when)
        scratch = api.branch_by_name(p.project_id, name)
        if scratch is None:
            plan.add(f"+ branch {name}: {main.name} at {stamp(when)}, with its own compute "
                     "(read only here)",
                     partial(api.create_branch_at, p.project_id, main.id, name, stamp(when),
                             timeout))
        plan.add(f"- branch {name} (after the comparison)")
        if apply(ctx, result, plan).dry_run:
            return result
        scratch = api.branch_by_name(p.project_id, name)
        if scratch is None:
            raise StepFailed(f"branch {name} was made but Neon does not list it")
        try:
            at = _facts(ctx, api, scratch.id)
            now = _facts(ctx, api, main.id)
        finally:
            api.delete_branch(p.project_id, scratch.id)
        _compare(result, at, now)
        ctx.shared["dr_inspected"] = {name: t.rows for name, t in at.tables.items()}
        result.check("branch at restore_to answered", bool(at.tables),
                     f"{len(at.tables)} table(s) at {stamp(when)}" if at.tables else
                     f"no table in schema public at {stamp(when)}: a restore would leave "
                     "an empty database")
        result.reason = f"compared {stamp(when)} with now; branch {name} deleted"
    return result


def restore_in_place(ctx: RunContext, restore_to: str, timeout: float = 900) -> StepResult:
    """The production branch restored in place to ``restore_to`` behind the gate, the
    state before kept as ``pre-restore-<T>``. Writes after ``restore_to`` are gone from the
    branch (they stay in the preserved one). Undo: restore the branch from the preserved
    branch (Neon console, or the API with ``source_branch_id`` = the preserved branch)."""
    p = ctx.params.neon
    with timed(StepResult("neon restore in place", p.branch, dry_run=ctx.dry_run)) as result:
        if _dry_without_target(ctx, result, restore_to):
            return result
        when = parse_restore_to(restore_to)
        api = neon_client(ctx)
        main = main_branch(ctx, api)
        keep = preserved_name(when)
        kept = api.branch_by_name(p.project_id, keep)
        plan = Plan(gate_title=f"Neon: restore branch {main.name} in place to {stamp(when)} "
                    "(writes after it leave the branch; the app's connections are cut)")
        if kept is not None:
            result.reason = (f"already restored to {stamp(when)}: branch {keep} (made "
                             f"{kept.created_at}) holds the state from before")
            apply(ctx, result, plan)
            ctx.shared["dr_restored"] = {"branch": keep, "already": True}
            return result
        plan.add(f"~ branch {main.name} ({main.id}): restored in place to {stamp(when)}; "
                 "same connection strings",
                 partial(api.restore_branch, p.project_id, main.id, stamp(when), keep,
                         timeout), destructive=True)
        plan.add(f"+ branch {keep}: the state before the restore, kept for undo "
                 "(no compute)")
        started = time.time()
        if apply(ctx, result, plan).dry_run:
            return result
        took = time.time() - started
        kept = api.branch_by_name(p.project_id, keep)
        result.check("state before kept", kept is not None,
                     f"branch {keep} ({kept.id})" if kept else f"no branch {keep}")
        result.note("restore took", f"{took:.1f} s (Neon's operations)")
        ctx.shared["dr_restored"] = {"branch": keep, "already": False, "took_s": took}
        result.reason = f"restored to {stamp(when)}; the state before is branch {keep}"
    return result


def verify_after_restore(ctx: RunContext, restore_to: str, timeout: float = 180) -> StepResult:
    """Read back: every table of the branch at ``restore_to`` is in the live branch again,
    with at least its rows then (the app may write as soon as it reconnects), and the api
    green through the LB. Reports the RTO, from the run's start to /readyz green."""
    p = ctx.params.neon
    with timed(StepResult("database after restore", p.branch, dry_run=ctx.dry_run)) as result:
        if _dry_without_target(ctx, result, restore_to) or ctx.dry_run:
            result.reason = result.reason or "dry run: nothing restored to verify"
            return result
        when = parse_restore_to(restore_to)
        api = neon_client(ctx)
        kept = api.branch_by_name(p.project_id, preserved_name(when))
        result.check("state before kept", kept is not None,
                     f"branch {preserved_name(when)}" if kept else
                     f"no branch {preserved_name(when)}: the restore did not happen")
        live = _facts(ctx, api, main_branch(ctx, api).id)
        seen = ctx.shared.get("dr_inspected")
        if seen is not None:
            missing = sorted(set(seen) - set(live.tables))
            short = sorted(n for n, rows in seen.items()
                           if n in live.tables and live.tables[n].rows < rows)
            result.check("tables at restore_to back", not missing and not short,
                         f"{len(seen)} table(s) with at least their rows at {stamp(when)}"
                         if not missing and not short else
                         f"missing: {', '.join(missing) or '-'}; fewer rows: "
                         f"{', '.join(short) or '-'}")
        else:
            result.note("tables", "not compared: the inspection did not run in this run "
                        "(a re-run after the restore)")
        answered = wait_readyz_through_lb(ctx, timeout, "Postgres through the pooler")
        result.check("api /readyz green", bool(answered), f"through {answered}")
        started = float(ctx.shared.get("dr_started") or time.time())
        restored = ctx.shared.get("dr_restored") or {}
        if restored.get("already"):
            result.note("RTO", "not measured: the restore was done by an earlier run")
        else:
            result.note("RTO", f"{time.time() - started:.0f} s from the start of the run to "
                        "/readyz green")
        result.reason = f"the database is at {stamp(when)} plus what the app wrote since"
    return result
