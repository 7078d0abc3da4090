"""Restoring an upload deleted by mistake, against the B2 emulator (real HTTP, unmodified
b2sdk), which keeps every version and hide marker as B2 does."""

from __future__ import annotations

import pytest
from steps_harness import make_ctx, private_b2

from casera.errors import StepFailed
from casera.providers import b2
from casera.steps import storage
from casera.steps.upload_restore import restore_deleted_upload, restore_previous_version

pytestmark = pytest.mark.localcloud

NAME = "uploads/2026/12/photo.jpg"
FIRST, SECOND = b"first version " * 100, b"second version, the one that was hidden " * 50


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory):
    with private_b2(tmp_path_factory) as found:
        ctx = make_ctx({"b2.realm": found["realm"]}, found["environ"])
        api = storage.master_api(ctx)
        bucket = b2.create_bucket(api, ctx.params.b2.buckets["uploads"].name, "allPrivate")
        yield {**found, "api": api, "bucket": bucket}


def ctx_for(cloud, **kw):
    return make_ctx({"b2.realm": cloud["realm"]}, cloud["environ"], **kw)


def versions(cloud, name=NAME):
    bucket = cloud["bucket"]
    return b2.file_versions(cloud["api"], bucket.bucket_id, bucket.name, name)


def test_a_hidden_upload_comes_back_byte_equal_and_a_rerun_changes_nothing(cloud, tmp_path):
    api, bucket = cloud["api"], cloud["bucket"]
    b2.upload_bytes(api, bucket.bucket_id, bucket.name, NAME, FIRST)
    kept = b2.upload_bytes(api, bucket.bucket_id, bucket.name, NAME, SECOND)
    # What the app's or an operator's "delete" does in a versioned bucket: a hide marker.
    api.BUCKET_CLASS(api, bucket.bucket_id, name=bucket.name).hide_file(NAME)
    assert [v.action for v in versions(cloud)] == ["hide", "upload", "upload"]
    assert NAME not in b2.list_file_names(api, bucket.bucket_id, bucket.name)

    dry = restore_deleted_upload(ctx_for(cloud, dry_run=True), NAME)
    assert dry.changed == 1 and "hide marker" in dry.diff[0], dry
    assert [v.action for v in versions(cloud)] == ["hide", "upload", "upload"]

    done = restore_deleted_upload(ctx_for(cloud), NAME)
    assert done.changed == 1 and done.ok, done
    assert [v.action for v in versions(cloud)] == ["upload", "upload"]
    assert versions(cloud)[0].file_id == kept
    b2.download_file(api, bucket.bucket_id, bucket.name, kept, tmp_path / "got")
    assert (tmp_path / "got").read_bytes() == SECOND
    assert NAME in b2.list_file_names(api, bucket.bucket_id, bucket.name)

    again = restore_deleted_upload(ctx_for(cloud), NAME)
    assert again.changed == 0 and "visible already" in again.reason, again


@pytest.mark.parametrize(("file_name", "bucket", "words"), [
    ("uploads/never.jpg", "uploads", "has no version left"),
    ("", "uploads", "file_name is empty"),
    (NAME, "photos", "is not a bucket role"),
])
def test_what_cannot_be_restored_is_refused_and_says_why(cloud, file_name, bucket, words):
    before = versions(cloud)
    with pytest.raises(StepFailed, match=words):
        restore_deleted_upload(ctx_for(cloud), file_name, bucket)
    assert versions(cloud) == before


COPY_NAME = "uploads/2026/12/overwritten.png"
GOOD, BAD = b"the good picture " * 200, b"garbage written over it " * 30


def test_a_previous_version_comes_back_as_a_byte_equal_copy_and_a_rerun_changes_nothing(
        cloud, tmp_path):
    api, bucket = cloud["api"], cloud["bucket"]
    good = b2.upload_bytes(api, bucket.bucket_id, bucket.name, COPY_NAME, GOOD)
    bad = b2.upload_bytes(api, bucket.bucket_id, bucket.name, COPY_NAME, BAD)

    dry = restore_previous_version(ctx_for(cloud, dry_run=True), COPY_NAME, good)
    assert dry.changed == 1 and f"copy of version {good}" in dry.diff[0], dry
    assert [v.file_id for v in versions(cloud, COPY_NAME)] == [bad, good]

    done = restore_previous_version(ctx_for(cloud), COPY_NAME, good)
    assert done.changed == 1 and done.ok, done
    now = versions(cloud, COPY_NAME)
    # A new newest version; the bad one and the original stay as history.
    assert [v.file_id for v in now[1:]] == [bad, good] and now[0].action == "upload"
    b2.download_file(api, bucket.bucket_id, bucket.name, now[0].file_id, tmp_path / "got")
    assert (tmp_path / "got").read_bytes() == GOOD

    again = restore_previous_version(ctx_for(cloud), COPY_NAME, good)
    assert again.changed == 0 and "already holds the bytes" in again.reason, again
    assert len(versions(cloud, COPY_NAME)) == 3


@pytest.mark.parametrize(("file_name", "version_id", "bucket", "words"), [
    (COPY_NAME, "4_zno_such_version", "uploads", "is not an upload of"),
    ("", "x", "uploads", "file_name is empty"),
    (COPY_NAME, "x", "photos", "is not a bucket role"),
])
def test_a_copy_that_cannot_be_made_is_refused_before_any_change(cloud, file_name, version_id,
                                                                  bucket, words):
    api, b = cloud["api"], cloud["bucket"]
    b2.upload_bytes(api, b.bucket_id, b.name, COPY_NAME, GOOD)
    before = versions(cloud, COPY_NAME)
    with pytest.raises(StepFailed, match=words):
        restore_previous_version(ctx_for(cloud), file_name, version_id, bucket)
    assert versions(cloud, COPY_NAME) == before
