"""Teardown steps: the refusals before anything is read; Hetzner (servers, LB, firewall)
against a private Hetzner emulator; B2 keys and buckets against a private B2 emulator. Each:
a dry run lists and deletes nothing, the run deletes exactly that, a re-run changes nothing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hetzner_project import Running, bootstrapped, emulator, make_ctx  # noqa: F401 - fixture
from steps_harness import make_ctx as b2_ctx
from steps_harness import private_b2

from casera import b2_keys
from casera.errors import ApprovalRefused, ProviderError, StepFailed
from casera.providers import b2, hetzner, ssh
from casera.providers.hetzner import LBService
from casera.steps import storage, teardown

pytestmark = pytest.mark.localcloud


def approved(ctx):
    return dataclasses.replace(ctx, approve=True)


def dry(ctx):
    return dataclasses.replace(ctx, dry_run=True)


# --- refusals ------------------------------------------------------------------------------

def test_confirm_must_name_the_env_for_production_and_for_deleting_data(
        tmp_path: Path, emulator: Running) -> None:  # noqa: F811
    ctx = make_ctx(tmp_path, emulator)
    assert teardown.check_teardown_allowed(ctx).ok  # local, data kept: no confirm needed
    with pytest.raises(StepFailed, match="confirm='staging' does not name this environment"):
        teardown.check_teardown_allowed(ctx, confirm="staging")
    with pytest.raises(StepFailed, match="-p confirm=local"):
        teardown.check_teardown_allowed(ctx, delete_data=True)
    assert teardown.check_teardown_allowed(ctx, confirm="local", delete_data=True).ok
    # A dry run plans without the confirmation and says what the real run will need.
    planned = teardown.check_teardown_allowed(dry(ctx), delete_data=True)
    assert "-p confirm=local" in str(planned.checks), planned
    production = dataclasses.replace(ctx, env="production")
    with pytest.raises(StepFailed, match="this is production"):
        teardown.check_teardown_allowed(production)
    assert teardown.check_teardown_allowed(production, confirm="production").ok


def test_a_lock_firewall_name_is_refused(tmp_path: Path, emulator: Running) -> None:  # noqa: F811
    ctx = make_ctx(tmp_path, emulator, **{"firewall.name": "casera-lock-local"})
    with pytest.raises(StepFailed, match="never deletes a lock"):
        teardown.remove_firewall(ctx)


# --- Hetzner -------------------------------------------------------------------------------

def test_servers_lb_and_firewall_go_and_a_re_run_changes_nothing(
        tmp_path: Path, emulator: Running) -> None:  # noqa: F811
    ctx = bootstrapped(tmp_path, emulator)
    hz = hetzner.for_env(ctx.params, ctx.secrets)
    p = ctx.params
    hz.load_balancers.create_or_get(p.load_balancer.name, p.load_balancer.type,
                                    p.hetzner.location, [LBService(80, 8080, "/readyz")],
                                    p.cluster_label, dict(p.hetzner.labels))
    emulator.idle()
    known = ssh.KnownHosts.for_env("local")
    assert set(known.names()) == set(p.server_names())

    # Dry run: every server and the LB with its monthly price; nothing deleted.
    plan_lb = teardown.remove_load_balancer(dry(ctx))
    plan_servers = teardown.remove_servers(dry(ctx))
    plan_fw = teardown.remove_firewall(dry(ctx))
    assert plan_lb.changed == 1 and "a month" in plan_lb.diff[0], plan_lb.diff
    assert plan_servers.changed == len(p.server_names())
    assert all("net /" in line for line in plan_servers.diff if line.startswith("- server"))
    assert "monthly cost removed" in {c.name for c in plan_servers.checks}
    assert plan_fw.changed == 1
    assert len(hz.servers.list(p.cluster_label)) == len(p.server_names())

    # Headless without --approve where params require approval: the gate refuses before the
    # first deletion.
    gated = make_ctx(tmp_path, emulator, **{"runner.approval": "required"})
    with pytest.raises(ApprovalRefused):
        teardown.remove_load_balancer(gated)
    assert hz.load_balancers.get(p.load_balancer.name) is not None

    # Hetzner refuses to delete a firewall still applied; the step takes it off first.
    with pytest.raises(ProviderError, match="resource_in_use|still applied"):
        hz.firewalls.delete(hz.firewalls.get(p.firewall.name))

    run = approved(ctx)
    assert teardown.remove_load_balancer(run).changed == 1
    gone = teardown.remove_servers(run)
    assert gone.changed == len(p.server_names()) and gone.ok, gone
    assert teardown.remove_firewall(run).changed == 1
    assert hz.servers.list(p.cluster_label) == []
    assert hz.load_balancers.get(p.load_balancer.name) is None
    assert hz.firewalls.get(p.firewall.name) is None
    assert known.names() == {}, "the deleted servers' host keys are still pinned"

    again = [teardown.remove_load_balancer(run), teardown.remove_servers(run),
             teardown.remove_firewall(run)]
    assert [r.changed for r in again] == [0, 0, 0], [r.diff for r in again]


# --- B2 ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def b2_cloud(tmp_path_factory: pytest.TempPathFactory):
    with private_b2(tmp_path_factory) as cloud:
        yield cloud


def test_keys_go_buckets_stay_unless_delete_data(b2_cloud) -> None:
    ctx = b2_ctx({"b2.realm": b2_cloud["realm"]}, b2_cloud["environ"])
    storage.ensure_buckets(ctx)
    storage.ensure_app_keys(ctx)
    api = storage.master_api(ctx)
    uploads = b2.get_bucket(api, ctx.params.b2.buckets["uploads"].name)
    assert uploads is not None
    # Two versions and a hide marker: B2 deletes a bucket only once every version is gone.
    b2.upload_bytes(api, uploads.bucket_id, uploads.name, "a.txt", b"one")
    b2.upload_bytes(api, uploads.bucket_id, uploads.name, "a.txt", b"two")
    api.BUCKET_CLASS(api, uploads.bucket_id, name=uploads.name).hide_file("a.txt")
    assert b2.bucket_usage(api, uploads.bucket_id, uploads.name).versions == 3
    with pytest.raises(Exception, match="non-empty"):  # noqa: PT011 - b2sdk's class varies
        api.delete_bucket(api.BUCKET_CLASS(api, uploads.bucket_id, name=uploads.name))

    names = {kp.name for kp in ctx.params.b2.keys}
    planned = teardown.remove_app_keys(dry(ctx))
    assert planned.changed == len(names)
    assert {k.name for k in b2.list_keys(api)} >= names
    run = approved(ctx)
    assert teardown.remove_app_keys(run).changed == len(names)
    assert not {k.name for k in b2.list_keys(api)} & names
    assert b2_keys.key_store("local").load() == {}
    assert teardown.remove_app_keys(run).changed == 0

    kept = teardown.remove_buckets(run)
    assert kept.changed == 0 and "kept" in kept.reason
    assert any("3 version(s)" in c.detail for c in kept.checks), kept.checks
    assert b2.get_bucket(api, uploads.name) is not None

    planned = teardown.remove_buckets(dry(ctx), delete_data=True)
    assert planned.changed == len(ctx.params.b2.buckets)
    assert b2.get_bucket(api, uploads.name) is not None
    deleted = teardown.remove_buckets(run, delete_data=True)
    assert deleted.changed == len(ctx.params.b2.buckets)
    assert all(b2.get_bucket(api, bp.name) is None for bp in ctx.params.b2.buckets.values())
    assert teardown.remove_buckets(run, delete_data=True).changed == 0


def test_verify_reads_nothing_back_in_a_dry_run(tmp_path: Path, emulator: Running) -> None:  # noqa: F811
    # Its checks would all be red before anything was deleted: a dry run only says so.
    planned = teardown.verify_torn_down(dry(make_ctx(tmp_path, emulator)))
    assert planned.ok and not planned.checks and "dry run" in planned.reason
