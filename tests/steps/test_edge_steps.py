"""The edge steps against private emulators (Hetzner with the fake node backend, Cloudflare):
the origin certificate made through Cloudflare's Origin CA, kept in the operator's store and
uploaded; the HTTPS service on the LB; zone settings; Cloudflare's ranges refreshed into the
firewall with a diff behind the gate; rotation; nothing of the private key in any result."""

from __future__ import annotations

import dataclasses
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from hetzner_project import Running, emulator, make_ctx  # noqa: F401 - the fixture
from steps_harness import free_port

from casera.errors import ApprovalRefused, StepFailed
from casera.operator_secrets import Secret, SecretStore
from casera.origin_tls import key_store, store_dir
from casera.result import StepResult
from casera.runner.scrub import LiveSecrets, find_leaks
from casera.steps import edge, firewall, load_balancer
from casera_localcloud.cloudflare import service
from casera_localcloud.cloudflare.edge import CA_CERT

ZONE = "casera.test"
TOKEN = "casera-edge-steps_0123456789abcdefghijklm"


@pytest.fixture
def cf_emulator(tmp_path: Path):
    state_dir = tmp_path / "cloudflare"
    port = free_port()
    service.start(port, state_dir, zones=[ZONE], tokens=[TOKEN], show=False)
    yield service.endpoint(port), state_dir, port
    service.stop(state_dir)


def ctx_for(tmp_path: Path, hz: Running, cf: tuple, **overrides: object):
    endpoint, state_dir, _ = cf
    ctx = make_ctx(tmp_path, hz, **{"cloudflare.api_base": endpoint,
                                    "edge.origin_ca_root_file": str(state_dir / CA_CERT),
                                    **overrides})
    secrets = SecretStore("local", environ={"CASERA_HCLOUD_TOKEN": hz_token(),
                                            "CASERA_CLOUDFLARE_API_TOKEN": TOKEN},
                          file=tmp_path / "none.env")
    return dataclasses.replace(ctx, secrets=secrets)


def hz_token() -> str:
    sys.path.insert(0, str(Path(__file__).parents[1] / "localcloud" / "hetzner"))
    from hetzner_harness import TOKEN as HZ

    return HZ


def all_text(*results) -> str:
    return "\n".join(str(r) + "\n".join(r.diff) + r.reason for r in results)


def test_origin_certificate_dry_run_run_rerun_and_the_key_stays_secret(
        tmp_path: Path, emulator: Running, cf_emulator: tuple) -> None:  # noqa: F811
    dry = edge.ensure_origin_certificate(ctx_for(tmp_path, emulator, cf_emulator,
                                                 dry_run=True))
    assert dry.changed == 2 and dry.ok, dry.diff
    assert emulator.client().certificates.get_all() == []
    assert not store_dir("local").exists()
    ctx = ctx_for(tmp_path, emulator, cf_emulator)
    made = edge.ensure_origin_certificate(ctx)
    assert made.changed == 2 and made.ok, str(made)
    assert [c.name for c in made.checks if c.kind == "check"] == [
        "uploaded to Hetzner", "covers api.casera.test", "signed by the trusted origin CA",
        "expires in more than 30 days"]
    crt, key = key_store("local").files("casera-local-origin-g1")
    assert key.stat().st_mode & 0o777 == 0o600 and store_dir("local").stat().st_mode & 0o077 == 0
    again = edge.ensure_origin_certificate(ctx)
    assert again.changed == 0 and again.ok and again.reason.startswith("stored and uploaded")
    # The key never shows: not in results, and the runner's scrub knows it.
    secrets = LiveSecrets("local")()
    key_text = key.read_text().strip()
    assert key_text in secrets
    assert not find_leaks(all_text(dry, made, again), secrets)
    assert find_leaks(f"oops {key_text.splitlines()[1]}", secrets)  # the scan would catch it


def test_operator_source_uploads_the_operators_pair_and_never_shows_the_key(
        tmp_path: Path, emulator: Running, cf_emulator: tuple) -> None:  # noqa: F811
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from tls_fixtures import TestCA

    ca = TestCA("operator's CA")
    (tmp_path / "operator-ca.pem").write_text(ca.pem)
    issued = ca.issue("api.casera.test")
    ctx = ctx_for(tmp_path, emulator, cf_emulator, **{
        "edge.certificate_source": "operator",
        "edge.origin_ca_root_file": str(tmp_path / "operator-ca.pem")})
    key_store("local").put("casera-local-origin-g1", issued.certificate,
                           Secret("planted", issued.key))
    done = edge.ensure_origin_certificate(ctx)
    assert done.changed == 1 and done.ok, str(done)
    assert [c.name for c in emulator.client().certificates.get_all()] == [
        "casera-local-origin-g1"]
    planted = issued.key.splitlines()[1]
    assert planted not in all_text(done) and planted in LiveSecrets("local")()


def test_operator_source_without_files_stops_with_the_paths(
        tmp_path: Path, emulator: Running, cf_emulator: tuple) -> None:  # noqa: F811
    ctx = ctx_for(tmp_path, emulator, cf_emulator, **{"edge.certificate_source": "operator"})
    with pytest.raises(StepFailed, match="casera-local-origin-g1.crt"):
        edge.ensure_origin_certificate(ctx)
    assert emulator.client().certificates.get_all() == []


def test_https_service_rotation_and_retirement(
        tmp_path: Path, emulator: Running, cf_emulator: tuple) -> None:  # noqa: F811
    ctx = ctx_for(tmp_path, emulator, cf_emulator)
    edge.ensure_origin_certificate(ctx)
    hz = emulator.client()
    services, pending = load_balancer.desired_services(ctx, edge.hetzner.for_env(
        ctx.params, ctx.secrets))
    assert pending is None and [(s.protocol, s.listen_port, s.redirect_http) for s in services] \
        == [("https", 443, True)]
    assert (services[0].health_path, services[0].health_interval, services[0].health_timeout,
            services[0].health_retries) == ("/readyz", 3, 2, 1)  # params/local.yaml
    created = edge.hetzner.for_env(ctx.params, ctx.secrets).load_balancers.create_or_get(
        "casera-local", "lb11", "fsn1", services, ctx.params.cluster_label, {})
    assert created[0].services[0].certificate_ids == (hz.certificates.get_all()[0].id,)
    # Rotation: generation 2 is made and uploaded; the LB step would switch; then g1 goes.
    rotated = ctx_for(tmp_path, emulator, cf_emulator, **{"edge.certificate_generation": 2})
    assert edge.ensure_origin_certificate(rotated).changed == 2
    lbs = edge.hetzner.for_env(ctx.params, ctx.secrets).load_balancers
    lb = lbs.get("casera-local")
    new_services, _ = load_balancer.desired_services(rotated, edge.hetzner.for_env(
        ctx.params, ctx.secrets))
    waiting = edge.retire_old_certificates(rotated)  # g1 still used: left alone
    assert waiting.changed == 0 and any("still used" in line for line in waiting.diff)
    lbs.update_service(lb, new_services[0])
    emulator.idle()
    strict = dataclasses.replace(rotated, params=rotated.params.model_copy(update={
        "runner": rotated.params.runner.model_copy(update={"approval": "required"})}))
    with pytest.raises(ApprovalRefused):
        edge.retire_old_certificates(strict)
    done = edge.retire_old_certificates(dataclasses.replace(strict, approve=True))
    assert done.changed == 1 and done.diff[0].startswith("- Hetzner certificate "
                                                         "casera-local-origin-g1")
    assert [c.name for c in hz.certificates.get_all()] == ["casera-local-origin-g2"]


def test_zone_settings_strict_https_tls_and_hsts_only_when_opted_in(
        tmp_path: Path, emulator: Running, cf_emulator: tuple) -> None:  # noqa: F811
    ctx = ctx_for(tmp_path, emulator, cf_emulator)
    dry = edge.ensure_zone_settings(dataclasses.replace(ctx, dry_run=True))
    assert dry.changed == 3 and "~ ssl: flexible => strict" in dry.diff
    done = edge.ensure_zone_settings(ctx)
    assert done.changed == 3 and done.ok, str(done)
    assert any(c.name == "HSTS" and c.detail.startswith("off") for c in done.checks)
    assert edge.ensure_zone_settings(ctx).changed == 0
    hsts = ctx_for(tmp_path, emulator, cf_emulator, **{"edge.hsts.enabled": True,
                                                       "edge.hsts.max_age_s": 86400})
    on = edge.ensure_zone_settings(hsts)
    assert on.changed == 1 and on.diff == ["~ security_header: HSTS off => HSTS max-age 86400"]
    assert edge.ensure_zone_settings(hsts).changed == 0


def test_expiry_turns_red_within_30_days() -> None:
    not_after = datetime(2027, 1, 31, 12, tzinfo=UTC)
    for days_before, ok in ((30.01, True), (30.0, False), (29, False), (1, False),
                            (365, True)):
        result = StepResult("certificate expiry", "x")
        assert edge.expiry_check(result, not_after, 30,
                                 now=not_after - timedelta(days=days_before)) is ok
        assert result.checks[0].ok is ok, days_before


def test_cloudflare_ranges_are_read_every_run_and_a_change_waits_at_the_gate(
        tmp_path: Path, emulator: Running, cf_emulator: tuple) -> None:  # noqa: F811
    ctx = ctx_for(tmp_path, emulator, cf_emulator)
    rules = [r.model_copy(update={"source": "cloudflare"}) if r.port == "80" else r
             for r in ctx.params.firewall.rules]
    ctx = dataclasses.replace(ctx, params=ctx.params.model_copy(update={
        "firewall": ctx.params.firewall.model_copy(update={"rules": rules}),
        "runner": ctx.params.runner.model_copy(update={"approval": "required"})}))
    first = firewall.ensure_firewall(ctx)
    assert first.ok and any("173.245.48.0/20" in line for line in first.diff), first.diff
    assert firewall.ensure_firewall(ctx).changed == 0
    _, _, port = cf_emulator
    answer = requests.put(f"http://127.0.0.1:{port}/_casera/ips", timeout=5,
                          headers={"Authorization": f"Bearer {TOKEN}"},
                          json={"ipv4_cidrs": ["173.245.48.0/20", "198.51.100.0/24"],
                                "ipv6_cidrs": []})
    assert answer.status_code == 200
    dry = firewall.ensure_firewall(dataclasses.replace(ctx, dry_run=True))
    assert dry.changed == 1 and dry.diff[0].startswith("~ in tcp 80 (")
    assert "+198.51.100.0/24" in dry.diff[0] and "-2400:cb00::/32" in dry.diff[0]
    with pytest.raises(ApprovalRefused):
        firewall.ensure_firewall(ctx)
    done = firewall.ensure_firewall(dataclasses.replace(ctx, approve=True))
    assert done.changed == 1 and done.ok
    rule = next(r for r in emulator.client().firewalls.get_by_name("casera-local").rules
                if r.port == "80")
    assert sorted(rule.source_ips) == ["173.245.48.0/20", "198.51.100.0/24"]
