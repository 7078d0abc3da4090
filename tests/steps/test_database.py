"""Neon steps against a private local Neon: real PostgreSQL with TLS and SCRAM behind real
PgBouncer, and the Neon API emulator, on both the Launch and the Scale plan.

That the allowlist really refuses a removed address is tested in tests/localcloud/neon; here
the steps' decisions and the API state they leave are checked.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from steps_harness import applied, local_neon, make_ctx

from casera.errors import ApprovalRefused, StepFailed
from casera.steps import database

pytestmark = pytest.mark.localcloud

NODES = ["10.77.0.11", "10.77.0.12", "10.77.0.13"]
# The host reaches the local Neon over loopback: that is the operator's address here.
OPERATOR = {"ssh.operator_cidrs": ["127.0.0.1/32"]}


@pytest.fixture(scope="module")
def cloud():
    if os.geteuid() != 0:
        pytest.skip("the local Neon runs PostgreSQL as the postgres user: needs root")
    root = Path(tempfile.mkdtemp(prefix="casera-steps-neon-", dir="/tmp"))
    try:
        with local_neon(root) as neon_env:
            yield neon_env
    finally:
        shutil.rmtree(root, ignore_errors=True)


def ctx_for(cloud, extra=None, **kw):
    return make_ctx({**cloud["overrides"], **(extra or {})}, cloud["secrets"], **kw)


def project(cloud) -> dict:
    return database.neon_client(ctx_for(cloud)).get_project("casera-local")


def set_plan(cloud, plan: str) -> None:
    from casera.localcloud import neon

    with applied(cloud["environ"]):
        neon.up(plan=plan)


def needing_approval(ctx):
    runner = ctx.params.runner.model_copy(update={"approval": "required"})
    return dataclasses.replace(ctx, params=ctx.params.model_copy(update={"runner": runner}))


# ---------------------------------------------------------------- Launch (the seed's plan)


def test_restore_window_dry_run_changes_nothing(cloud):
    assert project(cloud)["history_retention_seconds"] == 86400
    result = database.ensure_restore_window(ctx_for(cloud, dry_run=True))
    assert result.changed == 1
    assert result.diff == ["~ history_retention_seconds: 86400 (1 day) -> 604800 (7 days)"]
    assert project(cloud)["history_retention_seconds"] == 86400


def test_restore_window_raised_to_seven_days_then_left_alone(cloud):
    first = database.ensure_restore_window(ctx_for(cloud))
    assert first.changed == 1 and first.ok, first
    assert project(cloud)["history_retention_seconds"] == 7 * 86400
    second = database.ensure_restore_window(ctx_for(cloud))
    assert second.changed == 0 and second.ok, second
    assert "7 days already" in second.reason


def test_restore_window_capped_at_the_plans_maximum(cloud):
    result = database.ensure_restore_window(
        ctx_for(cloud, {"neon.history_retention_days": 30}, dry_run=True))
    assert result.changed == 0 and result.ok, result
    assert "params ask 30 days, the Launch plan allows at most 7 days" in result.reason


def test_launch_has_no_allowlist_and_says_what_protects_instead(cloud):
    result = database.ensure_ip_allowlist(ctx_for(cloud), NODES)
    assert result.changed == 0 and result.ok, result
    (check,) = result.checks
    assert "Scale-plan feature" in check.detail and "Launch" in check.detail
    for words in ("TLS", "SCRAM", "Docker secret", "-pooler"):
        assert words in check.detail
    assert project(cloud)["settings"]["allowed_ips"]["ips"] == []
    assert database.verify_ip_allowlist(ctx_for(cloud), NODES).ok
    assert database.verify_restore_window(ctx_for(cloud)).ok


def test_verify_database_through_the_pooler(cloud):
    result = database.verify_database(ctx_for(cloud))
    assert result.ok, result
    checks = {c.name: c.detail for c in result.checks}
    assert checks["server version"].startswith("PostgreSQL 15")
    assert checks["TLS to the pooler"].startswith("encrypted; certificate verified")
    assert checks["TLS behind the pooler (pg_stat_ssl)"].startswith("TLS")
    assert "SSL required" in checks["plaintext refused"] or \
        "no encryption" in checks["plaintext refused"]
    assert cloud["secrets"]["CASERA_DB_PASSWORD"] not in str(result)


def test_verify_database_reports_a_wrong_password(cloud):
    secrets = {**cloud["secrets"], "CASERA_DB_PASSWORD": "not-the-password"}
    result = database.verify_database(make_ctx(cloud["overrides"], secrets))
    assert not result.ok
    assert "authentication failed" in result.checks[0].detail
    assert "db_password" in result.checks[0].detail
    assert "not-the-password" not in str(result)


# ---------------------------------------------------------------- Scale (IP Allow)


@pytest.fixture()
def scale(cloud):
    set_plan(cloud, "scale")
    try:
        yield cloud
    finally:
        database.neon_client(ctx_for(cloud)).update_project(
            "casera-local", {"settings": {"allowed_ips": {"ips": []}}})
        set_plan(cloud, "launch")


def test_scale_allowlist_is_nodes_plus_operators(scale):
    dry = database.ensure_ip_allowlist(ctx_for(scale, OPERATOR, dry_run=True), NODES)
    assert dry.changed == 4
    assert "+ 127.0.0.1/32 (operator)" in dry.diff
    assert project(scale)["settings"]["allowed_ips"]["ips"] == []

    first = database.ensure_ip_allowlist(ctx_for(scale, OPERATOR), NODES)
    assert first.changed == 4 and first.ok, first
    assert sorted(project(scale)["settings"]["allowed_ips"]["ips"]) == sorted(
        [f"{ip}/32" for ip in NODES] + ["127.0.0.1/32"])
    # The operator's own connection still works: that is why its CIDR is on the list.
    assert database.verify_database(ctx_for(scale, OPERATOR)).ok

    second = database.ensure_ip_allowlist(ctx_for(scale, OPERATOR), NODES)
    assert second.changed == 0 and second.ok, second
    assert database.verify_ip_allowlist(ctx_for(scale, OPERATOR), NODES).ok
    assert not database.verify_ip_allowlist(ctx_for(scale, OPERATOR), NODES[:2]).ok

    replaced = [*NODES[:2], "10.77.0.14"]
    with pytest.raises(ApprovalRefused):
        database.ensure_ip_allowlist(needing_approval(ctx_for(scale, OPERATOR)), replaced)
    assert "10.77.0.13/32" in project(scale)["settings"]["allowed_ips"]["ips"]
    third = database.ensure_ip_allowlist(ctx_for(scale, OPERATOR), replaced)
    assert third.changed == 2 and third.ok, third
    assert third.diff == ["+ 10.77.0.14/32 (node)", "- 10.77.0.13/32"]


def test_scale_refuses_an_allowlist_without_nodes(scale):
    with pytest.raises(StepFailed, match="lock the app out"):
        database.ensure_ip_allowlist(ctx_for(scale, OPERATOR), [])
    dry = database.ensure_ip_allowlist(ctx_for(scale, OPERATOR, dry_run=True), [])
    assert any("follow once the servers exist" in d for d in dry.diff)


def test_scale_restore_window_goes_to_thirty_days(scale):
    result = database.ensure_restore_window(ctx_for(scale, {"neon.history_retention_days": 30}))
    assert result.changed == 1 and result.ok, result
    assert project(scale)["history_retention_seconds"] == 30 * 86400
    # Back on a 7-day params file the window is not shrunk: that would delete history.
    kept = database.ensure_restore_window(ctx_for(scale))
    assert kept.changed == 0 and "not lowered" in kept.reason
