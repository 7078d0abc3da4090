"""File calls: listing, hiding and deleting versions, uploads (small and large) and
downloads, with the download-authorization tokens behind signed URLs."""

from __future__ import annotations

import hashlib
import mimetypes
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from casera_localcloud.b2 import auth, errors
from casera_localcloud.b2.auth import Principal
from casera_localcloud.b2.calls import (
    MAX_PART_NUMBER,
    Call,
    CallsBase,
    Readable,
    check_file_name,
    dict_field,
    int_field,
    list_field,
    str_field,
)
from casera_localcloud.b2.shapes import file_dict
from casera_localcloud.b2.store import Bucket, FileVersion

MAX_DOWNLOAD_DURATION_S = 7 * 24 * 3600
# maxFileCount of the listings: "The default value is 100, and the maximum is 10000. Passing
# in 0 means to use the default of 100"; a value outside is 400 out_of_range
# (https://www.backblaze.com/apidocs/b2-list-file-versions, b2-list-file-names).
DEFAULT_FILE_COUNT, MAX_FILE_COUNT = 100, 10_000
FILE_INFO_PREFIX = "x-bz-info-"
HIDE_MARKER_TYPE = "application/x-bz-hide-marker"
# b2_copy_file makes files below 5 GB; bigger ones are copied in parts (b2_copy_part), and B2
# says so with 400 source_too_large "Copy source too big: <size>", the exact text b2sdk
# parses to switch to parts (b2sdk/_internal/exception.py, COPY_SOURCE_TOO_BIG_ERROR_MESSAGE_RE).
MAX_COPY_BYTES = 5 * 1000**3
METADATA_DIRECTIVES = ("COPY", "REPLACE")


def _copy_hashed(src: BinaryIO, out: BinaryIO, size: int, digest: hashlib._Hash,
                 short: str) -> None:
    """``size`` bytes from ``src`` to ``out`` in 1 MiB chunks, fed to ``digest``; a source
    that ends first is the client's error (400, ``short``)."""
    remaining = size
    while remaining:
        chunk = src.read(min(remaining, 1 << 20))
        if not chunk:
            raise errors.bad_request(short)
        digest.update(chunk)
        out.write(chunk)
        remaining -= len(chunk)

class FileCalls(CallsBase):
    # listing and file info --------------------------------------------------------------

    def _listing(self, call: Call) -> tuple[Bucket, str, int]:
        """The bucket, name prefix and page size of a listing call, once the key may list
        there (a key restricted to a name prefix only lists under it)."""
        bucket = self._bucket(str_field(call.params, "bucketId"))
        prefix = str_field(call.params, "prefix", required=False) or ""
        auth.require(call.principal, "listFiles", bucket.bucket_id,
                     prefix=prefix if call.principal.key.name_prefix else None)
        count = int_field(call.params, "maxFileCount", DEFAULT_FILE_COUNT, 0, MAX_FILE_COUNT,
                          range_code="out_of_range") or DEFAULT_FILE_COUNT
        return bucket, prefix, count

    def b2_list_file_names(self, call: Call) -> dict[str, object]:
        bucket, prefix, count = self._listing(call)
        start = str_field(call.params, "startFileName", required=False) or ""
        visible = [v for v in self.store.latest_versions(bucket.bucket_id, prefix, start)
                   if v.action == "upload"]
        following = visible[count].name if len(visible) > count else None
        account = call.principal.account_id
        return {"files": [file_dict(v, account) for v in visible[:count]],
                "nextFileName": following}

    def b2_list_file_versions(self, call: Call) -> dict[str, object]:
        bucket, prefix, count = self._listing(call)
        start_name = str_field(call.params, "startFileName", required=False) or ""
        start_id = str_field(call.params, "startFileId", required=False)
        if start_id and not start_name:
            # "startFileName must also be provided if startFileId is specified"
            raise errors.bad_request("startFileId needs startFileName")
        versions = self.store.versions(bucket.bucket_id, prefix, start_name)
        if start_id:
            # Resume exactly where the previous page stopped within the same name.
            ids = [v.file_id for v in versions]
            if start_id in ids:
                versions = versions[ids.index(start_id):]
        following = versions[count] if len(versions) > count else None
        account = call.principal.account_id
        return {"files": [file_dict(v, account) for v in versions[:count]],
                "nextFileName": following.name if following else None,
                "nextFileId": following.file_id if following else None}

    def b2_get_file_info(self, call: Call) -> dict[str, object]:
        version = self._file(str_field(call.params, "fileId"))
        auth.require(call.principal, "readFiles", version.bucket_id, version.name)
        return file_dict(version, call.principal.account_id)

    # hide and delete --------------------------------------------------------------------

    def b2_hide_file(self, call: Call) -> dict[str, object]:
        bucket = self._bucket(str_field(call.params, "bucketId"))
        name = str_field(call.params, "fileName") or ""
        auth.require(call.principal, "writeFiles", bucket.bucket_id, name)
        latest = [v for v in self.store.latest_versions(bucket.bucket_id, name)
                  if v.name == name]
        if not latest:
            raise errors.bad_request(f"File not present: {name}", code="no_such_file")
        if latest[0].action == "hide":
            raise errors.bad_request(f"File already hidden: {name}", code="already_hidden")
        marker = self.store.add_file(bucket.bucket_id, name, "hide", HIDE_MARKER_TYPE, None,
                                     0, {})
        return file_dict(marker, call.principal.account_id)

    def b2_delete_file_version(self, call: Call) -> dict[str, object]:
        file_id = str_field(call.params, "fileId")
        name = str_field(call.params, "fileName")
        version = self.store.get_file(file_id or "")
        if version is None or version.name != name:
            raise errors.bad_request(f"File not present: {name} {file_id}",
                                     code="file_not_present")
        auth.require(call.principal, "deleteFiles", version.bucket_id, version.name)
        self.store.delete_file(version.file_id)
        return {"fileId": version.file_id, "fileName": version.name}

    # server-side copy -------------------------------------------------------------------

    def b2_copy_file(self, call: Call) -> dict[str, object]:
        """A new file (the newest version of ``fileName``) made from an existing version's
        bytes, as https://www.backblaze.com/apidocs/b2-copy-file describes it: the token
        needs writeFiles where the copy goes and readFiles on a private source; optional
        ``destinationBucketId`` (same account), ``range`` (``bytes=a-b``, inclusive) and
        ``metadataDirective``: COPY (the default) keeps the source's contentType and
        fileInfo and refuses either being given; REPLACE takes them from the call and needs
        contentType. Both refusals are 400s."""
        source = self.store.get_file(str_field(call.params, "sourceFileId") or "")
        name = str_field(call.params, "fileName") or ""
        check_file_name(name)
        destination_id = str_field(call.params, "destinationBucketId", required=False)
        if source is None or source.action != "upload":
            # Checked before the key's rights on it, as b2_delete_file_version does here.
            raise errors.bad_request(
                f"Source file not present: {call.params.get('sourceFileId')}",
                code="file_not_present")
        source_bucket = self._bucket(source.bucket_id)
        destination = self._bucket(destination_id) if destination_id else source_bucket
        if source_bucket.bucket_type != "allPublic":
            auth.require(call.principal, "readFiles", source.bucket_id, source.name)
        auth.require(call.principal, "writeFiles", destination.bucket_id, name)
        directive = str_field(call.params, "metadataDirective", required=False) or "COPY"
        if directive not in METADATA_DIRECTIVES:
            raise errors.bad_request(f"metadataDirective must be one of "
                                     f"{', '.join(METADATA_DIRECTIVES)}, not {directive!r}")
        content_type = str_field(call.params, "contentType", required=False)
        info = dict_field(call.params, "fileInfo")
        if directive == "COPY" and (content_type is not None or info is not None):
            raise errors.bad_request("contentType and fileInfo must not be set when "
                                     "metadataDirective is COPY")
        if directive == "REPLACE" and content_type is None:
            raise errors.bad_request("contentType is required when metadataDirective is "
                                     "REPLACE")
        if info is not None and len(info) > 10:
            raise errors.bad_request("at most 10 fileInfo entries are allowed")
        first, last = self._copy_range(str_field(call.params, "range", required=False),
                                       source.size)
        if last - first + 1 > MAX_COPY_BYTES:
            raise errors.bad_request(f"Copy source too big: {last - first + 1}",
                                     code="source_too_large")
        if directive == "COPY":
            content_type, info = source.content_type, dict(source.info)
        elif content_type == "b2/x-auto":
            content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        blob, size, sha1 = self._copy_bytes(source, first, last)
        version = self.store.add_file(destination.bucket_id, name, "upload", content_type,
                                      sha1, size, info or {}, blob)
        answer = file_dict(version, call.principal.account_id)
        # The answer to the copy itself says "copy"; listings show the new version as an
        # upload, as B2's do.
        answer["action"] = "copy"
        return answer

    @staticmethod
    def _copy_range(text: str | None, size: int) -> tuple[int, int]:
        """(first, last) byte, inclusive, of an HTTP-style ``bytes=a-b`` range (what b2sdk
        sends); the whole file without one."""
        if not text:
            return 0, size - 1
        spec = text.strip()
        unit, _, span = spec.partition("=")
        first_text, dash, last_text = span.partition("-")
        if unit != "bytes" or not dash or not first_text.isdigit() or not last_text.isdigit():
            raise errors.bad_request(f"range must be bytes=<first>-<last>, not {text!r}")
        first, last = int(first_text), int(last_text)
        if first > last or last >= size:
            raise errors.bad_request(f"range {text} is outside the source's {size} bytes")
        return first, last

    def _copy_bytes(self, source: FileVersion, first: int, last: int) -> tuple[Path, int, str]:
        digest = hashlib.sha1()  # noqa: S324 - B2's own integrity check, not security
        path = self.store.temp_path()
        size = max(0, last - first + 1)
        try:
            with self.store.blob_path(source.file_id).open("rb") as src, path.open("wb") as out:
                src.seek(first)
                _copy_hashed(src, out, size, digest, "source ended early")
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path, size, digest.hexdigest()

    # uploads ----------------------------------------------------------------------------

    def b2_get_upload_url(self, call: Call) -> dict[str, object]:
        bucket = self._bucket(str_field(call.params, "bucketId"))
        auth.require(call.principal, "writeFiles", bucket.bucket_id)
        token = self.store.issue_token("upload", call.principal.key.key_id,
                                       auth.UPLOAD_TOKEN_TTL_S, bucket_id=bucket.bucket_id)
        return {"bucketId": bucket.bucket_id, "authorizationToken": token.token,
                "uploadUrl": f"{call.base_url}/b2api/v4/b2_upload_file/{bucket.bucket_id}"}

    def upload_file(self, principal: Principal, bucket_id: str, headers: Mapping[str, str],
                    body: Readable, length: int) -> dict[str, object]:
        """The upload URL's POST: the file is the body, its metadata are headers."""
        info = {k[len(FILE_INFO_PREFIX):]: urllib.parse.unquote_plus(v)  # names keep their case
                for k, v in headers.items() if k.lower().startswith(FILE_INFO_PREFIX)}
        headers = {k.lower(): v for k, v in headers.items()}
        if principal.token.bucket_id != bucket_id:
            raise errors.unauthorized("upload token belongs to another bucket")
        bucket = self._bucket(bucket_id)
        name = urllib.parse.unquote_plus(headers.get("x-bz-file-name") or "")
        check_file_name(name)
        auth.require(principal, "writeFiles", bucket.bucket_id, name)
        if len(info) > 10:
            raise errors.bad_request("at most 10 X-Bz-Info-* headers are allowed")
        content_type = headers.get("content-type") or "b2/x-auto"
        if content_type == "b2/x-auto":
            content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        stamp = None  # checked before the body is stored, so a refusal leaves no blob behind
        if headers.get("x-bz-custom-upload-timestamp") is not None:
            stamp = int_field(headers, "x-bz-custom-upload-timestamp", 0, 0, 2**62)
        blob, size, sha1 = self._receive(body, length, headers.get("x-bz-content-sha1"))
        version = self.store.add_file(bucket.bucket_id, name, "upload", content_type, sha1,
                                      size, info, blob, stamp)
        return file_dict(version, principal.account_id)

    def _receive(self, body: Readable, length: int, claimed: str | None
                 ) -> tuple[Path, int, str]:
        """Stream a body to a temp file, checking its SHA-1 the ways b2sdk sends it."""
        claimed = (claimed or "").lower()
        if not claimed:
            raise errors.bad_request("X-Bz-Content-Sha1 header is missing")
        at_end = claimed == "hex_digits_at_end"  # b2sdk appends the digest to the body
        size = length - 40 if at_end else length
        if size < 0:
            raise errors.bad_request("body is shorter than its trailing SHA-1")
        digest = hashlib.sha1()  # noqa: S324 - B2's own integrity check, not security
        path = self.store.temp_path()
        try:
            with path.open("wb") as out:
                _copy_hashed(body, out, size, digest, "body ended before Content-Length")
            if at_end:
                claimed = body.read(40).decode("ascii", "replace").lower()
            actual = digest.hexdigest()
            if claimed not in ("do_not_verify", actual):
                raise errors.bad_request("Sha1 did not match data received")
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path, size, actual

    # large files ------------------------------------------------------------------------

    def b2_start_large_file(self, call: Call) -> dict[str, object]:
        bucket = self._bucket(str_field(call.params, "bucketId"))
        name = str_field(call.params, "fileName") or ""
        check_file_name(name)
        auth.require(call.principal, "writeFiles", bucket.bucket_id, name)
        content_type = str_field(call.params, "contentType", required=False) or "b2/x-auto"
        if content_type == "b2/x-auto":
            content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        info = dict_field(call.params, "fileInfo") or {}
        version = self.store.add_file(bucket.bucket_id, name, "start", content_type, None, 0,
                                      info)
        return file_dict(version, call.principal.account_id)

    def _unfinished(self, call: Call, capability: str = "writeFiles") -> FileVersion:
        version = self.store.get_file(str_field(call.params, "fileId") or "")
        if version is None or version.action != "start":
            raise errors.bad_request("No active upload for this fileId")
        auth.require(call.principal, capability, version.bucket_id, version.name)
        return version

    def b2_get_upload_part_url(self, call: Call) -> dict[str, object]:
        version = self._unfinished(call)
        token = self.store.issue_token("part", call.principal.key.key_id,
                                       auth.UPLOAD_TOKEN_TTL_S, bucket_id=version.bucket_id,
                                       file_id=version.file_id)
        return {"fileId": version.file_id, "authorizationToken": token.token,
                "uploadUrl": f"{call.base_url}/b2api/v4/b2_upload_part/{version.file_id}"}

    def upload_part(self, principal: Principal, file_id: str, headers: Mapping[str, str],
                    body: Readable, length: int) -> dict[str, object]:
        if principal.token.file_id != file_id:
            raise errors.unauthorized("upload token belongs to another large file")
        headers = {k.lower(): v for k, v in headers.items()}
        version = self.store.get_file(file_id)
        if version is None or version.action != "start":
            raise errors.bad_request("No active upload for this fileId")
        auth.require(principal, "writeFiles", version.bucket_id, version.name)
        number = int_field(headers, "x-bz-part-number", 0, 1, MAX_PART_NUMBER)
        blob, size, sha1 = self._receive(body, length, headers.get("x-bz-content-sha1"))
        part = self.store.put_part(file_id, number, size, sha1, blob)
        return {"fileId": file_id, "partNumber": number, "contentLength": size,
                "contentSha1": sha1, "contentMd5": None, "uploadTimestamp": part.upload_ms,
                "serverSideEncryption": {"mode": "none"}}

    def b2_list_parts(self, call: Call) -> dict[str, object]:
        version = self._unfinished(call)
        start = int_field(call.params, "startPartNumber", 1, 1, MAX_PART_NUMBER)
        count = int_field(call.params, "maxPartCount", 100, 1, 1000)
        parts = [p for p in self.store.parts(version.file_id) if p.part_number >= start]
        following = parts[count].part_number if len(parts) > count else None
        return {
            "parts": [{"fileId": p.file_id, "partNumber": p.part_number,
                       "contentLength": p.size, "contentSha1": p.sha1, "contentMd5": None,
                       "uploadTimestamp": p.upload_ms} for p in parts[:count]],
            "nextPartNumber": following,
        }

    def b2_finish_large_file(self, call: Call) -> dict[str, object]:
        version = self._unfinished(call)
        wanted = list_field(call.params, "partSha1Array") or []
        if len(wanted) < 2:
            raise errors.bad_request("large files must have at least 2 parts")
        parts = {p.part_number: p for p in self.store.parts(version.file_id)}
        for number, sha1 in enumerate(wanted, start=1):
            if number not in parts:
                raise errors.bad_request(f"Part number {number} has not been uploaded",
                                         code="missing_part")
            if parts[number].sha1 != str(sha1).lower():
                raise errors.bad_request(f"Sha1 of part {number} does not match",
                                         code="part_sha1_mismatch")
            if number < len(wanted) and parts[number].size < \
                    self.limits.absolute_minimum_part_size:
                raise errors.bad_request(
                    f"Part number {number} is smaller than the minimum part size "
                    f"({self.limits.absolute_minimum_part_size} bytes)")
        blob = self.store.temp_path()
        size = 0
        with blob.open("wb") as out:
            for number in range(1, len(wanted) + 1):
                with self.store.part_path(version.file_id, number).open("rb") as part:
                    while chunk := part.read(1 << 20):
                        out.write(chunk)
                        size += len(chunk)
        finished = self.store.finish_large_file(version.file_id, blob, size)
        return file_dict(finished, call.principal.account_id)

    def b2_cancel_large_file(self, call: Call) -> dict[str, object]:
        version = self._unfinished(call)
        self.store.delete_file(version.file_id)
        return {"fileId": version.file_id, "accountId": call.principal.account_id,
                "bucketId": version.bucket_id, "fileName": version.name}

    def b2_list_unfinished_large_files(self, call: Call) -> dict[str, object]:
        bucket = self._bucket(str_field(call.params, "bucketId"))
        prefix = str_field(call.params, "namePrefix", required=False) or ""
        auth.require(call.principal, "listFiles", bucket.bucket_id,
                     prefix=prefix if call.principal.key.name_prefix else None)
        count = int_field(call.params, "maxFileCount", 100, 1, 100)
        start_id = str_field(call.params, "startFileId", required=False)
        unfinished = sorted(self.store.versions(bucket.bucket_id, prefix, "", ("start",)),
                            key=lambda v: v.seq)
        if start_id:
            ids = [v.file_id for v in unfinished]
            unfinished = unfinished[ids.index(start_id):] if start_id in ids else []
        following = unfinished[count].file_id if len(unfinished) > count else None
        account = call.principal.account_id
        return {"files": [file_dict(v, account) for v in unfinished[:count]],
                "nextFileId": following}

    # downloads --------------------------------------------------------------------------

    def b2_get_download_authorization(self, call: Call) -> dict[str, object]:
        bucket = self._bucket(str_field(call.params, "bucketId"))
        prefix = str_field(call.params, "fileNamePrefix") or ""
        auth.require(call.principal, "shareFiles", bucket.bucket_id, prefix=prefix)
        seconds = int_field(call.params, "validDurationInSeconds", 0, 1, MAX_DOWNLOAD_DURATION_S)
        token = self.store.issue_token("download", call.principal.key.key_id, seconds,
                                       bucket_id=bucket.bucket_id, prefix=prefix)
        return {"bucketId": bucket.bucket_id, "fileNamePrefix": prefix,
                "authorizationToken": token.token}

    def _may_read(self, token_text: str | None, bucket: Bucket, file_name: str) -> None:
        """Raise unless this request may read the name: public bucket, or a valid token.

        Checked before "not found" is answered, so a key cannot probe names it may not read.
        """
        if bucket.bucket_type == "allPublic" and not token_text:
            return
        principal = auth.authenticate(self.store, token_text, ("account", "download"))
        auth.may_download(principal, bucket.bucket_id, file_name)

    def find_by_name(self, token_text: str | None, bucket_name: str,
                     file_name: str) -> FileVersion:
        bucket = self.store.get_bucket_by_name(bucket_name)
        if bucket is None:
            raise errors.not_found(f"bucket {bucket_name} does not exist")
        self._may_read(token_text, bucket, file_name)
        latest = [v for v in self.store.latest_versions(bucket.bucket_id, file_name)
                  if v.name == file_name]
        if not latest or latest[0].action != "upload":  # never uploaded, or hidden
            raise errors.not_found(f"File with such name does not exist: {file_name}")
        return latest[0]

    def find_by_id(self, token_text: str | None, file_id: str) -> FileVersion:
        version = self.store.get_file(file_id)
        if version is None or version.action != "upload":
            auth.authenticate(self.store, token_text, ("account", "download"))
            raise errors.not_found(f"File with such id does not exist: {file_id}")
        self._may_read(token_text, self._bucket(version.bucket_id), version.name)
        return version
