"""The quorum-lost scenario's verdict from facts alone (which servers answer, what their swarm
says, what Hetzner says), its refusals before any change, and the context that keeps Redis
where it runs. The real quorum loss (two nodes killed, the new cluster forced, the servers
replaced) is tests/e2e/test_dr.py's drill."""

from __future__ import annotations

from typing import Any

import pytest
from steps_harness import make_ctx

from casera.errors import StepFailed
from casera.steps import database_restore, dr, quorum_recovery

NAMES = ["n-1", "n-2", "n-3"]
DEADLINE_ERROR = "rpc error: code = DeadlineExceeded desc = context deadline exceeded"


def state(manager: bool = True, error: str = "", swarm: str = "active") -> dict[str, Any]:
    return {"state": swarm, "manager": manager, "error": error, "cluster_id": "c1"}


def entry(hostname: str, state: str = "ready", reachability: str = "reachable",
          role: str = "manager") -> dict[str, Any]:
    return {"hostname": hostname, "state": state, "reachability": reachability, "role": role}


RUNNING = {n: "running" for n in NAMES}


def test_one_manager_answering_with_the_deadline_is_a_quorum_loss() -> None:
    facts = quorum_recovery.assess(NAMES, RUNNING, {"n-1": state(error=DEADLINE_ERROR)}, None)
    assert facts.quorum_lost and facts.survivor == "n-1" and not facts.refusals
    assert facts.to_replace == ["n-2", "n-3"] and not facts.whole
    assert "does not answer over SSH" in facts.silent["n-2"]


def test_a_fenced_server_counts_as_dead_and_a_deleted_one_as_missing() -> None:
    power = {"n-1": "running", "n-2": "off"}
    facts = quorum_recovery.assess(NAMES, power, {"n-1": state(error=DEADLINE_ERROR)}, None)
    assert facts.silent == {"n-2": "off in Hetzner (fenced)"} and facts.missing == ["n-3"]
    assert facts.to_replace == ["n-2", "n-3"]


def test_the_lost_quorum_message_counts_as_the_deadline() -> None:
    error = ("rpc error: code = Unknown desc = The swarm does not have a leader. It's possible "
             "that too few managers are online.")
    facts = quorum_recovery.assess(NAMES, RUNNING, {"n-2": state(error=error)}, None)
    assert facts.quorum_lost and facts.survivor == "n-2"


def test_two_managers_answering_without_quorum_is_a_partition_and_refused() -> None:
    states = {"n-1": state(error=DEADLINE_ERROR), "n-2": state(error=DEADLINE_ERROR)}
    facts = quorum_recovery.assess(NAMES, RUNNING, states, None)
    assert len(facts.refusals) == 1 and "partition" in facts.refusals[0]
    assert "split the swarm" in facts.refusals[0]


def test_no_engine_answering_is_total_loss_and_refused() -> None:
    facts = quorum_recovery.assess(NAMES, {"n-1": "running", "n-2": "off"}, {}, None)
    assert facts.refusals and "total-loss" in facts.refusals[0]
    assert "n-2: off in Hetzner (fenced)" in facts.refusals[0]
    assert "n-3: missing" in facts.refusals[0]


def test_every_server_gone_is_what_total_loss_rebuilds() -> None:
    facts = quorum_recovery.assess(NAMES, {"n-1": "running", "n-2": "off"}, {}, None,
                                   "total-loss")
    assert facts.total and not facts.refusals and not facts.quorum_lost
    assert facts.to_replace == NAMES and facts.survivor is None


def test_a_survivor_with_the_lost_quorum_is_refused_by_total_loss() -> None:
    facts = quorum_recovery.assess(NAMES, RUNNING, {"n-1": state(error=DEADLINE_ERROR)}, None,
                                   "total-loss")
    assert not facts.total and facts.refusals and "scenario quorum-lost" in facts.refusals[0]


def test_answering_servers_that_are_no_managers_are_refused() -> None:
    facts = quorum_recovery.assess(NAMES, RUNNING, {"n-1": state(manager=False,
                                                                 swarm="inactive")}, None)
    assert facts.refusals and "not managers" in facts.refusals[0]


def test_a_whole_swarm_is_nothing_to_recover() -> None:
    states = {n: state() for n in NAMES}
    facts = quorum_recovery.assess(NAMES, RUNNING, states, [entry(n) for n in NAMES])
    assert facts.whole and not facts.quorum_lost and not facts.refusals
    assert facts.survivor == "n-1"


@pytest.mark.parametrize("entries, why", [
    ([entry("n-1"), entry("n-2"), entry("n-3", "down", "unreachable")], "a manager down"),
    ([entry("n-1"), entry("n-2"), entry("n-3"), entry("n-3", "down", "unreachable")],
     "a stale entry of a replaced server"),
    ([entry("n-1"), entry("n-2")], "a server not in the swarm"),
    ([entry("n-1"), entry("n-2"), entry("n-3", role="worker")], "a worker, not a manager"),
])
def test_a_swarm_with_quorum_but_not_whole_is_converged(entries: list[dict[str, Any]],
                                                        why: str) -> None:
    states = {n: state() for n in NAMES}
    facts = quorum_recovery.assess(NAMES, RUNNING, states, entries)
    assert not facts.whole and not facts.quorum_lost and not facts.refusals, why


def ctx_with(shared: dict[str, Any] | None = None) -> Any:
    ctx = make_ctx({}, {})
    ctx.shared.update(shared or {})
    return ctx


def test_the_recovery_context_keeps_redis_where_it_runs() -> None:
    ctx = ctx_with({"redis_placed_on": "casera-local-2"})
    moved = quorum_recovery.recovery_context(ctx)
    assert moved.params.swarm.redis_node == 2 and moved.shared is ctx.shared
    assert ctx.params.swarm.redis_node == 1  # the run's own params are not changed
    same = ctx_with({"redis_placed_on": "casera-local-1"})
    assert quorum_recovery.recovery_context(same) is same
    assert quorum_recovery.recovery_context(ctx_with()).params.swarm.redis_node == 1


def test_steps_after_the_check_need_its_verdict() -> None:
    with pytest.raises(StepFailed, match="run the quorum check first"):
        quorum_recovery.fence_dead_servers(ctx_with())


def test_a_whole_swarm_makes_every_later_step_a_zero_change_result() -> None:
    facts = quorum_recovery.assess(NAMES, RUNNING, {n: state() for n in NAMES},
                                   [entry(n) for n in NAMES])
    ctx = ctx_with({"quorum": facts})
    results = [quorum_recovery.fence_dead_servers(ctx), quorum_recovery.force_new_cluster(ctx),
               quorum_recovery.recover_redis(ctx), quorum_recovery.delete_dead_servers(ctx),
               quorum_recovery.rebuild(ctx, "quorum-lost", lambda c: pytest.fail("ran"))]
    assert [r.changed for r in results] == [0] * 5
    assert all("whole" in r.reason for r in results)


def test_another_scenarios_step_is_skipped_saying_whose_it_is() -> None:
    ctx = ctx_with()
    result = dr.only(ctx, "database-pitr", "quorum-lost", quorum_recovery.detect_quorum_loss)
    assert result.changed == 0 and result.step == "detect quorum loss"
    assert "scenario quorum-lost" in result.reason and "database-pitr" in result.reason
    skipped = quorum_recovery.rebuild(ctx, "database-pitr", lambda c: pytest.fail("ran"))
    assert skipped.changed == 0 and "quorum-lost and total-loss" in skipped.reason


def test_a_dry_run_does_not_plan_bootstrap_steps_on_servers_it_would_replace() -> None:
    facts = quorum_recovery.assess(NAMES, RUNNING, {"n-1": state(error=DEADLINE_ERROR)}, None)
    ctx = make_ctx({}, {}, dry_run=True)
    ctx.shared["quorum"] = facts
    result = quorum_recovery.rebuild(ctx, "quorum-lost", lambda c: pytest.fail("ran"))
    assert result.changed == 0 and "n-2, n-3" in result.reason and "dry run" in result.reason


def test_restore_to_given_to_quorum_lost_is_refused_before_anything_is_read() -> None:
    with pytest.raises(StepFailed, match="for scenario database-pitr only") as raised:
        database_restore.check_restore_to(ctx_with(), "quorum-lost", "2026-12-02T10:15:00Z")
    assert "nothing was changed" in str(raised.value)
    assert database_restore.check_restore_to(ctx_with(), "quorum-lost", "").changed == 0
