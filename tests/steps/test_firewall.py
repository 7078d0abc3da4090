"""The firewall step against the Hetzner emulator: the first pass (no servers) makes the rules
that need no node address, the second adds the cluster rules with ESP; a dry run plans against
what the earlier steps of the same dry run planned; a rule removed from params is a
destructive change that needs approval."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hetzner_project import Running, emulator, make_ctx  # noqa: F401 - the fixture

from casera.errors import ApprovalRefused
from casera.steps import firewall, servers, ssh_key


def test_first_pass_then_cluster_rules_then_nothing(tmp_path: Path,
                                                    emulator: Running) -> None:  # noqa: F811
    ctx = make_ctx(tmp_path, emulator)
    fw = firewall.ensure_firewall(ctx)
    # The firewall itself + ssh, http from the load balancer; the cluster rules wait for
    # servers, and 443 is not open on the nodes at all (TLS ends at the LB).
    assert fw.changed == 3 and fw.ok, fw.diff
    assert not any("esp" in line for line in fw.diff if line.startswith("+ in"))
    assert fw.diff[1] == "+ applied to label cluster=casera-local"
    ssh_key.ensure_ssh_key(ctx)
    servers.ensure_servers(ctx)
    emulator.idle()
    again = firewall.ensure_firewall(ctx)
    assert again.changed == 5 and again.ok, again.diff
    assert any(line.startswith("+ in esp from") for line in again.diff)
    assert [c.name for c in again.checks] == ["rules match params", "ESP between nodes allowed"]
    third = firewall.ensure_firewall(ctx)
    assert third.changed == 0 and third.reason == "rules and label selector as params say"
    fw_api = emulator.client().firewalls.get_by_name("casera-local")
    assert {r.protocol for r in fw_api.rules} == {"tcp", "udp", "esp"}
    assert fw_api.applied_to[0].label_selector.selector == "cluster=casera-local"


def test_dry_run_plans_the_second_pass_with_placeholders(tmp_path: Path,
                                                         emulator: Running) -> None:  # noqa: F811
    ctx = make_ctx(tmp_path, emulator, dry_run=True)
    first = firewall.ensure_firewall(ctx)
    planned_servers = servers.ensure_servers(ctx)
    second = firewall.ensure_firewall(ctx)
    assert (first.changed, planned_servers.changed, second.changed) == (3, 3, 5)
    assert "<casera-local-1: known after apply>" in " ".join(second.diff)
    client = emulator.client()
    assert client.firewalls.get_all() == [] and client.servers.get_all() == []
    # The run then does what the dry run said, step by step.
    run = make_ctx(tmp_path, emulator)
    ssh_key.ensure_ssh_key(run)
    assert [firewall.ensure_firewall(run).changed, servers.ensure_servers(run).changed] == [3, 3]
    emulator.idle()
    assert firewall.ensure_firewall(run).changed == 5


def test_a_rule_removed_from_params_needs_approval(tmp_path: Path,
                                                   emulator: Running) -> None:  # noqa: F811
    # local.yaml approves automatically; production's "required" is what is tested here.
    ctx = make_ctx(tmp_path, emulator, **{"runner.approval": "required"})
    firewall.ensure_firewall(ctx)
    rules = [r for r in ctx.params.firewall.rules if r.port != "80"]
    assert len(rules) == len(ctx.params.firewall.rules) - 1
    fewer = replace(ctx, params=ctx.params.model_copy(update={
        "firewall": ctx.params.firewall.model_copy(update={"rules": rules})}))
    with pytest.raises(ApprovalRefused):
        firewall.ensure_firewall(fewer)
    before = emulator.client().firewalls.get_by_name("casera-local")
    assert any(r.port == "80" for r in before.rules)  # refused: nothing changed
    done = firewall.ensure_firewall(replace(fewer, approve=True))
    assert done.changed == 1 and done.diff[0].startswith("- in tcp 80") and done.ok
    after = emulator.client().firewalls.get_by_name("casera-local")
    assert not any(r.port == "80" for r in after.rules)
