"""B2 steps against the B2 emulator (real HTTP, unmodified b2sdk), one per module."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import pytest
from steps_harness import make_ctx, private_b2

from casera import b2_keys
from casera.errors import ApprovalRefused, ProviderError, SecretMissingError, StepFailed
from casera.operator_secrets import Secret
from casera.providers import b2
from casera.steps import storage, swarm_secrets

pytestmark = pytest.mark.localcloud


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory):
    with private_b2(tmp_path_factory) as found:
        yield found


def ctx_for(cloud, **kw):
    return make_ctx({"b2.realm": cloud["realm"]}, cloud["environ"], **kw)


def master(cloud) -> b2.B2Api:
    return storage.master_api(ctx_for(cloud))


def key_count(cloud) -> int:
    """The scoped keys params name (the api's, certs', Redis backup's, pg_dump's, ...): the
    steps make one each, so the counts below follow params rather than a typed number."""
    return len(ctx_for(cloud).params.b2.keys)


def checks_ok(result, *names: str) -> bool:
    found = {c.name: c.ok for c in result.checks}
    return all(found.get(name) for name in names)


def test_dry_run_on_an_empty_account_changes_nothing(cloud):
    ctx = ctx_for(cloud, dry_run=True)
    buckets = storage.ensure_buckets(ctx)
    keys = storage.ensure_app_keys(ctx)
    # uploads, certs and backups; one key per params entry
    assert buckets.changed == 3 and keys.changed == key_count(cloud) >= 4
    assert any("+ bucket casera-uploads" in d for d in buckets.diff)
    assert list(master(cloud).list_buckets()) == []
    assert b2.list_keys(master(cloud)) == []
    assert not b2_keys.key_store("local").path.exists()


def test_first_run_creates_private_buckets_and_scoped_keys(cloud):
    ctx = ctx_for(cloud)
    buckets = storage.ensure_buckets(ctx)
    assert buckets.changed == 3 and buckets.ok, buckets
    keys = storage.ensure_app_keys(ctx)
    assert keys.changed == key_count(cloud) and keys.ok, keys
    # The backup key writes under redis/ only and B2 refuses it a delete (probed for real).
    assert checks_ok(keys, "casera-local-redis-backup cannot delete",
                     "casera-local-redis-backup cannot write outside redis/")
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
    store = b2_keys.key_store("local")
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
    assert uploads and b2.list_file_names(api, uploads.bucket_id, uploads.name) == []


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


class FakeSwarm:
    """Stands in for Swarm's answer to "what still mounts this key id" (the Swarm reading
    itself runs for real in tests/e2e/test_b2_key_rotation.py): mounted for the first
    ``busy_polls`` questions, free after, and it counts the questions."""

    def __init__(self, busy_polls: int = 0) -> None:
        self.busy_polls = busy_polls
        self.asked = 0

    def __call__(self, ctx, keys):
        self.asked += 1
        busy = self.asked <= self.busy_polls
        return {key_id: ["task casera_api.1 abc (running)"] if busy else [] for key_id in keys}


def strict(ctx):
    """The same run, with approval required and headless: any gate refuses."""
    return dataclasses.replace(ctx, params=ctx.params.model_copy(update={
        "runner": ctx.params.runner.model_copy(update={"approval": "required"})}))


def authorizes(cloud, key_id: str, secret) -> bool:
    try:
        b2.authorize(cloud["realm"], key_id, secret)
    except Exception:  # noqa: BLE001 - any refusal means the key no longer works
        return False
    return True


def test_lost_secret_is_rotated_and_the_old_key_kept_until_retired(cloud):
    store = b2_keys.key_store("local")
    old_store = b2_keys.B2KeyStore(store.path.with_name("old-b2-keys.env"))
    old_store.path.write_text(store.path.read_text())
    old = {k.name: k.key_id for k in b2.list_keys(master(cloud))}
    lines = [ln for ln in store.path.read_text().splitlines()
             if not ln.startswith("casera-local-certs-read_")]
    store.path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SecretMissingError, match="ensure_app_keys"):
        storage.app_key_values(ctx_for(cloud))

    plan = storage.ensure_app_keys(ctx_for(cloud, dry_run=True))
    result = storage.ensure_app_keys(ctx_for(cloud))
    assert result.changed == plan.changed == 2 and result.ok, result  # one made, one noted
    assert [d.split(":")[0] for d in plan.diff] == [d.split(":")[0] for d in result.diff]
    # Nothing deleted: the old key is still listed and still authorizes with its secret.
    listed = [k for k in b2.list_keys(master(cloud)) if k.name == "casera-local-certs-read"]
    assert {k.key_id for k in listed} > {old["casera-local-certs-read"]} and len(listed) == 2
    old_id, old_secret = old_store.load()["casera-local-certs-read"]
    assert authorizes(cloud, old_id, old_secret)
    assert store.retiring() == {"casera-local-certs-read": [old_id]}
    new = storage.app_key_values(ctx_for(cloud))["casera-local-certs-read"]
    assert new.key_id != old_id and authorizes(cloud, new.key_id, new.secret)
    assert storage.app_key_values(ctx_for(cloud))["casera-local-api-uploads"].key_id == \
        old["casera-local-api-uploads"]
    # A re-run of the key step (a run that stopped after it, then started again) converges.
    again = storage.ensure_app_keys(ctx_for(cloud))
    assert again.changed == 0 and again.ok, again

    # Retiring: the dry run plans exactly what the run then deletes, behind the gate.
    swarm = FakeSwarm()
    dry = storage.retire_replaced_keys(ctx_for(cloud, dry_run=True), key_users=swarm)
    assert dry.changed == 1 and any(old_id in d for d in dry.diff), dry
    with pytest.raises(ApprovalRefused):
        storage.retire_replaced_keys(strict(ctx_for(cloud)), key_users=swarm)
    assert authorizes(cloud, old_id, old_secret)
    done = storage.retire_replaced_keys(ctx_for(cloud), key_users=swarm)
    assert done.changed == dry.changed == 1 and done.ok, done
    assert [c.name for c in done.checks] == [f"casera-local-certs-read {old_id} deleted"]
    assert not authorizes(cloud, old_id, old_secret)
    assert old_id not in {k.key_id for k in b2.list_keys(master(cloud))}
    assert store.retiring() == {}
    assert authorizes(cloud, new.key_id, new.secret)
    # Converged: nothing left to retire, and a re-run says so.
    last = storage.retire_replaced_keys(ctx_for(cloud), key_users=FakeSwarm())
    assert last.changed == 0 and "no replaced key" in last.reason, last


def test_missing_key_store_rotates_every_key_and_waits_while_mounted(cloud):
    """A CI machine or a second operator: no key store at all."""
    store = b2_keys.key_store("local")
    before = {k.key_id: k.name for k in b2.list_keys(master(cloud))}
    saved = b2_keys.B2KeyStore(store.path.with_name("saved-b2-keys.env"))
    saved.path.write_text(store.path.read_text())
    store.path.unlink()
    dry_secrets = storage.ensure_app_keys(ctx_for(cloud, dry_run=True))
    result = storage.ensure_app_keys(ctx_for(cloud))
    # each key: one made, one noted as retiring
    assert result.changed == dry_secrets.changed == 2 * key_count(cloud) and result.ok, result
    assert sorted(i for ids in store.retiring().values() for i in ids) == sorted(before)
    for name, (key_id, secret) in saved.load().items():
        assert authorizes(cloud, key_id, secret), f"{name}: old key stopped working"

    # Still mounted past the timeout: nothing deleted, the step is red and says why.
    busy = FakeSwarm(busy_polls=10_000)
    with pytest.raises(StepFailed, match="still mounted"):
        storage.retire_replaced_keys(ctx_for(cloud), timeout=2, key_users=busy)
    assert set(before) <= {k.key_id for k in b2.list_keys(master(cloud))}
    assert sorted(i for ids in store.retiring().values() for i in ids) == sorted(before)

    # Mounted for a few polls (a rolling update), then free: the step waits, then deletes.
    rolling = FakeSwarm(busy_polls=3)
    dry = storage.retire_replaced_keys(ctx_for(cloud, dry_run=True), key_users=rolling)
    assert dry.changed == key_count(cloud) and all(
        "still mounted" in d for d in dry.diff if d.startswith("-"))
    done = storage.retire_replaced_keys(ctx_for(cloud), timeout=60, key_users=rolling)
    assert done.changed == dry.changed == key_count(cloud) and done.ok, done
    assert rolling.asked > 3
    assert not set(before) & {k.key_id for k in b2.list_keys(master(cloud))}
    for name, (key_id, secret) in saved.load().items():
        assert not authorizes(cloud, key_id, secret), f"{name}: old key still works"
    assert store.retiring() == {}
    values = storage.app_key_values(ctx_for(cloud))
    assert all(authorizes(cloud, v.key_id, v.secret) for v in values.values())


def test_unreadable_cluster_never_counts_as_unused(cloud):
    store = b2_keys.key_store("local")
    current = store.load()
    store.path.write_text("\n".join(
        ln for ln in store.path.read_text().splitlines()
        if not ln.startswith("casera-local-api-uploads_")) + "\n")
    storage.ensure_app_keys(ctx_for(cloud))
    old_id = current["casera-local-api-uploads"][0]

    def no_manager(ctx, keys):
        raise StepFailed("no swarm manager answers: run the swarm step first")

    with pytest.raises(StepFailed, match="no swarm manager"):
        storage.retire_replaced_keys(ctx_for(cloud), key_users=no_manager)
    assert old_id in {k.key_id for k in b2.list_keys(master(cloud))}
    done = storage.retire_replaced_keys(ctx_for(cloud), key_users=FakeSwarm())
    assert done.changed == 1 and old_id not in {k.key_id for k in b2.list_keys(master(cloud))}


def test_swarm_secrets_dry_run_plans_the_new_version_of_a_replaced_key(cloud):
    environ = dict(cloud["environ"], CASERA_DB_PASSWORD="x" * 24, CASERA_SECRET_KEY="y" * 24,
                   CASERA_APNS_KEY="z" * 24)
    ctx = make_ctx({"b2.realm": cloud["realm"]}, environ, dry_run=True)
    store = b2_keys.key_store("local")
    stored = store.load()
    as_is = swarm_secrets.stack_secret_values(ctx)
    assert as_is["b2_uploads_key_id"].reveal() == stored["casera-local-api-uploads"][0]
    store.path.write_text("\n".join(
        ln for ln in store.path.read_text().splitlines()
        if not ln.startswith("casera-local-api-uploads_")) + "\n")
    planned = swarm_secrets.stack_secret_values(ctx)
    # The real run makes a new key: its id and secret differ from anything stored now.
    assert planned["b2_uploads_key_id"].reveal() != stored["casera-local-api-uploads"][0]
    assert planned["b2_uploads_key"].reveal() != stored["casera-local-api-uploads"][1].reveal()
    assert planned["b2_certs_key_id"].reveal() == as_is["b2_certs_key_id"].reveal()
    storage.ensure_app_keys(make_ctx({"b2.realm": cloud["realm"]}, cloud["environ"]))
    storage.retire_replaced_keys(make_ctx({"b2.realm": cloud["realm"]}, cloud["environ"]),
                                 key_users=FakeSwarm())


def test_key_with_the_wrong_scope_is_replaced(cloud):
    api = master(cloud)
    stray = next(k for k in b2.list_keys(api) if k.name == "casera-local-certs-read")
    certs = b2.get_bucket(api, "casera-certs")
    assert certs
    wide = b2.create_key(api, "casera-local-certs-read", ["listFiles", "readFiles",
                                                          "writeFiles"], certs.bucket_id)
    b2_keys.key_store("local").put(wide.info.name, wide.info.key_id, wide.secret)
    b2.delete_key(api, stray.key_id)
    result = storage.ensure_app_keys(ctx_for(cloud))
    assert result.changed == 2 and result.ok, result
    assert any("scope differs" in d for d in result.diff)
    # The wide key is retired only by the retire step, once nothing mounts it.
    assert wide.info.key_id in {k.key_id for k in b2.list_keys(api)}
    storage.retire_replaced_keys(ctx_for(cloud), key_users=FakeSwarm())
    listed = [k for k in b2.list_keys(api) if k.name == "casera-local-certs-read"]
    assert len(listed) == 1 and "writeFiles" not in listed[0].capabilities


def test_key_store_file_is_plain_key_value_lines(cloud):
    path: Path = b2_keys.key_store("local").path
    assert path.parent == Path(cloud["project"]) / "secrets"
    for line in path.read_text().splitlines():
        assert line.startswith("#") or "=" in line


class _Secret:
    def __init__(self, secret_id: str, name: str, labels: dict) -> None:
        self.id, self.name, self.attrs = secret_id, name, {"Spec": {"Labels": labels}}


class _Service:
    def __init__(self, attrs: dict) -> None:
        self.attrs, self.name = attrs, attrs["Spec"]["Name"]


class _Engine:
    """Answers shaped as the Engine API documents them (Service: Spec.TaskTemplate.
    ContainerSpec.Secrets, PreviousSpec, UpdateStatus.State; Task: Spec.ContainerSpec.Secrets,
    Status.State; https://docs.docker.com/reference/api/engine/version/v1.57/schemas/Service/
    and .../Task/). The same functions run against real Swarm in the e2e rotation test."""

    def __init__(self, secrets: list, services: list, tasks: list) -> None:
        self.secrets = type("S", (), {"list": lambda _, filters=None: secrets})()
        self.services = type("V", (), {"list": lambda _: services})()
        self.api = type("A", (), {"tasks": lambda _: tasks})()


def _mounts(*ids: str) -> dict:
    return {"ContainerSpec": {"Secrets": [{"SecretID": i, "SecretName": f"n{i}",
                                           "File": {"Name": "b2_uploads_key_id"}} for i in ids]}}


def test_secret_users_reads_specs_rollback_targets_and_live_tasks():
    old, new = Secret("id", "K-old"), Secret("id", "K-new")
    engine = _Engine(
        secrets=[_Secret("s1", "casera_b2_uploads_key_id_v1", {
                     "casera.secret": "b2_uploads_key_id",
                     "casera.digest": swarm_secrets.digest("b2_uploads_key_id", old)}),
                 _Secret("s2", "casera_b2_uploads_key_id_v2", {
                     "casera.secret": "b2_uploads_key_id",
                     "casera.digest": swarm_secrets.digest("b2_uploads_key_id", new)})],
        services=[_Service({"ID": "svc1", "Spec": {"Name": "casera_api",
                                                   "TaskTemplate": _mounts("s2")},
                            "PreviousSpec": {"Name": "casera_api", "TaskTemplate": _mounts("s1")},
                            "UpdateStatus": {"State": "updating"}})],
        tasks=[{"ID": "t1" * 8, "ServiceID": "svc1", "Slot": 1, "Spec": _mounts("s1"),
                "Status": {"State": "running"}},
               {"ID": "t2" * 8, "ServiceID": "svc1", "Slot": 2, "Spec": _mounts("s1"),
                "Status": {"State": "shutdown"}},
               {"ID": "t3" * 8, "ServiceID": "svc1", "Slot": 1, "Spec": _mounts("s2"),
                "Status": {"State": "starting"}}])
    assert swarm_secrets.versions_holding(engine, "b2_uploads_key_id", old) == {"s1"}
    users = swarm_secrets.secret_users(engine, {"s1", "s2"})
    assert users["s2"] == ["service casera_api", "task casera_api.1 t3t3t3t3t3t3 (starting)"]
    # The old version: a rollback target while updating, and a running task (not the shut one).
    assert users["s1"] == ["service casera_api (updating: may roll back)",
                           "task casera_api.1 t1t1t1t1t1t1 (running)"]
    # Update finished, old task gone: nothing holds the old key any more.
    engine.services.list = lambda: [_Service({
        "ID": "svc1", "Spec": {"Name": "casera_api", "TaskTemplate": _mounts("s2")},
        "PreviousSpec": {"Name": "casera_api", "TaskTemplate": _mounts("s1")},
        "UpdateStatus": {"State": "completed"}})]
    engine.api.tasks = lambda: [{"ID": "t1" * 8, "ServiceID": "svc1", "Slot": 1,
                                 "Spec": _mounts("s1"), "Status": {"State": "shutdown"}}]
    assert swarm_secrets.secret_users(engine, {"s1"}) == {"s1": []}


def test_a_replayed_bucket_create_converges_on_the_bucket_made(cloud):
    api = master(cloud)
    made = b2.create_bucket(api, "casera-replayed", "allPrivate")
    # The first answer lost, the create sent again: B2 says duplicate_bucket_name, the
    # provider re-reads and hands back the same bucket.
    again = b2.create_bucket(api, "casera-replayed", "allPrivate")
    assert again == made


def test_b2_errors_leave_the_provider_as_provider_errors(cloud):
    with pytest.raises(ProviderError) as bad_name:
        b2.create_bucket(master(cloud), "b2-reserved-prefix", "allPrivate")
    assert bad_name.value.system == "b2" and "create bucket b2-reserved-prefix" in str(
        bad_name.value)
    with pytest.raises(ProviderError) as refused:
        b2.authorize(cloud["realm"], "no-such-key-id", Secret("k", "not-a-key"))
    assert refused.value.system == "b2"
    assert "not-a-key" not in str(refused.value)


def test_a_bucket_name_held_by_another_account_names_the_params_key(cloud, monkeypatch):
    # The emulator has one account, so the other account's bucket is shown by hiding ours
    # from the re-read that follows B2's duplicate_bucket_name answer.
    api = master(cloud)
    monkeypatch.setattr(b2, "get_bucket", lambda api, name: None)
    with pytest.raises(StepFailed, match=r"params/local.yaml b2.buckets"):
        storage._create_bucket(api, "local", "casera-replayed", "allPrivate")
