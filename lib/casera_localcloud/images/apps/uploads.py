"""The api's uploads: small files written to and read from the uploads bucket with the
``b2_uploads_key`` the task has mounted, through B2's native API (v2: the answer has the
storage fields and ``allowed`` at its top level). What a probe needs to see a B2 key
rotation from the app's side: an upload or a download that fails while keys change is a
failed request.

Plain ``urllib``: the api image has no b2sdk (Debian's python3-b2sdk would rebuild every app
image for two calls). The calls and headers are Backblaze's:
https://www.backblaze.com/apidocs/b2-authorize-account, b2-get-upload-url, b2-upload-file,
b2-download-file-by-name.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .common import read_secret

# Names the api accepts: one path segment, stored under PREFIX (a probe's files, not users').
NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
PREFIX = "api-uploads/"
MAX_BYTES = 64 * 1024
PRODUCTION = "https://api.backblazeb2.com"
TIMEOUT_S = 10

_lock = threading.Lock()
_session: dict[str, Any] = {}


class UploadError(RuntimeError):
    """B2 refused or could not be reached; ``status`` is B2's HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def _realm() -> str:
    realm = os.environ.get("B2_REALM", "production")
    return PRODUCTION if realm == "production" else realm.rstrip("/")


def _call(request: urllib.request.Request) -> bytes:
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:  # noqa: S310
            return answer.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()[:200].decode(errors="replace")
        raise UploadError(f"B2 answered {exc.code}: {body}", exc.code) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise UploadError(f"B2 unreachable: {exc}") from exc


def _authorize() -> dict[str, Any]:
    """The task's key authorized once (and again after B2 says the token expired). Its key
    id and key are read from the mounted secrets each time: a task never sees a new version,
    but a re-authorization after a refused token must not reuse a stale value either."""
    key_id, _ = read_secret("b2_uploads_key_id")
    key, _ = read_secret("b2_uploads_key")
    if not key_id or not key:
        raise UploadError("secrets b2_uploads_key_id / b2_uploads_key are not mounted")
    basic = base64.b64encode(f"{key_id}:{key}".encode()).decode()
    answer = json.loads(_call(urllib.request.Request(
        f"{_realm()}/b2api/v2/b2_authorize_account",
        headers={"Authorization": f"Basic {basic}"})))
    allowed = answer.get("allowed") or {}
    if not allowed.get("bucketId"):
        raise UploadError("the uploads key is not restricted to a bucket; refusing to use it")
    return {"api": answer["apiUrl"], "download": answer["downloadUrl"],
            "token": answer["authorizationToken"], "bucket_id": allowed["bucketId"],
            "bucket": allowed["bucketName"]}


def _with_session(call: Any) -> Any:
    """``call(session)`` with the cached authorization; once more with a new one when B2
    answers 401 (an expired token)."""
    with _lock:
        if not _session:
            _session.update(_authorize())
        session = dict(_session)
    try:
        return call(session)
    except UploadError as exc:
        if exc.status != 401:
            raise
    with _lock:
        _session.clear()
        _session.update(_authorize())
        session = dict(_session)
    return call(session)


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise ValueError("an upload name is 1-64 letters, digits, '.', '_' or '-'")
    return PREFIX + name


def put(name: str, data: bytes) -> dict[str, Any]:
    """Upload ``data`` as ``api-uploads/<name>``: a new version if the name exists."""
    file_name = check_name(name)
    if len(data) > MAX_BYTES:
        raise ValueError(f"an upload is at most {MAX_BYTES} bytes, got {len(data)}")
    sha1 = hashlib.sha1(data).hexdigest()  # noqa: S324 - B2's content checksum is SHA-1

    def upload(session: dict[str, Any]) -> dict[str, Any]:
        target = json.loads(_call(urllib.request.Request(
            f"{session['api']}/b2api/v2/b2_get_upload_url",
            data=json.dumps({"bucketId": session["bucket_id"]}).encode(),
            headers={"Authorization": session["token"]}, method="POST")))
        made = json.loads(_call(urllib.request.Request(
            target["uploadUrl"], data=data, method="POST", headers={
                "Authorization": target["authorizationToken"],
                "X-Bz-File-Name": urllib.parse.quote(file_name, safe="/"),
                "Content-Type": "application/octet-stream",
                "Content-Length": str(len(data)), "X-Bz-Content-Sha1": sha1})))
        return {"name": name, "size": len(data), "sha1": sha1, "file_id": made["fileId"]}

    return _with_session(upload)


def get(name: str) -> bytes:
    """The newest version of ``api-uploads/<name>``; UploadError(404) when there is none."""
    file_name = check_name(name)

    def download(session: dict[str, Any]) -> bytes:
        return _call(urllib.request.Request(
            f"{session['download']}/file/{urllib.parse.quote(session['bucket'])}/"
            f"{urllib.parse.quote(file_name, safe='/')}",
            headers={"Authorization": session["token"]}))

    return _with_session(download)
