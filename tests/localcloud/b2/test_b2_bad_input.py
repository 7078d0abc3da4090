"""Bad input to the B2 emulator gets B2's JSON error, never a 500, a traceback or HTML.

Each case is sent over plain HTTP (a client that skips b2sdk's own checks), and must answer
``{"status": N, "code": "...", "message": "..."}`` with N the HTTP status and the code B2
documents for it, and change nothing: buckets, keys, file versions and unfinished large files
are compared before and after. The emulator is this module's own (free port, temp state), so
the shared local cloud is never touched.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from b2sdk.v2 import B2Api, InMemoryAccountInfo
from b2sdk.v2.exception import BadJson, BadRequest, DuplicateBucketName, interpret_b2_error
from localcloud_harness import free_port, raw_exchange, raw_request

from casera_localcloud.b2 import service

KEEP_BUCKET = "casera-keep"


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes

    def error(self) -> dict[str, object]:
        """The B2 error structure, checked for shape: exactly status, code and message."""
        assert self.content_type.startswith("application/json"), (self.content_type, self.body)
        payload = json.loads(self.body)
        assert set(payload) == {"status", "code", "message"}, payload
        assert payload["status"] == self.status
        assert isinstance(payload["code"], str) and payload["code"]
        assert isinstance(payload["message"], str) and payload["message"]
        assert "Traceback" not in payload["message"]
        return payload


@dataclass
class Emulator:
    port: int
    state_dir: Path
    account_id: str
    token: str
    bucket_id: str
    file_id: str

    def send(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None, token: bool = True) -> Answer:
        sent = {"Authorization": self.token} if token else {}
        sent.update(headers or {})
        return Answer(*raw_request(self.port, method, path, body, sent))

    def call(self, name: str, params: dict[str, object]) -> dict[str, object]:
        answer = self.send("POST", f"/b2api/v4/{name}", json.dumps(params).encode())
        assert answer.status == 200, answer
        return json.loads(answer.body)

    def snapshot(self) -> dict[str, object]:
        """Everything a bad request could have changed."""
        buckets = self.call("b2_list_buckets", {"accountId": self.account_id})["buckets"]
        files = {}
        for bucket in buckets:
            bucket_id = bucket["bucketId"]
            files[bucket_id] = (
                self.call("b2_list_file_versions", {"bucketId": bucket_id,
                                                    "maxFileCount": 10_000})["files"],
                self.call("b2_list_unfinished_large_files", {"bucketId": bucket_id})["files"])
        keys = self.call("b2_list_keys", {"accountId": self.account_id})["keys"]
        return {"buckets": buckets, "files": files, "keys": keys}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    state_dir = tmp_path_factory.mktemp("b2-bad-input")
    port = free_port()
    service.start(port, state_dir, show=False)
    try:
        key_id, key = service.master_credentials(state_dir)
        basic = base64.b64encode(f"{key_id}:{key}".encode()).decode()
        probe = Emulator(port, state_dir, "", "", "", "")
        auth = probe.send("GET", "/b2api/v4/b2_authorize_account",
                          headers={"Authorization": f"Basic {basic}"}, token=False)
        assert auth.status == 200, auth
        authorized = json.loads(auth.body)
        probe.account_id, probe.token = authorized["accountId"], authorized["authorizationToken"]
        bucket = probe.call("b2_create_bucket", {"accountId": probe.account_id,
                                                 "bucketName": KEEP_BUCKET,
                                                 "bucketType": "allPrivate"})
        probe.bucket_id = str(bucket["bucketId"])
        probe.file_id = str(upload(probe, b"keep me", "keep/me.txt")["fileId"])
        probe.call("b2_start_large_file", {"bucketId": probe.bucket_id,
                                           "fileName": "keep/large.bin",
                                           "contentType": "b2/x-auto"})
        yield probe
    finally:
        service.stop(state_dir)


def upload(emulator: Emulator, data: bytes, name: str,
           extra: dict[str, str] | None = None) -> dict[str, object]:
    target = emulator.call("b2_get_upload_url", {"bucketId": emulator.bucket_id})
    path = str(target["uploadUrl"]).split(str(emulator.port), 1)[1]
    headers = {"Authorization": str(target["authorizationToken"]), "X-Bz-File-Name": name,
               "Content-Type": "text/plain",
               "X-Bz-Content-Sha1": hashlib.sha1(data).hexdigest(), **(extra or {})}
    answer = emulator.send("POST", path, data, headers, token=False)
    return {"status": answer.status, **json.loads(answer.body)}


# (id, method, path, JSON body or raw bytes, status, code). Bodies are templates: "{account}",
# "{bucket}" and "{file}" are replaced by this module's account, bucket and file ids.
CASES = [
    # unknown paths
    ("unknown-call", "POST", "/b2api/v4/b2_no_such_call", {}, 404, "not_found"),
    ("unknown-path", "GET", "/nothing/here", None, 404, "not_found"),
    ("unknown-path-put", "PUT", "/nothing/here", None, 404, "not_found"),
    # wrong HTTP methods
    ("put-json-call", "PUT", "/b2api/v4/b2_create_bucket",
     {"accountId": "{account}", "bucketName": "casera-put", "bucketType": "allPrivate"},
     405, "method_not_allowed"),
    ("delete-json-call", "DELETE", "/b2api/v4/b2_delete_bucket",
     {"accountId": "{account}", "bucketId": "{bucket}"}, 405, "method_not_allowed"),
    ("patch-json-call", "PATCH", "/b2api/v4/b2_update_bucket",
     {"accountId": "{account}", "bucketId": "{bucket}", "bucketType": "allPublic"},
     405, "method_not_allowed"),
    ("options-json-call", "OPTIONS", "/b2api/v4/b2_list_buckets", None, 405,
     "method_not_allowed"),
    ("unknown-method", "BREW", "/b2api/v4/b2_list_buckets", None, 405, "method_not_allowed"),
    ("put-download", "PUT", f"/file/{KEEP_BUCKET}/keep/me.txt", b"overwrite", 405,
     "method_not_allowed"),
    # invalid JSON bodies
    ("truncated-json", "POST", "/b2api/v4/b2_create_bucket", b'{"accountId": ', 400,
     "bad_json"),
    ("not-utf8", "POST", "/b2api/v4/b2_create_bucket", b'{"bucketName": "\xff"}', 400,
     "bad_json"),
    ("json-array", "POST", "/b2api/v4/b2_create_bucket", b"[]", 400, "bad_json"),
    ("json-nan", "POST", "/b2api/v4/b2_update_bucket",
     b'{"accountId": "{account}", "bucketId": "{bucket}", "lifecycleRules": '
     b'[{"fileNamePrefix": "", "daysFromHidingToDeleting": NaN}]}', 400, "bad_json"),
    ("json-huge-number", "POST", "/b2api/v4/b2_list_file_names",
     b'{"bucketId": "{bucket}", "maxFileCount": 1e400}', 400, "bad_json"),
    ("json-deep", "POST", "/b2api/v4/b2_create_bucket", b"[" * 100_000, 400, "bad_json"),
    # missing required fields
    ("no-bucket-name", "POST", "/b2api/v4/b2_create_bucket",
     {"accountId": "{account}", "bucketType": "allPrivate"}, 400, "bad_request"),
    ("no-account-id", "POST", "/b2api/v4/b2_create_bucket",
     {"bucketName": "casera-noacct", "bucketType": "allPrivate"}, 400, "bad_request"),
    ("no-bucket-id", "POST", "/b2api/v4/b2_list_file_names", {}, 400, "bad_request"),
    ("no-key-name", "POST", "/b2api/v4/b2_create_key",
     {"accountId": "{account}", "capabilities": ["readFiles"]}, 400, "bad_request"),
    # wrong field types
    ("bucket-name-number", "POST", "/b2api/v4/b2_create_bucket",
     {"accountId": "{account}", "bucketName": 123456, "bucketType": "allPrivate"},
     400, "bad_request"),
    ("bucket-type-unknown", "POST", "/b2api/v4/b2_create_bucket",
     {"accountId": "{account}", "bucketName": "casera-type", "bucketType": "public"},
     400, "bad_request"),
    ("bucket-info-string", "POST", "/b2api/v4/b2_update_bucket",
     {"accountId": "{account}", "bucketId": "{bucket}", "bucketInfo": "x"}, 400,
     "bad_request"),
    ("lifecycle-not-list", "POST", "/b2api/v4/b2_update_bucket",
     {"accountId": "{account}", "bucketId": "{bucket}", "lifecycleRules": {"a": 1}},
     400, "bad_request"),
    ("lifecycle-prefix-number", "POST", "/b2api/v4/b2_update_bucket",
     {"accountId": "{account}", "bucketId": "{bucket}",
      "lifecycleRules": [{"fileNamePrefix": 5, "daysFromHidingToDeleting": 1}]},
     400, "bad_request"),
    ("lifecycle-unknown-field", "POST", "/b2api/v4/b2_create_bucket",
     {"accountId": "{account}", "bucketName": "casera-rules", "bucketType": "allPrivate",
      "lifecycleRules": [{"fileNamePrefix": "", "daysFromHidingToDelete": 1}]},
     400, "bad_request"),
    ("capabilities-string", "POST", "/b2api/v4/b2_create_key",
     {"accountId": "{account}", "keyName": "bad-caps", "capabilities": "readFiles"},
     400, "bad_request"),
    ("capability-unknown", "POST", "/b2api/v4/b2_create_key",
     {"accountId": "{account}", "keyName": "bad-caps", "capabilities": ["readEverything"]},
     400, "bad_request"),
    ("max-file-count-word", "POST", "/b2api/v4/b2_list_file_names",
     {"bucketId": "{bucket}", "maxFileCount": "ten"}, 400, "bad_request"),
    ("revision-bool", "POST", "/b2api/v4/b2_update_bucket",
     {"accountId": "{account}", "bucketId": "{bucket}", "ifRevisionIs": True}, 400,
     "bad_request"),
    # out-of-range values
    ("max-file-count-high", "POST", "/b2api/v4/b2_list_file_names",
     {"bucketId": "{bucket}", "maxFileCount": 10_001}, 400, "out_of_range"),
    ("max-version-count-negative", "GET",
     "/b2api/v4/b2_list_file_versions?bucketId={bucket}&maxFileCount=-1", None, 400,
     "out_of_range"),
    ("key-duration-zero", "POST", "/b2api/v4/b2_create_key",
     {"accountId": "{account}", "keyName": "zero", "capabilities": ["readFiles"],
      "validDurationInSeconds": 0}, 400, "bad_request"),
    ("lifecycle-days-zero", "POST", "/b2api/v4/b2_update_bucket",
     {"accountId": "{account}", "bucketId": "{bucket}",
      "lifecycleRules": [{"fileNamePrefix": "", "daysFromHidingToDeleting": 0}]},
     400, "bad_request"),
    ("bucket-name-short", "POST", "/b2api/v4/b2_create_bucket",
     {"accountId": "{account}", "bucketName": "short", "bucketType": "allPrivate"},
     400, "bad_request"),
    ("download-auth-too-long", "POST", "/b2api/v4/b2_get_download_authorization",
     {"bucketId": "{bucket}", "fileNamePrefix": "keep/",
      "validDurationInSeconds": 7 * 24 * 3600 + 1}, 400, "bad_request"),
    ("start-id-without-name", "POST", "/b2api/v4/b2_list_file_versions",
     {"bucketId": "{bucket}", "startFileId": "{file}"}, 400, "bad_request"),
    # unknown ids
    ("delete-unknown-bucket", "POST", "/b2api/v4/b2_delete_bucket",
     {"accountId": "{account}", "bucketId": "000000000000000000000000"}, 400,
     "bad_bucket_id"),
    ("update-unknown-bucket", "POST", "/b2api/v4/b2_update_bucket",
     {"accountId": "{account}", "bucketId": "nope", "bucketType": "allPublic"}, 400,
     "bad_bucket_id"),
    ("info-unknown-file", "POST", "/b2api/v4/b2_get_file_info", {"fileId": "4_zunknown"},
     404, "not_found"),
    ("delete-unknown-version", "POST", "/b2api/v4/b2_delete_file_version",
     {"fileId": "4_zunknown", "fileName": "keep/me.txt"}, 400, "file_not_present"),
    ("delete-version-wrong-name", "POST", "/b2api/v4/b2_delete_file_version",
     {"fileId": "{file}", "fileName": "keep/other.txt"}, 400, "file_not_present"),
    ("delete-unknown-key", "POST", "/b2api/v4/b2_delete_key",
     {"applicationKeyId": "000000000000000000000000"}, 400, "bad_request"),
    ("hide-unknown-file", "POST", "/b2api/v4/b2_hide_file",
     {"bucketId": "{bucket}", "fileName": "keep/never-uploaded"}, 400, "no_such_file"),
    ("download-unknown-id", "GET", "/b2api/v4/b2_download_file_by_id?fileId=4_zunknown",
     None, 404, "not_found"),
    ("download-unknown-name", "GET", f"/file/{KEEP_BUCKET}/keep/none.txt", None, 404,
     "not_found"),
    ("finish-unknown-large-file", "POST", "/b2api/v4/b2_finish_large_file",
     {"fileId": "4_zunknown", "partSha1Array": ["a", "b"]}, 400, "bad_request"),
    # state that already exists
    ("duplicate-bucket", "POST", "/b2api/v4/b2_create_bucket",
     {"accountId": "{account}", "bucketName": KEEP_BUCKET, "bucketType": "allPublic"},
     400, "duplicate_bucket_name"),
]


def render(template: object, emulator: Emulator) -> bytes | None:
    if template is None:
        return None
    raw = template if isinstance(template, bytes) else json.dumps(template).encode()
    return (raw.replace(b"{account}", emulator.account_id.encode())
            .replace(b"{bucket}", emulator.bucket_id.encode())
            .replace(b"{file}", emulator.file_id.encode()))


@pytest.mark.parametrize(("method", "path", "body", "status", "code"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_request_gets_b2_error_and_changes_nothing(emulator: Emulator, method: str,
                                                       path: str, body: object, status: int,
                                                       code: str) -> None:
    before = emulator.snapshot()
    rendered_path = render(path.encode(), emulator)
    assert rendered_path is not None
    answer = emulator.send(method, rendered_path.decode(), render(body, emulator))
    assert (answer.status, answer.error()["code"]) == (status, code), answer
    assert emulator.snapshot() == before


def test_head_refusal_has_status_but_no_body(emulator: Emulator) -> None:
    # HEAD answers carry no body (RFC 9110, 9.3.2): the status alone must say what is wrong.
    answer = emulator.send("HEAD", "/b2api/v4/b2_list_buckets")
    assert (answer.status, answer.body) == (405, b"")
    assert emulator.send("HEAD", f"/file/{KEEP_BUCKET}/keep/none.txt").status == 404


def test_bad_tokens_get_401(emulator: Emulator) -> None:
    before = emulator.snapshot()
    forged = emulator.send("POST", "/b2api/v4/b2_create_bucket",
                           json.dumps({"accountId": emulator.account_id,
                                       "bucketName": "casera-forged",
                                       "bucketType": "allPrivate"}).encode(),
                           headers={"Authorization": "4_forged-token"})
    assert (forged.status, forged.error()["code"]) == (401, "bad_auth_token")
    bad_basic = emulator.send("GET", "/b2api/v4/b2_authorize_account",
                              headers={"Authorization": "Basic !!not-base64!!"}, token=False)
    assert (bad_basic.status, bad_basic.error()["code"]) == (401, "bad_auth_token")
    assert emulator.snapshot() == before


def test_bad_uploads_are_refused_and_store_nothing(emulator: Emulator) -> None:
    before = emulator.snapshot()
    blobs_before = sorted((emulator.state_dir / "blobs").iterdir())
    target = emulator.call("b2_get_upload_url", {"bucketId": emulator.bucket_id})
    path = str(target["uploadUrl"]).split(str(emulator.port), 1)[1]
    token = {"Authorization": str(target["authorizationToken"])}
    # An upload URL is POST only.
    got = emulator.send("GET", path, headers=token, token=False)
    assert (got.status, got.error()["code"]) == (405, "method_not_allowed")
    # Out-of-range or malformed headers: these answered 500 before.
    for extra, code in [({"X-Bz-Custom-Upload-Timestamp": "soon"}, "bad_request"),
                        ({"X-Bz-Custom-Upload-Timestamp": "-1"}, "bad_request"),
                        ({"X-Bz-Content-Sha1": "0" * 40}, "bad_request"),
                        ({"X-Bz-File-Name": "/leading-slash"}, "bad_request"),
                        ({"X-Bz-File-Name": ""}, "bad_request")]:
        answer = upload(emulator, b"payload", "keep/refused.txt", extra)
        assert (answer["status"], answer["code"]) == (400, code), (extra, answer)
    assert emulator.snapshot() == before
    # Nor a byte on disk: no new blob, no temp file left by a refused body.
    assert sorted((emulator.state_dir / "blobs").iterdir()) == blobs_before
    assert list((emulator.state_dir / "tmp").iterdir()) == []


def test_malformed_http_gets_json_not_html(emulator: Emulator) -> None:
    # http.server's own refusals were HTML pages; a header line over its 64 KiB limit is one.
    raw = raw_exchange(emulator.port, b"GET /b2api/v4/b2_list_buckets HTTP/1.1\r\nHost: x\r\n"
                       b"X-Long: " + b"a" * 70_000 + b"\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert b"application/json" in head
    payload = json.loads(body)
    assert payload["status"] == 400 and payload["code"] == "bad_request"


def test_b2sdk_sees_the_documented_exceptions(emulator: Emulator) -> None:
    """What a b2sdk caller gets for the same answers: its mapping of (status, code) in
    b2sdk/_internal/exception.py: interpret_b2_error."""
    api = B2Api(InMemoryAccountInfo())
    api.authorize_account(service.endpoint(emulator.port),
                          *service.master_credentials(emulator.state_dir))
    before = emulator.snapshot()
    with pytest.raises(DuplicateBucketName):
        api.create_bucket(KEEP_BUCKET, "allPrivate")
    raw = api.session.raw_api
    url, token = api.account_info.get_api_url(), api.account_info.get_account_auth_token()
    # out_of_range is documented by B2 but unknown to b2sdk, which warns and raises
    # BadRequest with the code.
    with pytest.warns(UserWarning, match="out_of_range"), \
            pytest.raises(BadRequest) as out_of_range:
        raw.list_file_names(url, token, emulator.bucket_id, max_file_count=10_001)
    assert out_of_range.value.code == "out_of_range"
    # b2sdk never sends bad JSON itself, so its reading of the emulator's answer is checked
    # through the same function its HTTP layer calls.
    bad = emulator.send("POST", "/b2api/v4/b2_list_buckets", b"{")
    error = bad.error()
    assert isinstance(interpret_b2_error(bad.status, str(error["code"]), str(error["message"]),
                                         {}), BadJson)
    assert emulator.snapshot() == before


def test_zero_file_count_means_the_default(emulator: Emulator) -> None:
    # "Passing in 0 means to use the default of 100": valid input, not out of range.
    listed = emulator.call("b2_list_file_names", {"bucketId": emulator.bucket_id,
                                                  "maxFileCount": 0})
    assert [f["fileName"] for f in listed["files"]] == ["keep/me.txt"]
