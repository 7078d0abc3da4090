"""The database-pitr steps against a private local Neon (real PostgreSQL, PgBouncer, WAL
archive and point-in-time recovery, the Neon API emulator): bad input refused before any
change, the dry run's plan equal to the run, the restore bringing back exactly the rows up to
T, the state before kept, and a re-run changing nothing. The /readyz half of the verification
needs the load balancer: tests/e2e/test_dr.py."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from steps_harness import applied, local_neon, make_ctx

from casera.errors import ApprovalRefused, StepFailed
from casera.providers import postgres
from casera.steps import database_restore as dr
from casera.steps.database import neon_client

pytestmark = pytest.mark.localcloud


@pytest.fixture(scope="module")
def cloud():
    if os.geteuid() != 0:
        pytest.skip("the local Neon runs PostgreSQL as the postgres user: needs root")
    from casera_localcloud import neon

    root = Path(tempfile.mkdtemp(prefix="casera-steps-dr-", dir="/tmp"))
    try:
        with local_neon(root) as neon_env:
            with applied(neon_env["environ"]):
                neon.up()
            yield neon_env
    finally:
        shutil.rmtree(root, ignore_errors=True)


def ctx_for(cloud, **kw):
    return make_ctx(cloud["overrides"], cloud["secrets"], **kw)


def sql(ctx, *statements, branch="br-casera-local-main"):
    p = ctx.params.neon
    uri = neon_client(ctx).connection_uri(p.project_id, branch, p.database, p.role)
    with postgres.connect_uri(uri, p.sslmode, p.sslrootcert) as conn:
        rows = None
        for statement in statements:
            cur = conn.execute(statement)
            rows = cur.fetchall() if cur.description else None
        return rows


def branch_names(ctx):
    return sorted(b.name for b in neon_client(ctx).branches("casera-local"))


@pytest.mark.parametrize(("scenario", "restore_to", "words"), [
    ("quorum-lost", "2026-12-02T10:15:00Z", "for scenario database-pitr only"),
    ("total-loss", "2026-12-02T10:15:00Z", "for scenario database-pitr only"),
    ("database", "", "is not one of"),
    ("database-pitr", "yesterday", "not an ISO 8601 time"),
    ("database-pitr", "2026-12-02T10:15:00", "has no time zone"),
    ("database-pitr", "2999-01-01T00:00:00Z", "is in the future"),
    ("database-pitr", "", "restore_to is empty"),
])
def test_bad_input_is_refused_before_anything_is_read(cloud, scenario, restore_to, words):
    with pytest.raises(StepFailed, match=words) as raised:
        dr.check_restore_to(ctx_for(cloud), scenario, restore_to)
    assert "nothing was changed" in str(raised.value)


def test_an_empty_restore_to_is_a_dry_run_that_shows_the_window(cloud):
    ctx = ctx_for(cloud, dry_run=True)
    before = branch_names(ctx)
    results = [dr.check_restore_to(ctx, "database-pitr", ""), dr.check_restore_window(ctx, ""),
               dr.inspect_point_in_time(ctx, ""), dr.restore_in_place(ctx, ""),
               dr.verify_after_restore(ctx, "")]
    assert [r.changed for r in results] == [0] * 5
    assert "reaches back to" in results[1].checks[0].detail
    assert branch_names(ctx) == before


def test_restore_to_outside_the_window_says_how_far_back_the_plan_reaches(cloud):
    too_old = (datetime.now(UTC) - timedelta(days=9)).isoformat()
    with pytest.raises(StepFailed, match="outside Neon's restore window.*reaches back to"):
        dr.check_restore_window(ctx_for(cloud), too_old)


def test_restore_brings_back_exactly_the_rows_up_to_t_and_keeps_the_state_after(cloud):
    ctx = ctx_for(cloud)
    sql(ctx, "create table ledger (n int, at timestamptz default now())",
        "create table scratch (n int)",
        "insert into ledger (n) select generate_series(1, 5)", "insert into scratch values (1)")
    time.sleep(0.5)
    t = datetime.now(UTC).isoformat()
    time.sleep(0.5)
    sql(ctx, "insert into ledger (n) select generate_series(6, 8)", "drop table scratch")

    # The dry run plans what the run then does, and changes nothing.
    dry = ctx_for(cloud, dry_run=True)
    before = branch_names(ctx)
    planned = [dr.inspect_point_in_time(dry, t), dr.restore_in_place(dry, t)]
    assert [r.changed for r in planned] == [2, 2]
    assert branch_names(ctx) == before
    assert sql(ctx, "select count(*) from ledger") == [(8,)]

    # Behind a gate that is not approved: refused, nothing changed.
    gated = dataclasses.replace(ctx, params=ctx.params.model_copy(update={
        "runner": ctx.params.runner.model_copy(update={"approval": "required"})}))
    with pytest.raises(ApprovalRefused):
        dr.restore_in_place(gated, t)
    assert sql(ctx, "select count(*) from ledger") == [(8,)]

    assert dr.check_restore_window(ctx, t).ok
    inspected = dr.inspect_point_in_time(ctx, t)
    assert inspected.changed == 2
    notes = {c.name: c.detail for c in inspected.checks}
    assert notes["table ledger"].startswith("5 rows at restore_to, 8 now (+3)"), notes
    assert "GONE now" in notes["table scratch"], notes
    assert branch_names(ctx) == before  # the inspection branch is gone again

    restored = dr.restore_in_place(ctx, t)
    assert restored.changed == 2 and restored.ok, restored
    assert sql(ctx, "select n from ledger order by n") == [(n,) for n in range(1, 6)]
    assert sql(ctx, "select n from scratch") == [(1,)]
    kept_name = dr.preserved_name(dr.parse_restore_to(t))
    assert kept_name in branch_names(ctx)

    # The preserved branch holds the state after T (a compute added to read it).
    api = neon_client(ctx)
    kept = api.branch_by_name("casera-local", kept_name)
    answer = api.request("POST", "/projects/casera-local/endpoints",
                         json={"endpoint": {"branch_id": kept.id, "type": "read_write"}})
    api.wait_operations("casera-local", answer, "a compute for the kept branch", 120)
    assert sql(ctx, "select count(*) from ledger", branch=kept.id) == [(8,)]
    assert sql(ctx, "select to_regclass('scratch')::text", branch=kept.id) == [(None,)]

    # A re-run changes nothing and says why.
    again = [dr.inspect_point_in_time(ctx, t), dr.restore_in_place(ctx, t)]
    assert [r.changed for r in again] == [0, 0]
    assert all("already restored" in r.reason for r in again)
    assert sql(ctx, "select count(*) from ledger") == [(5,)]
