"""b2_copy_file on the B2 emulator, driven by the unmodified b2sdk over real HTTP, against
what https://www.backblaze.com/apidocs/b2-copy-file documents: the whole file or a range,
metadataDirective COPY (the source's content type and file info) or REPLACE (the caller's;
contentType required), destinationBucketId, and the key's rights (writeFiles where the copy
goes, readFiles on a private source)."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from b2sdk.v2 import B2Api, Bucket, InMemoryAccountInfo
from b2sdk.v2.exception import B2Error, Unauthorized
from localcloud_harness import free_port

from casera_localcloud.b2 import service

GOOD = b"the good version\n" * 300
BAD = b"a bad overwrite" * 10


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, B2Api]]:
    state_dir = tmp_path_factory.mktemp("b2-copy")
    port = free_port()
    service.start(port, state_dir, show=False)
    realm = service.endpoint(port)
    master = B2Api(InMemoryAccountInfo())
    master.authorize_account(realm, *service.master_credentials(state_dir))
    yield realm, master
    service.stop(state_dir)


@pytest.fixture(scope="module")
def buckets(emulator) -> dict[str, Bucket]:
    master = emulator[1]
    return {name: master.create_bucket(name, "allPrivate")
            for name in ("copy-uploads", "copy-archive")}


def content(api: B2Api, file_id: str) -> bytes:
    out = io.BytesIO()
    api.download_file_by_id(file_id).save(out)
    return out.getvalue()


def versions(bucket: Bucket, name: str) -> list[tuple[str, str]]:
    return [(v.id_, v.action) for v in bucket.list_file_versions(name)]


def raw_copy(emulator, **params: object) -> tuple[int, dict[str, object]]:
    """The call as JSON, to send what b2sdk refuses to send itself."""
    api = emulator[1]
    info = api.account_info
    request = urllib.request.Request(
        f"{info.get_api_url()}/b2api/v4/b2_copy_file", data=json.dumps(params).encode(),
        headers={"Authorization": info.get_account_auth_token()}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_copy_is_the_newest_version_byte_equal_with_the_source_metadata(emulator, buckets):
    api, bucket = emulator[1], buckets["copy-uploads"]
    good = bucket.upload_bytes(GOOD, "photos/a.jpg", content_type="image/jpeg",
                               file_info={"owner": "u1"})
    bad = bucket.upload_bytes(BAD, "photos/a.jpg", content_type="text/plain")
    made = bucket.copy(good.id_, "photos/a.jpg")
    assert versions(bucket, "photos/a.jpg") == [(made.id_, "upload"), (bad.id_, "upload"),
                                                (good.id_, "upload")]
    assert content(api, made.id_) == GOOD
    listed = next(v for v in bucket.list_file_versions("photos/a.jpg") if v.id_ == made.id_)
    assert listed.content_type == "image/jpeg" and listed.file_info == {"owner": "u1"}
    assert listed.size == len(GOOD)
    # The name now serves the copy.
    out = io.BytesIO()
    bucket.download_file_by_name("photos/a.jpg").save(out)
    assert out.getvalue() == GOOD


def test_a_range_and_replaced_metadata_and_another_bucket(emulator, buckets):
    api = emulator[1]
    source = buckets["copy-uploads"].upload_bytes(GOOD, "photos/b.jpg", file_info={"k": "v"})
    made = buckets["copy-archive"].copy(source.id_, "kept/b.part", offset=4, length=10,
                                        content_type="application/x-part",
                                        file_info={"from": "b"})
    assert content(api, made.id_) == GOOD[4:14]
    listed = next(iter(buckets["copy-archive"].list_file_versions("kept/b.part")))
    assert listed.content_type == "application/x-part" and listed.file_info == {"from": "b"}
    assert versions(buckets["copy-uploads"], "kept/b.part") == []


@pytest.mark.parametrize(("params", "words"), [
    ({"metadataDirective": "COPY", "contentType": "text/plain"}, "must not be set"),
    ({"metadataDirective": "COPY", "fileInfo": {"a": "b"}}, "must not be set"),
    ({"metadataDirective": "REPLACE"}, "contentType is required"),
    ({"metadataDirective": "MERGE"}, "metadataDirective must be"),
    ({"range": "bytes=5-2"}, "outside the source"),
    ({"range": "bytes=0-999999"}, "outside the source"),
    ({"range": "items=0-1"}, "range must be"),
    ({"destinationBucketId": "4a48fe8875c6214145260818"}, "bucket"),
])
def test_what_b2_refuses_is_a_400_and_makes_nothing(emulator, buckets, params, words):
    bucket = buckets["copy-uploads"]
    source = bucket.upload_bytes(GOOD, "photos/c.jpg")
    before = versions(bucket, "photos/c.jpg")
    status, body = raw_copy(emulator, sourceFileId=source.id_, fileName="photos/c.jpg",
                            **params)
    assert status == 400 and words in str(body["message"]), body
    assert body["status"] == 400 and body["code"]
    assert versions(bucket, "photos/c.jpg") == before


def test_a_missing_source_is_refused(emulator, buckets):
    status, body = raw_copy(emulator, sourceFileId="4_zmissing_f0000", fileName="x")
    assert status == 400 and body["code"] == "file_not_present", body
    with pytest.raises(B2Error):
        buckets["copy-uploads"].copy("4_zmissing_f0000", "x")


def test_a_key_needs_read_on_the_source_and_write_on_the_destination(emulator, buckets):
    realm, master = emulator
    uploads = buckets["copy-uploads"]
    source = uploads.upload_bytes(GOOD, "photos/d.jpg")

    def scoped(capabilities: list[str]) -> Bucket:
        key = master.create_key(capabilities, f"copy-{'-'.join(capabilities)}"[:90],
                                bucket_id=uploads.id_)
        api = B2Api(InMemoryAccountInfo())
        api.authorize_account(realm, key.id_, key.application_key)
        return api.BUCKET_CLASS(api, uploads.id_, name=uploads.name)

    before = versions(uploads, "photos/d.jpg")
    with pytest.raises(Unauthorized):
        scoped(["listFiles", "writeFiles"]).copy(source.id_, "photos/d.jpg")
    with pytest.raises(Unauthorized):
        scoped(["listFiles", "readFiles"]).copy(source.id_, "photos/d.jpg")
    assert versions(uploads, "photos/d.jpg") == before
    made = scoped(["listFiles", "readFiles", "writeFiles"]).copy(source.id_, "photos/d.jpg")
    assert content(master, made.id_) == GOOD

