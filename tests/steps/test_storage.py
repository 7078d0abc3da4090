"""B2 steps against the B2 emulator (real HTTP, unmodified b2sdk), one per module."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import pytest
from steps_harness import applied, free_port, make_ctx

from casera.errors import ApprovalRefused, SecretMissingError
from casera.localcloud.b2 import service
from casera.providers import b2
from casera.steps import storage

pytestmark = pytest.mark.localcloud


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory):
    state_dir = tmp_path_factory.mktemp("b2-state")
    project = tmp_path_factory.mktemp("project")
    port = free_port()
    service.start(port, state_dir, show=False)
    key_id, key = service.master_credentials(state_dir)
    # The key store lives under <project>/secrets: point the project at a scratch dir.
    with applied({"CASERA_PROJECT_DIR": str(project)}):
        yield {"realm": service.endpoint(port), "project": project,
               "environ": {"CASERA_B2_KEY_ID": key_id, "CASERA_B2_APPLICATION_KEY": key}}
    service.stop(state_dir)


def ctx_for(cloud, **kw):
    return make_ctx({"b2.realm": cloud["realm"]}, cloud["environ"], **kw)


def master(cloud) -> b2.B2Api:
    return storage.master_api(ctx_for(cloud))


def test_dry_run_on_an_empty_account_changes_nothing(cloud):
    ctx = ctx_for(cloud, dry_run=True)
    buckets = storage.ensure_buckets(ctx)
    keys = storage.ensure_app_keys(ctx)
    assert buckets.changed == 2 and keys.changed == 2
    assert any("+ bucket casera-uploads" in d for d in buckets.diff)
    assert list(master(cloud).list_buckets()) == []
    assert b2.list_keys(master(cloud)) == []
    assert not storage.key_store("local").path.exists()


def test_first_run_creates_private_buckets_and_scoped_keys(cloud):
    ctx = ctx_for(cloud)
    buckets = storage.ensure_buckets(ctx)
    assert buckets.changed == 2 and buckets.ok, buckets
    keys = storage.ensure_app_keys(ctx)
    assert keys.changed == 2 and keys.ok, keys
    checks = {c.name: c for c in keys.checks}
    assert checks["casera-local-certs-read cannot write"].ok
    assert checks["casera-local-api-uploads can write"].ok
    api = master(cloud)
    listed = {k.name: k for k in b2.list_keys(api)}
    certs = b2.get_bucket(api, "casera-certs")
    assert certs and certs.bucket_type == "allPrivate"
    assert listed["casera-local-certs-read"].bucket_id == certs.bucket_id
    assert set(listed["casera-local-certs-read"].capabilities) == {"listBuckets", "listFiles",
                                                                   "readFiles"}
    store = storage.key_store("local")
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    values = storage.app_key_values(ctx)
    assert values["casera-local-certs-read"].key_id == listed["casera-local-certs-read"].key_id
    assert values["casera-local-certs-read"].for_services == ("api", "worker")
    assert ctx.secrets.get("b2_key_id").reveal() not in {v.key_id for v in values.values()}
    # Nothing prints a secret: not the result, not the values.
    secret = values["casera-local-api-uploads"].secret.reveal()
    assert secret not in str(keys) + repr(values) + keys._repr_html_()
    # The write probe cleaned up after itself.
    uploads = b2.get_bucket(api, "casera-uploads")
    assert uploads and not list(api.BUCKET_CLASS(api, uploads.bucket_id).ls(recursive=True))


def test_second_run_changes_nothing(cloud):
    ctx = ctx_for(cloud)
    for step in (storage.ensure_buckets, storage.ensure_app_keys):
        result = step(ctx)
        assert result.changed == 0 and result.ok, result
        assert "0 changes" in result.headline()


def test_dry_run_on_a_converged_account_verifies_and_changes_nothing(cloud):
    before = b2.list_keys(master(cloud))
    result = storage.ensure_app_keys(ctx_for(cloud, dry_run=True))
    assert result.changed == 0 and result.ok and result.checks, result
    assert b2.list_keys(master(cloud)) == before


def test_public_bucket_is_made_private(cloud):
    api = master(cloud)
    certs = b2.get_bucket(api, "casera-certs")
    assert certs
    b2.set_bucket_type(api, certs.bucket_id, "allPublic")
    dry = storage.ensure_buckets(ctx_for(cloud, dry_run=True))
    assert dry.changed == 1 and "~ bucket casera-certs: allPublic -> allPrivate" in dry.diff
    assert b2.get_bucket(api, "casera-certs").bucket_type == "allPublic"
    result = storage.ensure_buckets(ctx_for(cloud))
    assert result.changed == 1 and result.ok, result
    assert b2.get_bucket(api, "casera-certs").bucket_type == "allPrivate"


def test_lost_secret_means_replace_behind_the_gate(cloud):
    store = storage.key_store("local")
    saved = store.path.read_text()
    old = {k.name: k.key_id for k in b2.list_keys(master(cloud))}
    lines = [ln for ln in saved.splitlines() if not ln.startswith("casera-local-certs-read_")]
    store.path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SecretMissingError, match="ensure_app_keys"):
        storage.app_key_values(ctx_for(cloud))
    # A run that needs approval and has none changes nothing.
    strict = ctx_for(cloud)
    strict = dataclasses.replace(strict, params=strict.params.model_copy(update={
        "runner": strict.params.runner.model_copy(update={"approval": "required"})}))
    with pytest.raises(ApprovalRefused):
        storage.ensure_app_keys(strict)
    assert {k.name: k.key_id for k in b2.list_keys(master(cloud))} == old

    result = storage.ensure_app_keys(ctx_for(cloud))
    assert result.changed == 2 and result.ok, result  # one made, one deleted
    now = {k.name: k.key_id for k in b2.list_keys(master(cloud))}
    assert len(now) == 2 and now["casera-local-certs-read"] != old["casera-local-certs-read"]
    assert now["casera-local-api-uploads"] == old["casera-local-api-uploads"]
    assert storage.app_key_values(ctx_for(cloud))["casera-local-certs-read"].key_id == \
        now["casera-local-certs-read"]


def test_key_with_the_wrong_scope_is_replaced(cloud):
    api = master(cloud)
    stray = next(k for k in b2.list_keys(api) if k.name == "casera-local-certs-read")
    certs = b2.get_bucket(api, "casera-certs")
    assert certs
    wide = b2.create_key(api, "casera-local-certs-read", ["listFiles", "readFiles",
                                                          "writeFiles"], certs.bucket_id)
    storage.key_store("local").put(wide.info.name, wide.info.key_id, wide.secret)
    b2.delete_key(api, stray.key_id)
    result = storage.ensure_app_keys(ctx_for(cloud))
    assert result.changed == 2 and result.ok, result
    assert any("scope differs" in d for d in result.diff)
    listed = [k for k in b2.list_keys(api) if k.name == "casera-local-certs-read"]
    assert len(listed) == 1 and "writeFiles" not in listed[0].capabilities


def test_key_store_file_is_plain_key_value_lines(cloud):
    path: Path = storage.key_store("local").path
    assert path.parent == Path(cloud["project"]) / "secrets"
    for line in path.read_text().splitlines():
        assert line.startswith("#") or "=" in line
