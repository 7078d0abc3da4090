"""The scale preflight's rules, on node lists shaped as the provider reads them (the real
swarm's refusals are tests/e2e/test_scale.py)."""

from __future__ import annotations

from typing import Any

import pytest

from casera.errors import StepFailed
from casera.steps import scale


def node(name: str, role: str = "manager", state: str = "ready", availability: str = "active",
         reachability: str | None = "reachable", leader: bool = False) -> dict[str, Any]:
    return {"hostname": name, "role": role, "state": state, "availability": availability,
            "reachability": reachability if role == "manager" else None, "leader": leader}


THREE = [node("n-1", leader=True), node("n-2"), node("n-3")]
FIVE = THREE + [node("n-4"), node("n-5")]


def test_quorum_of_a_healthy_three() -> None:
    q = scale.quorum(THREE)
    assert q.healthy and q.managers == 3 and q.tolerates == 1
    assert scale.quorum(FIVE).tolerates == 2


@pytest.mark.parametrize("nodes, why", [
    ([node("n-1", leader=True), node("n-2", reachability="unreachable"), node("n-3")],
     "a manager unreachable"),
    ([node("n-1"), node("n-2"), node("n-3")], "no leader"),
    ([], "no manager"),
])
def test_quorum_not_healthy(nodes: list[dict[str, Any]], why: str) -> None:
    assert not scale.quorum(nodes).healthy, why


def test_not_ready_names_the_node_and_what_it_is() -> None:
    nodes = THREE + [node("n-4", state="down"), node("n-5", availability="drain")]
    assert scale.not_ready(nodes) == ["n-4 (down, active)", "n-5 (ready, drain)"]


# --- scale-out preflight: a node down inside the target (a killed node, then a re-run) ------

TARGET = ["n-1", "n-2", "n-3", "n-4", "n-5"]


def checks(health: scale.ScaleOutHealth) -> dict[str, tuple[bool, str]]:
    return {name: (ok, detail) for name, ok, detail in health.checks}


def test_all_healthy_is_unchanged() -> None:
    health = scale.scale_out_health(FIVE, TARGET)
    assert health.ok and health.reset == []
    assert checks(health) == {
        "quorum healthy": (True, scale.quorum(FIVE).text()),
        "nodes ready and active": (True, "all 5")}


def test_a_down_node_inside_the_target_is_accepted_and_named_for_a_reset() -> None:
    # What `casera local kill-node n-5` leaves after a completed 3 -> 5: Swarm says down and
    # Raft unreachable; 4 of 5 managers and a leader remain.
    nodes = FIVE[:4] + [node("n-5", state="down", reachability="unreachable")]
    health = scale.scale_out_health(nodes, TARGET)
    assert health.ok and health.reset == ["n-5"]
    quorum_ok, quorum_detail = checks(health)["quorum healthy"]
    assert quorum_ok and "4/5 managers reachable" in quorum_detail
    assert "majority" in quorum_detail and "n-5" in quorum_detail
    nodes_ok, detail = checks(health)["nodes ready and active"]
    assert nodes_ok and "4 of 5 ready" in detail and "n-5 down" in detail
    assert "resets it" in detail and "hard-resets" in detail


def test_a_down_node_inside_a_growing_target_is_accepted() -> None:
    # 3 -> 5 with n-2 dead: the SSH step resets it before the new managers join.
    nodes = [THREE[0], node("n-2", state="down", reachability="unreachable"), THREE[2]]
    health = scale.scale_out_health(nodes, TARGET)
    assert health.ok and health.reset == ["n-2"]


def test_a_down_node_outside_the_target_is_refused() -> None:
    nodes = FIVE + [node("n-6", role="worker", state="down")]
    health = scale.scale_out_health(nodes, TARGET)
    assert not health.ok and health.reset == []
    ok, detail = checks(health)["nodes ready and active"]
    assert not ok and "n-6 (down, active)" in detail and "scale-in" in detail
    assert checks(health)["quorum healthy"][0]  # the managers themselves are all fine


def test_a_down_manager_outside_the_target_fails_both_checks() -> None:
    nodes = FIVE[:4] + [node("n-5", state="down", reachability="unreachable")]
    health = scale.scale_out_health(nodes, TARGET[:3])
    assert not health.ok and health.reset == []
    ok, detail = checks(health)["quorum healthy"]
    assert not ok and "n-5 unreachable but not a down node inside the target" in detail
    assert not checks(health)["nodes ready and active"][0]


def test_majority_lost_is_refused_even_inside_the_target() -> None:
    nodes = FIVE[:2] + [node(n, state="down", reachability="unreachable")
                        for n in ("n-3", "n-4", "n-5")]
    health = scale.scale_out_health(nodes, TARGET)
    assert not health.ok and health.reset == []
    ok, detail = checks(health)["quorum healthy"]
    assert not ok and "2/5 managers reachable" in detail and "no majority" in detail
    ok, detail = checks(health)["nodes ready and active"]
    assert not ok and "quorum check above is red" in detail


def test_no_leader_is_refused_even_with_a_majority() -> None:
    nodes = [node(n) for n in TARGET[:4]] + [node("n-5", state="down",
                                                  reachability="unreachable")]
    health = scale.scale_out_health(nodes, TARGET)
    assert not health.ok and "no majority reachable with a leader" in checks(
        health)["quorum healthy"][1]


def test_a_stale_down_entry_beside_a_ready_one_is_not_taken_for_a_dead_node() -> None:
    nodes = FIVE + [node("n-5", state="down", reachability="unreachable")]
    health = scale.scale_out_health(nodes, TARGET)
    assert not health.ok and health.reset == []


@pytest.mark.parametrize("availability", ["drain", "pause"])
def test_a_drained_or_paused_down_node_is_refused_inside_the_target(availability: str) -> None:
    # An operator's choice: a reset would not undo it, and the verify step would stay red.
    nodes = FIVE[:4] + [node("n-5", state="down", availability=availability,
                             reachability="unreachable")]
    health = scale.scale_out_health(nodes, TARGET)
    assert not health.ok and health.reset == []


def test_a_ready_but_unreachable_manager_is_refused() -> None:
    # Not dead (Swarm still says ready): the SSH step would not reset it, nothing fixes it.
    nodes = FIVE[:4] + [node("n-5", reachability="unreachable")]
    health = scale.scale_out_health(nodes, TARGET)
    assert not health.ok and not checks(health)["quorum healthy"][0]


@pytest.mark.parametrize("managers, nodes, target, worker, ok", [
    (3, 3, 5, False, True),
    (3, 3, 7, False, True),
    (3, 3, 3, False, True),      # nothing to add: a no-op, not a refusal
    (3, 3, 4, False, False),     # even managers
    (3, 3, 6, False, False),
    (3, 3, 9, False, False),     # above 7 managers
    (3, 3, 4, True, True),       # one extra worker, asked for
    (3, 3, 5, True, False),      # the worker flag adds exactly one
    (3, 3, 2, False, False),     # below: that is a scale-in
    (3, 4, 6, False, True),      # 3 managers + 1 worker: +2 managers = 5
    (3, 4, 4, True, True),       # the extra worker is there: a re-run adds nothing
    (3, 4, 5, True, False),      # a second worker is not what the flag is for
    (4, 4, 5, True, False),      # even managers already: add a manager instead
    (3, 3, 3, True, False),      # the flag, but no worker there and nothing added
])
def test_scale_out_target(managers: int, nodes: int, target: int, worker: bool,
                          ok: bool) -> None:
    refusals = scale.scale_out_refusals(managers, nodes, target, worker)
    assert (not refusals) is ok, refusals


def test_an_even_target_says_why_and_what_to_do() -> None:
    (refusal,) = scale.scale_out_refusals(3, 3, 4, False)
    assert "even" in refusal and "tolerate 1" in refusal and "extra_worker" in refusal


def test_scale_in_to_two_is_refused() -> None:
    refusals = scale.scale_in_refusals(THREE, ["n-3"], {})
    assert refusals and "leaves 2 manager(s)" in refusals[0]


def test_scale_in_to_an_even_count_is_refused() -> None:
    refusals = scale.scale_in_refusals(FIVE, ["n-5"], {})
    assert refusals and "even" in refusals[0]


def test_five_to_three_is_allowed() -> None:
    assert scale.scale_in_refusals(FIVE, ["n-4", "n-5"], {"n-1": {"redis"}}) == []


def test_a_node_carrying_redis_or_dozzle_is_refused() -> None:
    refusals = scale.scale_in_refusals(FIVE, ["n-1", "n-5"], {"n-1": {"redis"},
                                                              "n-5": {"dozzle"}})
    assert any("n-1 carries redis" in r and "redis-failover" in r for r in refusals)
    assert any("n-5 carries dozzle" in r for r in refusals)


# --- scale-in quorum: a dead node among the leaving ones is the force-remove path ----------

DEAD_5 = THREE + [node("n-4"), node("n-5", state="down", reachability="unreachable")]


def test_a_healthy_quorum_is_clear_for_a_scale_in() -> None:
    assert scale.scale_in_quorum(FIVE, ["n-4", "n-5"]) == (True, scale.quorum(FIVE).text())


def test_a_dead_manager_among_the_leaving_nodes_is_force_removed() -> None:
    ok, detail = scale.scale_in_quorum(DEAD_5, ["n-4", "n-5"])
    assert ok and "n-5 unreachable and among the nodes to remove" in detail, detail
    assert "node rm --force" in detail and "4 of 5" in detail, detail


def test_a_dead_manager_that_stays_is_refused_naming_it() -> None:
    ok, detail = scale.scale_in_quorum(DEAD_5, ["n-4"])
    assert not ok and "n-5 unreachable and not among the nodes to remove" in detail, detail


def test_a_scale_in_without_a_majority_is_refused() -> None:
    lost = [node("n-1", leader=True), node("n-2"), node("n-3", reachability="unreachable"),
            node("n-4", reachability="unreachable"), node("n-5", reachability="unreachable")]
    ok, detail = scale.scale_in_quorum(lost, ["n-4", "n-5"])
    assert not ok and "no majority" in detail and "restore 3 of 5" in detail, detail


def test_an_unknown_node_is_named() -> None:
    refusals = scale.scale_in_refusals(FIVE, ["n-9", "n-5"], {})
    assert any("n-9 is not a node" in r for r in refusals)


# --- scale-out / scale-in helpers (no cloud: pure, or refused before any remote call) --------

def local_ctx() -> Any:
    from casera.context import RunContext
    from casera.operator_secrets import SecretStore
    from casera.params import load_params

    return RunContext(env="local", params=load_params("local"), secrets=SecretStore("local"),
                      interactive=False, run_id="unit", operator="unit")


def test_with_count_changes_only_the_server_count_and_shares_the_run() -> None:
    ctx = local_ctx()
    five = scale.with_count(ctx, 5)
    assert five.params.server_names()[-1] == f"{ctx.params.hetzner.name_prefix}-5"
    assert len(ctx.params.server_names()) == ctx.params.hetzner.server_count  # unchanged
    assert five.shared is ctx.shared and five.planned is ctx.planned
    assert five.params.firewall == ctx.params.firewall


@pytest.mark.parametrize("target, extra, names", [
    ("5", False, "parameter target"), (-1, False, "parameter target"),
    (True, False, "parameter target"), (5, "yes", "parameter extra_worker"),
])
def test_bad_scale_out_parameters_stop_before_any_remote_call(target: Any, extra: Any,
                                                              names: str) -> None:
    # Checked before the server list is read from Hetzner: nothing remote is asked.
    with pytest.raises(StepFailed) as caught:
        scale.scale_out_context(local_ctx(), target, extra)
    assert names in str(caught.value)


@pytest.mark.parametrize("value, want", [
    ("a-5, a-4", ["a-5", "a-4"]), (["a-5"], ["a-5"]), ("", []), ([], [])])
def test_nodes_parameter_accepts_a_list_or_commas(value: Any, want: list[str]) -> None:
    assert scale.nodes_param(value) == want


@pytest.mark.parametrize("bad", [5, [1, 2], {"a": 1}])
def test_nodes_parameter_refuses_anything_else_naming_it(bad: Any) -> None:
    with pytest.raises(StepFailed, match="parameter nodes"):
        scale.nodes_param(bad)


@pytest.mark.parametrize("bad", ["2", -1, 1.5, False])
def test_count_parameter_refuses_non_counts_naming_it(bad: Any) -> None:
    with pytest.raises(StepFailed, match="parameter count"):
        scale.count_param(bad)


def test_idle_nodes_are_those_without_api_or_worker_planned_ones_included() -> None:
    spread = {"n-1": {"redis": 1, "api": 1}, "n-2": {"worker": 2}, "n-3": {"admin": 1},
              "n-4": {}}
    assert scale.idle_nodes(spread, ["n-1", "n-2", "n-3", "n-4", "n-5"]) == ["n-3", "n-4", "n-5"]


def test_only_the_highest_numbered_servers_may_leave() -> None:
    ctx = local_ctx()
    names = scale.with_count(ctx, 5).params.server_names()
    tail = scale.Removal(names[3:], [], names)
    assert scale.tail_refusals(ctx, tail) == []
    assert tail.remaining == names[:3]
    gap = scale.Removal([names[1], names[4]], [], names)
    [why] = scale.tail_refusals(ctx, gap)
    assert names[3] in why and "gap" in why


def test_api_replicas_follow_the_nodes_in_host_mode_within_the_seed_range() -> None:
    p = local_ctx().params
    assert p.swarm.publish_mode == "host"  # the local cloud: one api task per node answers
    assert scale.api_replicas_for(p, 5) == 5
    assert scale.api_replicas_for(p, 3) == p.services.api.replicas == 3
    assert scale.api_replicas_for(p, 9) == 6  # capped at the seed's maximum
    assert scale.api_replicas_for(p, 5, 4) == 4
    ingress = p.model_copy(update={"swarm": p.swarm.model_copy(
        update={"publish_mode": "ingress"})})
    assert scale.api_replicas_for(ingress, 5) == 3  # the routing mesh: every node answers
    for bad in (2, 7, "5", True):
        with pytest.raises(StepFailed, match="parameter api_replicas"):
            scale.api_replicas_for(p, 5, bad)
    assert scale.with_count(local_ctx(), 5).params.services.api.replicas == 5


# --- extra_worker: one node that joins as a worker -----------------------------------------

def test_extra_worker_names_the_highest_numbered_server_of_the_target() -> None:
    ctx = local_ctx()
    prefix = ctx.params.hetzner.name_prefix
    assert scale.workers_for(ctx, 4, True) == [f"{prefix}-4"]
    assert scale.workers_for(ctx, 5, False) == []
    four = scale.with_count(ctx, 4, 0, scale.workers_for(ctx, 4, True))
    assert four.params.manager_names() == [f"{prefix}-{i}" for i in (1, 2, 3)]
    assert four.params.swarm.workers == [f"{prefix}-4"] and ctx.params.swarm.workers == []
    # A later plain scale-out keeps the worker params name, and adds managers.
    kept = scale.with_count(ctx, 4, 0, [f"{prefix}-4"])
    assert scale.workers_for(kept, 6, False) == [f"{prefix}-4"]


def test_role_refusals_name_a_worker_params_do_not_know_and_how_to_fix_it() -> None:
    live = THREE + [node("n-4", role="worker")]
    assert scale.role_refusals(live, ["n-4"]) == []
    (stray,) = scale.role_refusals(live, [])
    assert "n-4 is a worker" in stray and "swarm.workers: [n-4]" in stray, stray
    (manager,) = scale.role_refusals(FIVE, ["n-5"])
    assert "n-5 is a manager" in manager and "docker node demote" in manager, manager


def test_the_extra_worker_is_left_out_of_the_scale_in_quorum_count() -> None:
    live = THREE + [node("n-4", role="worker")]
    assert scale.scale_in_refusals(live, ["n-4"], {}) == []  # still 3 managers
    assert scale.quorum(live).managers == 3


@pytest.mark.parametrize("count, workers, why", [
    (4, ["casera-local-4", "casera-local-3"], "at most one server"),
    (4, ["casera-local-9"], "at most one server"),
    (4, ["casera-local-1"], "the first server starts the swarm"),
    (5, ["casera-local-5"], "keep the manager count odd"),
])
def test_params_refuse_workers_that_break_the_odd_managers(count: int, workers: list[str],
                                                           why: str) -> None:
    from pydantic import ValidationError

    from casera.params import Params

    data = local_ctx().params.model_dump()
    data["hetzner"]["server_count"], data["swarm"]["workers"] = count, workers
    with pytest.raises(ValidationError, match="swarm.workers") as caught:
        Params.model_validate(data)
    assert why in str(caught.value)
    data["hetzner"]["server_count"], data["swarm"]["workers"] = 4, ["casera-local-4"]
    assert Params.model_validate(data).manager_names() == [
        "casera-local-1", "casera-local-2", "casera-local-3"]
