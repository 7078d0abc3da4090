"""The rotation's B2 steps against a private B2 emulator (real HTTP, unmodified b2sdk): a
rotation makes a new key per entry with the same scope and keeps the old one working; a re-run
of the same rotation changes nothing; the dry run plans the old keys' deletion as the run
does it; once deleted, the old keys are refused."""

from __future__ import annotations

import pytest
from steps_harness import make_ctx, private_b2
from test_storage import authorizes

from casera import b2_keys
from casera.steps import secret_rotation, storage

pytestmark = pytest.mark.localcloud


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory):
    with private_b2(tmp_path_factory) as found:
        ctx = make_ctx({"b2.realm": found["realm"]}, found["environ"])
        assert storage.ensure_buckets(ctx).ok and storage.ensure_app_keys(ctx).ok
        yield found


def ctx_for(cloud, **kw):
    return make_ctx({"b2.realm": cloud["realm"]}, cloud["environ"], **kw)


def test_rotation_makes_new_keys_keeps_old_ones_then_retires_them(cloud) -> None:
    store = b2_keys.key_store("local")
    old = store.load()
    names = sorted(old)

    dry_ctx = ctx_for(cloud, dry_run=True)
    selection = secret_rotation.select(dry_ctx, "b2_keys", "r-test")
    planned = secret_rotation.new_b2_keys(dry_ctx, selection)
    retire_plan = secret_rotation.retire_old_b2_keys(dry_ctx, selection)
    other = secret_rotation.select(dry_ctx, "apns_key", "r-test")
    assert secret_rotation.retire_old_b2_keys(ctx_for(cloud), other).changed == 0
    assert planned.changed == retire_plan.changed == len(names)
    assert sorted(line.split()[2] for line in retire_plan.diff) == names
    assert all(f"({old[n][0]})" in " ".join(retire_plan.diff) for n in names)
    assert store.load() == old, "a dry run changed the key store"

    ctx = ctx_for(cloud)
    made = secret_rotation.new_b2_keys(ctx, selection)
    assert made.changed == len(names) and made.ok, made
    new = store.load()
    assert {n: store.rotation(n) for n in names} == dict.fromkeys(names, "r-test")
    assert sorted(i for ids in store.retiring().values() for i in ids) == sorted(
        key_id for key_id, _ in old.values())
    for name in names:
        assert new[name][0] != old[name][0]
        assert authorizes(cloud, *old[name]) and authorizes(cloud, *new[name]), name
    again = secret_rotation.new_b2_keys(ctx_for(cloud), selection)
    assert again.changed == 0 and "made by rotation r-test" in again.reason, again

    # Nothing mounts the old keys (no cluster here): they go, and B2 refuses them after.
    done = storage.retire_replaced_keys(ctx, key_users=lambda _ctx, keys: {k: [] for k in keys})
    assert done.changed == len(names) and done.ok, done
    for name in names:
        assert not authorizes(cloud, *old[name]) and authorizes(cloud, *new[name]), name
    assert store.retiring() == {}
    # A new rotation id makes new keys again.
    assert secret_rotation.new_b2_keys(ctx_for(cloud, dry_run=True), secret_rotation.select(
        ctx, "b2_keys", "r-test-2")).changed == len(names)
