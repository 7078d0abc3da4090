"""DNS steps against the Cloudflare emulator (real HTTP, the official ``cloudflare`` SDK)."""

from __future__ import annotations

import dataclasses

import pytest
from steps_harness import free_port, make_ctx

from casera.errors import ApprovalRefused, ProviderError, StepFailed
from casera.operator_secrets import Secret
from casera.providers import cloudflare
from casera.steps import dns
from casera_localcloud.cloudflare import service

pytestmark = pytest.mark.localcloud

ZONE = "casera.test"
TOKEN = "casera-steps-token_0123456789abcdefghijklm"
# Documentation addresses: Cloudflare proxies to them (it refuses private targets).
LB_IP, NODE_IP, OLD_IP = "203.0.113.10", "203.0.113.21", "198.51.100.7"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory):
    state_dir = tmp_path_factory.mktemp("cloudflare-state")
    port = free_port()
    service.start(port, state_dir, zones=[ZONE], tokens=[TOKEN], show=False)
    yield service.endpoint(port)
    service.stop(state_dir)


def ctx_for(endpoint, extra=None, **kw):
    # proxied pinned here: params/local.yaml turns it off for its loopback load balancer.
    return make_ctx({"cloudflare.api_base": endpoint, "cloudflare.zone": ZONE,
                     "cloudflare.proxied": True, **(extra or {})},
                    {"CASERA_CLOUDFLARE_API_TOKEN": TOKEN}, **kw)


def records(endpoint, name="api.casera.test"):
    ctx = ctx_for(endpoint)
    cf = dns.cloudflare_client(ctx)
    return cloudflare.list_records(cf, cloudflare.find_zone_id(cf, ZONE) or "", name)


def needing_approval(ctx):
    runner = ctx.params.runner.model_copy(update={"approval": "required"})
    return dataclasses.replace(ctx, params=ctx.params.model_copy(update={"runner": runner}))


def test_record_name_is_fully_qualified():
    ctx = make_ctx({}, {})
    assert dns.record_name(ctx.params) == "api.casera.test"
    for record, fqdn in (("@", "casera.test"), ("api.casera.test", "api.casera.test")):
        assert dns.record_name(make_ctx({"cloudflare.record": record}, {}).params) == fqdn


def test_dry_run_changes_nothing(emulator):
    result = dns.ensure_dns_record(ctx_for(emulator, dry_run=True), LB_IP)
    assert result.changed == 1
    assert result.diff == [f"+ A api.casera.test -> {LB_IP} (proxied)"]
    assert records(emulator) == []


def test_first_run_creates_second_changes_nothing(emulator):
    first = dns.ensure_dns_record(ctx_for(emulator), LB_IP)
    assert first.changed == 1 and first.ok, first
    (record,) = records(emulator)
    assert (record.type, record.content, record.proxied) == ("A", LB_IP, True)
    second = dns.ensure_dns_record(ctx_for(emulator), LB_IP)
    assert second.changed == 0 and second.ok, second
    assert "0 changes" in second.headline()
    assert dns.verify_dns_record(ctx_for(emulator), LB_IP).ok
    assert TOKEN not in str(first) + str(second)


def test_new_target_and_proxy_setting_update_the_record(emulator):
    (before,) = records(emulator)
    dry = dns.ensure_dns_record(ctx_for(emulator, dry_run=True), NODE_IP)
    assert dry.changed == 1 and dry.diff[0].startswith("~ A api.casera.test -> " + LB_IP)
    assert records(emulator) == [before]
    moved = dns.ensure_dns_record(ctx_for(emulator), NODE_IP)
    assert moved.changed == 1 and moved.ok, moved
    unproxied = dns.ensure_dns_record(ctx_for(emulator, {"cloudflare.proxied": False}), NODE_IP)
    assert unproxied.changed == 1 and unproxied.ok, unproxied
    (after,) = records(emulator)
    assert (after.id, after.content, after.proxied) == (before.id, NODE_IP, False)
    # A red check fails the step (casera.result.timed raises, the result attached).
    with pytest.raises(StepFailed) as proxied:
        dns.verify_dns_record(ctx_for(emulator), NODE_IP)  # params say proxied
    assert not proxied.value.result.ok  # type: ignore[attr-defined]
    with pytest.raises(StepFailed) as moved_away:
        dns.verify_dns_record(ctx_for(emulator, {"cloudflare.proxied": False}), LB_IP)
    assert not moved_away.value.result.ok  # type: ignore[attr-defined]


def test_other_a_records_are_deleted_behind_the_gate(emulator):
    ctx = ctx_for(emulator)
    cf = dns.cloudflare_client(ctx)
    zone_id = cloudflare.find_zone_id(cf, ZONE) or ""
    cloudflare.create_record(cf, zone_id, "api.casera.test", "A", OLD_IP, True)
    with pytest.raises(ApprovalRefused):
        dns.ensure_dns_record(needing_approval(ctx), LB_IP)
    assert sorted(r.content for r in records(emulator)) == sorted([NODE_IP, OLD_IP])
    result = dns.ensure_dns_record(ctx, LB_IP)
    # The record that already points somewhere is reused, the other deleted.
    assert result.changed == 2 and result.ok, result
    assert [(r.content, r.proxied) for r in records(emulator)] == [(LB_IP, True)]


def test_a_cname_in_the_way_stops_the_step(emulator):
    ctx = ctx_for(emulator, {"cloudflare.record": "www"})
    cf = dns.cloudflare_client(ctx)
    zone_id = cloudflare.find_zone_id(cf, ZONE) or ""
    cloudflare.create_record(cf, zone_id, "www.casera.test", "CNAME", "casera.example", True)
    with pytest.raises(StepFailed, match="CNAME"):
        dns.ensure_dns_record(ctx, LB_IP)


def test_unknown_zone_is_named(emulator):
    with pytest.raises(StepFailed, match="absent.test"):
        dns.ensure_dns_record(ctx_for(emulator, {"cloudflare.zone": "absent.test"}), LB_IP)


def test_a_refused_private_proxied_target_says_why(emulator):
    ctx = ctx_for(emulator, {"cloudflare.record": "private"})
    with pytest.raises(StepFailed, match="needs a public target"):
        dns.ensure_dns_record(ctx, "10.77.0.11")
    assert records(emulator, "private.casera.test") == []


def test_cloudflare_errors_leave_the_provider_as_provider_errors(emulator):
    cf = dns.cloudflare_client(ctx_for(emulator))
    with pytest.raises(ProviderError) as unknown_zone:
        cloudflare.list_records(cf, "0" * 32, "api.casera.test")
    assert unknown_zone.value.system == "cloudflare"
    assert isinstance(unknown_zone.value.details, dict)
    assert unknown_zone.value.details["status"] >= 400, unknown_zone.value.details
    assert TOKEN not in str(unknown_zone.value)
    bad_token = cloudflare.client(Secret("token", "not-a-token-" + "x" * 30), emulator)
    with pytest.raises(ProviderError) as refused:
        cloudflare.find_zone_id(bad_token, ZONE)
    assert refused.value.details["status"] in (400, 401, 403), refused.value.details


def test_a_dry_run_plans_what_the_run_then_does(emulator):
    ctx = ctx_for(emulator, {"cloudflare.record": "plan"})
    cf = dns.cloudflare_client(ctx)
    zone_id = cloudflare.find_zone_id(cf, ZONE) or ""
    for ip in (OLD_IP, NODE_IP):
        cloudflare.create_record(cf, zone_id, "plan.casera.test", "A", ip, True)
    dry = dns.ensure_dns_record(ctx_for(emulator, {"cloudflare.record": "plan"},
                                        dry_run=True), LB_IP)
    run = dns.ensure_dns_record(ctx, LB_IP)
    assert (dry.diff, dry.changed) == (run.diff, run.changed) and run.changed == 2, run
    assert [r.content for r in records(emulator, "plan.casera.test")] == [LB_IP]
