"""The B2 emulator driven by the unmodified b2sdk, over real HTTP, with state on disk.

One emulator process per test module (own free port, temp state dir), started with small
part sizes so that b2sdk takes its large-file path on a 400 KiB upload.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from b2sdk.v2 import B2Api, B2Http, B2RawHTTPApi, Bucket, InMemoryAccountInfo
from b2sdk.v2.exception import (
    BadRequest,
    FileNotPresent,
    InvalidAuthToken,
    MaxRetriesExceeded,
    RestrictedBucket,
    Unauthorized,
)
from localcloud_harness import free_port

from casera_localcloud.b2 import service

PART = 128 * 1024
MIN_PART = 32 * 1024
READ_ONLY = ["listBuckets", "listFiles", "readFiles"]
READ_WRITE = ["listBuckets", "listFiles", "readFiles", "writeFiles", "deleteFiles"]


def start(port: int, state_dir: Path) -> None:
    service.start(port, state_dir, show=False, extra_args=[
        "--recommended-part-size", str(PART), "--minimum-part-size", str(MIN_PART)])


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory):
    state_dir = tmp_path_factory.mktemp("b2-state")
    port = free_port()
    start(port, state_dir)
    yield port, state_dir
    service.stop(state_dir)


@pytest.fixture(scope="module")
def realm(emulator) -> str:
    return service.endpoint(emulator[0])


def authorize(realm: str, key_id: str, key: str) -> B2Api:
    api = B2Api(InMemoryAccountInfo())
    api.authorize_account(realm, key_id, key)
    return api


@pytest.fixture(scope="module")
def master(emulator, realm) -> B2Api:
    return authorize(realm, *service.master_credentials(emulator[1]))


@pytest.fixture(scope="module")
def buckets(master) -> dict[str, Bucket]:
    return {name: master.create_bucket(name, "allPrivate")
            for name in ("casera-certs", "casera-uploads")}


def scoped_api(master: B2Api, realm: str, name: str, capabilities: list[str],
               bucket: Bucket | None = None, prefix: str | None = None) -> B2Api:
    key = master.create_key(capabilities, name, bucket_id=bucket.id_ if bucket else None,
                            name_prefix=prefix)
    return authorize(realm, key.id_, key.application_key)


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def upload_refused(bucket: Bucket, name: str) -> None:
    """b2sdk retries an upload on Unauthorized (it might be a stale upload URL), then gives
    up with MaxRetriesExceeded holding the Unauthorized answers: that is how a refused
    upload surfaces to callers, against B2 as here."""
    with pytest.raises(MaxRetriesExceeded) as refused:
        bucket.upload_bytes(b"x", name)
    assert all(isinstance(e, Unauthorized) for e in refused.value.exception_info_list)


def content(download) -> bytes:
    out = io.BytesIO()
    download.save(out)
    return out.getvalue()


def test_buckets_are_created_private(master, buckets):
    listed = {b.name: b.type_ for b in master.list_buckets()}
    assert listed == {"casera-certs": "allPrivate", "casera-uploads": "allPrivate"}
    buckets["casera-certs"].upload_bytes(b"-----BEGIN CERT", "tls/ca.pem")
    status, body = fetch(buckets["casera-certs"].get_download_url("tls/ca.pem"))
    assert status == 401 and json.loads(body)["code"] == "unauthorized"


def test_read_only_certs_key_cannot_upload_nor_touch_uploads(master, realm, buckets):
    certs, uploads = buckets["casera-certs"], buckets["casera-uploads"]
    certs.upload_bytes(b"cert", "tls/api.pem")
    uploads.upload_bytes(b"photo", "u/1.jpg")
    reader = scoped_api(master, realm, "certs-read", READ_ONLY, certs)

    mine = reader.get_bucket_by_name("casera-certs")
    assert content(mine.download_file_by_name("tls/api.pem")) == b"cert"
    upload_refused(mine, "tls/evil.pem")
    with pytest.raises(Unauthorized):
        mine.hide_file("tls/api.pem")

    # b2sdk refuses the other bucket on its own; the emulator must refuse it too, for any
    # client that does not check (here: b2sdk objects built by hand, and plain HTTP).
    with pytest.raises(RestrictedBucket):
        reader.get_bucket_by_name("casera-uploads")
    other = Bucket(reader, uploads.id_, name="casera-uploads")
    with pytest.raises(Unauthorized):
        content(other.download_file_by_name("u/1.jpg"))
    with pytest.raises(Unauthorized):
        list(other.ls())
    upload_refused(other, "u/2.jpg")
    token = reader.account_info.get_account_auth_token()
    status, _ = fetch(uploads.get_download_url("u/1.jpg"), {"Authorization": token})
    assert status == 401


def test_uploads_read_write_key_uploads_and_downloads(master, realm, buckets):
    writer = scoped_api(master, realm, "uploads-rw", READ_WRITE, buckets["casera-uploads"])
    bucket = writer.get_bucket_by_name("casera-uploads")
    version = bucket.upload_bytes(b"avatar", "u/avatar.png", file_info={"Owner": "ana b"})
    assert content(bucket.download_file_by_name("u/avatar.png")) == b"avatar"
    assert content(writer.download_file_by_id(version.id_)) == b"avatar"
    info = bucket.get_file_info_by_id(version.id_)
    assert info.file_info == {"Owner": "ana b"} and info.content_type == "image/png"
    by_name = bucket.get_file_info_by_name("u/avatar.png")  # a HEAD on the download URL
    assert by_name.id_ == version.id_ and by_name.file_info == {"Owner": "ana b"}
    assert "u/avatar.png" in [f.file_name for f, _ in bucket.ls(recursive=True)]
    with pytest.raises(Unauthorized):  # no writeBuckets: cannot make its bucket public
        bucket.update(bucket_type="allPublic")
    upload_refused(Bucket(writer, buckets["casera-certs"].id_, name="casera-certs"), "y")


def test_name_prefix_is_enforced(master, realm, buckets):
    api = scoped_api(master, realm, "redis-backups", READ_WRITE, buckets["casera-uploads"],
                     prefix="redis/")
    bucket = api.get_bucket_by_name("casera-uploads")
    bucket.upload_bytes(b"REDIS0011", "redis/dump.rdb")
    assert [f.file_name for f, _ in bucket.ls("redis", recursive=True)] == ["redis/dump.rdb"]
    upload_refused(bucket, "u/not-mine.jpg")
    with pytest.raises(Unauthorized):
        content(bucket.download_file_by_name("u/1.jpg"))
    with pytest.raises(Unauthorized):  # a listing wider than the key is refused
        list(bucket.ls(recursive=True))


def test_signed_url_downloads_private_file_until_it_expires(master, buckets):
    bucket = buckets["casera-certs"]
    bucket.upload_bytes(b"report", "reports/2026-11.csv")
    bucket.upload_bytes(b"secret", "private/key.pem")
    token = bucket.get_download_authorization("reports/", 2)
    signed = bucket.get_download_url("reports/2026-11.csv") + "?Authorization=" + token

    assert fetch(signed) == (200, b"report")
    assert fetch(bucket.get_download_url("reports/2026-11.csv"),
                 {"Authorization": token}) == (200, b"report")
    status, _ = fetch(bucket.get_download_url("private/key.pem") + "?Authorization=" + token)
    assert status == 401  # outside the shared prefix
    time.sleep(2.2)
    status, body = fetch(signed)
    assert status == 401 and json.loads(body)["code"] == "expired_auth_token"


def test_public_bucket_needs_no_auth(master):
    public = master.create_bucket("casera-public", "allPublic")
    public.upload_bytes(b"<html>", "index.html")
    assert fetch(public.get_download_url("index.html")) == (200, b"<html>")
    public.update(bucket_type="allPrivate")
    assert fetch(public.get_download_url("index.html"))[0] == 401


def test_delete_empty_bucket(master):
    scratch = master.create_bucket("casera-scratch", "allPrivate")
    version = scratch.upload_bytes(b"tmp", "tmp.txt")
    scratch.delete_file_version(version.id_, "tmp.txt")
    master.delete_bucket(scratch)
    assert "casera-scratch" not in {b.name for b in master.list_buckets()}


def test_large_file_round_trip(master, buckets):
    bucket = buckets["casera-uploads"]
    data = os.urandom(3 * PART + 1234)
    version = bucket.upload_bytes(data, "backups/redis-large.rdb")
    assert version.size == len(data)
    assert version.content_sha1 == "none"  # B2 has no whole-file SHA-1 for large files
    assert content(bucket.download_file_by_name("backups/redis-large.rdb")) == data

    # The same by hand, to see parts listed, and a cancelled upload leave nothing behind.
    session = master.session
    started = session.start_large_file(bucket.id_, "backups/manual.bin", "b2/x-auto", {})
    chunks = [os.urandom(MIN_PART), b"tail"]
    sha1s = []
    for number, chunk in enumerate(chunks, start=1):
        sha1s.append(hashlib.sha1(chunk).hexdigest())
        session.upload_part(started["fileId"], number, len(chunk), sha1s[-1],
                            io.BytesIO(chunk))
    assert [p.part_number for p in bucket.list_parts(started["fileId"])] == [1, 2]
    session.finish_large_file(started["fileId"], sha1s)
    assert content(bucket.download_file_by_name("backups/manual.bin")) == b"".join(chunks)

    dropped = session.start_large_file(bucket.id_, "backups/dropped.bin", "b2/x-auto", {})
    assert [f.file_id for f in bucket.list_unfinished_large_files()] == [dropped["fileId"]]
    bucket.cancel_large_file(dropped["fileId"])
    assert list(bucket.list_unfinished_large_files()) == []


def test_hide_and_delete_versions(master, buckets):
    bucket = buckets["casera-certs"]
    first = bucket.upload_bytes(b"v1", "rotate/token")
    second = bucket.upload_bytes(b"v2", "rotate/token")
    assert content(bucket.download_file_by_name("rotate/token")) == b"v2"

    marker = bucket.hide_file("rotate/token")
    assert marker.action == "hide"
    assert [f.file_name for f, _ in bucket.ls("rotate")] == []
    with pytest.raises(FileNotPresent):
        content(bucket.download_file_by_name("rotate/token"))
    versions = [(f.id_, f.action) for f, _ in bucket.ls("rotate", latest_only=False)]
    assert versions == [(marker.id_, "hide"), (second.id_, "upload"), (first.id_, "upload")]

    bucket.delete_file_version(marker.id_, "rotate/token")  # unhide
    assert content(bucket.download_file_by_name("rotate/token")) == b"v2"
    bucket.delete_file_version(second.id_, "rotate/token")
    assert content(bucket.download_file_by_name("rotate/token")) == b"v1"
    with pytest.raises(FileNotPresent):
        bucket.delete_file_version(second.id_, "rotate/token")
    with pytest.raises(BadRequest):  # B2 refuses to delete a bucket that holds files
        master.delete_bucket(bucket)


def test_keys_list_and_delete(master, realm, buckets):
    key = master.create_key(READ_ONLY, "short-lived", bucket_id=buckets["casera-certs"].id_)
    listed = {k.key_name: k for k in master.list_keys()}
    assert listed["short-lived"].bucket_id == buckets["casera-certs"].id_
    assert set(listed["short-lived"].capabilities) == set(READ_ONLY)
    api = authorize(realm, key.id_, key.application_key)
    master.delete_key(key)
    with pytest.raises(Unauthorized):
        authorize(realm, key.id_, key.application_key)
    with pytest.raises(Unauthorized):  # its old token died with it; re-authorizing fails
        list(api.get_bucket_by_name("casera-certs").ls())


def test_bad_credentials_and_tokens_raise_b2sdk_errors(master, realm):
    with pytest.raises(Unauthorized):
        authorize(realm, master.account_info.get_application_key_id(), "wrong")
    raw = B2RawHTTPApi(B2Http())
    with pytest.raises(InvalidAuthToken):
        raw.list_buckets(realm, "4_not-a-token", master.account_info.get_account_id())


def test_expired_account_token_makes_b2sdk_reauthorize(emulator, master):
    old = master.account_info.get_account_auth_token()
    # Age the token the way 24 hours would; the store is plain SQLite, shared with the server.
    with sqlite3.connect(emulator[1] / "b2.sqlite3") as db:
        db.execute("UPDATE tokens SET expires_ms = 0 WHERE token = ?", (old,))
    raw = B2RawHTTPApi(B2Http())
    with pytest.raises(InvalidAuthToken) as expired:
        raw.list_buckets(master.account_info.get_api_url(), old,
                         master.account_info.get_account_id())
    assert expired.value.code == "expired_auth_token"
    assert {b.name for b in master.list_buckets()} >= {"casera-certs"}  # re-authorized
    assert master.account_info.get_account_auth_token() != old


def test_state_survives_restart(emulator, master, realm, buckets):
    port, state_dir = emulator
    version = buckets["casera-uploads"].upload_bytes(b"keep me", "restart/file.txt")
    key = master.create_key(READ_ONLY, "after-restart", bucket_id=buckets["casera-uploads"].id_)
    service.stop(state_dir)
    start(port, state_dir)

    # The old account token is still valid: kernels holding one need not re-authorize.
    assert content(master.download_file_by_id(version.id_)) == b"keep me"
    api = authorize(realm, key.id_, key.application_key)
    bucket = api.get_bucket_by_name("casera-uploads")
    assert content(bucket.download_file_by_name("restart/file.txt")) == b"keep me"
    assert {b.name for b in master.list_buckets()} >= {"casera-certs", "casera-uploads"}


def test_b2sdk_v3_interface_uses_api_v4(emulator, realm, buckets):
    from b2sdk.v3 import B2Api as B2ApiV3
    from b2sdk.v3 import InMemoryAccountInfo as InfoV3

    master_v3 = B2ApiV3(InfoV3())
    master_v3.authorize_account(*service.master_credentials(emulator[1]), realm)
    key = master_v3.create_key(READ_WRITE, "v4-key", bucket_ids=[buckets["casera-uploads"].id_])
    api = B2ApiV3(InfoV3())
    api.authorize_account(key.id_, key.application_key, realm)
    assert api.account_info.get_allowed()["buckets"] == [
        {"id": buckets["casera-uploads"].id_, "name": "casera-uploads"}]
    bucket = api.get_bucket_by_name("casera-uploads")
    bucket.upload_bytes(b"v4", "v4/file")
    assert content(bucket.download_file_by_name("v4/file")) == b"v4"


def test_up_status_down(tmp_path, monkeypatch):
    monkeypatch.setenv("CASERA_PROJECT_DIR", str(tmp_path / "project"))
    monkeypatch.setenv("CASERA_LOCAL_HOME", str(tmp_path / "home"))
    port = free_port()
    try:
        assert "started" in service.up(port=port)[0]
        assert "already running" in service.up(port=port)[0]
        secrets_env = (tmp_path / "project" / "secrets" / "local.env").read_text()
        values = dict(line.split("=", 1) for line in secrets_env.split())
        authorize(service.endpoint(port), values["CASERA_B2_KEY_ID"],
                  values["CASERA_B2_APPLICATION_KEY"])
        assert "running" in service.status(port=port)[0]
    finally:
        service.down()
    assert "not answering" in service.status(port=port)[0]


def test_append_only_backup_key(master, realm, buckets):
    """The Redis backup key (issue 11): listFiles + writeFiles under redis/ only. It adds
    snapshots and lists them, and B2 refuses it deletes, reads and anything outside redis/."""
    uploads = buckets["casera-uploads"]
    uploads.upload_bytes(b"someone else's", "u/other.jpg")
    api = scoped_api(master, realm, "redis-backup-writer", ["listFiles", "writeFiles"],
                     uploads, prefix="redis/")
    bucket = Bucket(api, uploads.id_, name="casera-uploads")
    version = bucket.upload_bytes(b"REDIS0011-append-only", "redis/2026-12-01T08.rdb",
                                  file_info={"sha256": "x", "dbsize": "3"})
    listed = {f.file_name: f.file_info for f, _ in bucket.ls("redis/", recursive=True)}
    assert listed["redis/2026-12-01T08.rdb"] == {"sha256": "x", "dbsize": "3"}
    with pytest.raises(Unauthorized):
        api.delete_file_version(version.id_, "redis/2026-12-01T08.rdb")
    with pytest.raises(Unauthorized):  # no readFiles: a node cannot read snapshots back
        content(bucket.download_file_by_id(version.id_))
    with pytest.raises(Unauthorized):
        list(bucket.ls(recursive=True))
    upload_refused(bucket, "u/overwrite.jpg")
    # Still there: the refused delete deleted nothing (test_name_prefix_is_enforced's file too).
    assert "redis/2026-12-01T08.rdb" in [f.file_name for f, _ in
                                         uploads.ls("redis/", recursive=True)]


def test_name_prefix_needs_a_bucket(master):
    # b2_create_key: "You must set bucketId when setting" namePrefix (B2's API docs).
    with pytest.raises(BadRequest):
        master.create_key(["listFiles"], "prefix-without-bucket", name_prefix="redis/")
