"""The health runbook's steps against a private Hetzner emulator (no nodes): drift runs the
bootstrap's steps in check mode and is red, naming the fix, on a difference made by hand;
nothing it runs is journaled as a change or changes anything; one red step does not stop the
next, and the verdict fails the run naming each red step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hcloud.firewalls.domain import FirewallRule
from hetzner_project import Running, bootstrapped, emulator, make_ctx  # noqa: F401 - fixture

from casera.errors import StepFailed
from casera.result import JOURNAL_ENV, ChecksFailed, StepResult, timed
from casera.steps import firewall, health, servers
from casera.steps.redis_backup import BackupFile


def journal(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_firewall_drift_is_red_naming_the_bootstrap_and_changes_nothing(
        tmp_path: Path, emulator: Running, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    ctx = bootstrapped(tmp_path, emulator)
    path = tmp_path / "journal.jsonl"
    monkeypatch.setenv(JOURNAL_ENV, str(path))
    green = health.drift(ctx, firewall.ensure_firewall)
    assert green.ok and green.changed == 0, green
    fw = emulator.client().firewalls.get_by_name("casera-local")
    kept = [r for r in fw.rules if r.port != "2222"]
    fw.set_rules([FirewallRule(direction=r.direction, protocol=r.protocol, port=r.port,
                               source_ips=r.source_ips, description=r.description)
                  for r in kept])
    red = health.drift(ctx, firewall.ensure_firewall)
    assert not red.ok and red.changed == 0 and not ctx.dry_run
    detail = red.failed_checks[0].detail
    assert "2222" in detail and "fix: casera run bootstrap --env local" in detail, detail
    # Only health's own records in the run's journal: the step run in check mode is its
    # input, not a step of this run (its would-be changes are not this run's).
    records = journal(path)
    assert [r["step"] for r in records] == ["drift", "drift"]
    assert sum(r["changed"] for r in records) == 0 and not records[1]["ok"]
    # Check mode changed nothing: the rule is still missing.
    assert len(emulator.client().firewalls.get_by_name("casera-local").rules) == len(kept)
    # The verdict names the red step and fails the run.
    with pytest.raises(ChecksFailed) as failed:
        health.verdict(ctx)
    names = [c.name for c in failed.value.result.failed_checks]
    assert names == ["drift firewall casera-local"], names


def test_servers_powered_off_or_beyond_params_are_red(tmp_path: Path,
                                                      emulator: Running) -> None:  # noqa: F811
    ctx = bootstrapped(tmp_path, emulator)
    assert health.check(ctx, health.verify_servers).ok
    client = emulator.client()
    client.servers.get_by_name("casera-local-2").power_off().wait_until_finished()
    red = health.check(ctx, health.verify_servers)
    assert [c.name for c in red.failed_checks] == ["casera-local-2 power"], red
    assert "off" in red.failed_checks[0].detail
    # Two more servers with the environment's label, which params do not count.
    bigger = make_ctx(tmp_path, emulator, **{"hetzner.server_count": 5})
    servers.ensure_servers(bigger)
    emulator.idle()
    again = health.check(ctx, health.verify_servers)
    beyond = [c for c in again.failed_checks if c.name == "no server beyond params"]
    assert beyond and "casera-local-4, casera-local-5" in beyond[0].detail
    assert "scale-in" in beyond[0].detail


def test_one_red_step_does_not_stop_the_next_and_errors_become_red(
        tmp_path: Path, emulator: Running) -> None:  # noqa: F811
    ctx = make_ctx(tmp_path, emulator)

    def verify_red(ctx):  # noqa: ANN001, ANN202
        with timed(StepResult("thing", "x")) as result:
            result.check("measured", False, "2 of 3")
        return result

    def verify_unreadable(ctx):  # noqa: ANN001, ANN202
        raise StepFailed("the swarm did not answer in 30 s")

    def verify_green(ctx):  # noqa: ANN001, ANN202
        with timed(StepResult("other", "y")) as result:
            result.check("measured", True, "3 of 3")
        return result

    assert not health.check(ctx, verify_red).ok
    unreadable = health.check(ctx, verify_unreadable)
    assert unreadable.step == "unreadable" and not unreadable.ok
    assert "did not answer" in unreadable.failed_checks[0].detail
    assert health.check(ctx, verify_green).ok
    with pytest.raises(ChecksFailed) as failed:
        health.verdict(ctx)
    assert [c.name for c in failed.value.result.failed_checks] == [
        "thing x", "unreadable could not be read"]


def test_verdict_is_green_only_when_something_was_read(tmp_path: Path,
                                                       emulator: Running) -> None:  # noqa: F811
    ctx = make_ctx(tmp_path, emulator)
    with pytest.raises(ChecksFailed):
        health.verdict(ctx)  # no health step ran: nothing to vouch for
    assert health.check(ctx, health.verify_servers) is not None
    # No servers exist on this emulator: verify_servers is red, so is the verdict.
    with pytest.raises(ChecksFailed):
        health.verdict(ctx)


def test_backup_age_against_twice_the_interval(tmp_path: Path, emulator: Running,  # noqa: F811
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = make_ctx(tmp_path, emulator)
    interval_s = ctx.params.redis.backup.interval_min * 60
    now = 1_800_000_000.0

    def snapshots_aged(age_s: float):  # noqa: ANN202
        made = BackupFile("redis/2027-01-15T08-00-00Z.rdb", "f1", 10, int((now - age_s) * 1000),
                        {"dbsize": "3"})
        return lambda ctx: [made]  # noqa: ARG005

    from casera.steps import redis_backup
    monkeypatch.setattr(redis_backup, "snapshots", snapshots_aged(2 * interval_s - 1))
    assert health.verify_backup_age(ctx, now=now).ok
    monkeypatch.setattr(redis_backup, "snapshots", snapshots_aged(2 * interval_s + 1))
    with pytest.raises(ChecksFailed) as stale:
        health.verify_backup_age(ctx, now=now)
    assert "backup service" in stale.value.result.failed_checks[0].detail
    monkeypatch.setattr(redis_backup, "snapshots", lambda ctx: [])  # noqa: ARG005
    with pytest.raises(ChecksFailed):
        health.verify_backup_age(ctx, now=now)


def test_services_are_judged_once_a_rolling_update_in_progress_lands(
        monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [{"admin": {"update_state": "updating"}},
               {"admin": {"update_state": "completed"}}]
    monkeypatch.setattr(health, "stack_services", lambda client: answers.pop(0))
    assert health._settled_services(None) == {"admin": {"update_state": "completed"}}
    # Still updating when the wait ends: judged as it is (the check then names it red).
    monkeypatch.setattr(health, "stack_services",
                        lambda client: {"admin": {"update_state": "updating"}})
    monkeypatch.setattr(health, "SETTLE_S", 0.5)
    assert health._settled_services(None)["admin"]["update_state"] == "updating"
    # An empty stack is an answer, not something to wait for.
    monkeypatch.setattr(health, "stack_services", lambda client: {})
    monkeypatch.setattr(health, "SETTLE_S", 30)
    assert health._settled_services(None) == {}
