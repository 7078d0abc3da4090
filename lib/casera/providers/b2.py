"""Backblaze B2 through ``b2sdk``. ``realm`` is 'production' for Backblaze or the base URL of
an emulator: b2sdk uses an unknown realm as the base URL
(b2sdk/_internal/session.py: ``realm_url = REALM_URLS.get(realm, realm)``).

Reads return plain data (:class:`BucketInfo`, :class:`KeyInfo`, :class:`Grant`) or None;
writes do one call each, except :func:`create_bucket`, which converges (create-or-get). Every
b2sdk error leaves this module as :class:`casera.errors.ProviderError` (system ``b2``).
Deciding what to create, replace or refuse is the steps' job (``casera.steps.storage``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from b2sdk.v2 import B2Api, BaseApplicationKey, Bucket, InMemoryAccountInfo
from b2sdk.v2.exception import B2Error, DuplicateBucketName, MaxRetriesExceeded

from casera.errors import ProviderError
from casera.operator_secrets import Secret

__all__ = ["B2Api", "BucketInfo", "CreatedKey", "FileInfo", "Grant", "KeyInfo", "NAME_TAKEN"]

# B2's code for a bucket name used by any account (names are global):
# https://www.backblaze.com/apidocs/b2-create-bucket ("duplicate_bucket_name", HTTP 400),
# which b2sdk raises as DuplicateBucketName (b2sdk/_internal/exception.py interpret_b2_error).
NAME_TAKEN = "duplicate_bucket_name"


@dataclass(frozen=True)
class BucketInfo:
    name: str
    bucket_id: str
    bucket_type: str
    lifecycle_rules: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class KeyInfo:
    """An application key as listing shows it: B2 never shows a key's secret after creation."""

    name: str
    key_id: str
    capabilities: tuple[str, ...]
    bucket_id: str | None
    name_prefix: str | None


@dataclass(frozen=True)
class CreatedKey:
    info: KeyInfo
    secret: Secret


@dataclass(frozen=True)
class Grant:
    """What B2 granted a key when it authorized it: its real scope, whatever a listing says
    (b2_authorize_account's ``allowed``; a None bucket means every bucket)."""

    capabilities: tuple[str, ...]
    bucket_id: str | None
    bucket_name: str | None
    name_prefix: str | None = None


@contextmanager
def _mapped(what: str) -> Iterator[None]:
    """b2sdk's errors (and the transport's) as the project's ProviderError."""
    try:
        yield
    except ProviderError:
        raise
    except DuplicateBucketName as exc:
        raise ProviderError("b2", f"{what}: {exc}", code=NAME_TAKEN) from exc
    except B2Error as exc:
        raise ProviderError("b2", f"{what}: {type(exc).__name__}: {exc}",
                            code=getattr(exc, "code", None) or type(exc).__name__,
                            details={"status": getattr(exc, "status", None)}) from exc
    except requests.RequestException as exc:
        raise ProviderError("b2", f"{what}: {type(exc).__name__}: {exc}",
                            code=type(exc).__name__) from exc


def authorize(realm: str, key_id: Secret | str, key: Secret) -> B2Api:
    plain_id = key_id.reveal() if isinstance(key_id, Secret) else key_id
    api = B2Api(InMemoryAccountInfo())
    # The key id is listed by B2 and shown in plans; the secret never enters a message.
    with _mapped(f"authorize key {plain_id}"):
        api.authorize_account(realm, plain_id, key.reveal())
    return api


def _bucket_info(bucket: Bucket) -> BucketInfo:
    return BucketInfo(name=str(bucket.name), bucket_id=str(bucket.id_),
                      bucket_type=str(bucket.type_),
                      lifecycle_rules=tuple(dict(r) for r in bucket.lifecycle_rules or ()))


def get_bucket(api: B2Api, name: str) -> BucketInfo | None:
    with _mapped(f"list bucket {name}"):
        found = api.list_buckets(bucket_name=name)
    return _bucket_info(found[0]) if found else None


def create_bucket(api: B2Api, name: str, bucket_type: str,
                  lifecycle_rules: list[dict[str, Any]] | None = None) -> BucketInfo:
    """Create the bucket, or find it made: a retried create of ours (the first answer lost)
    is refused as a duplicate and shows up on re-read. A name another account holds stays
    a ProviderError with code :data:`NAME_TAKEN`."""
    try:
        with _mapped(f"create bucket {name}"):
            return _bucket_info(api.create_bucket(name, bucket_type,
                                                  lifecycle_rules=lifecycle_rules or None))
    except ProviderError as exc:
        if exc.code != NAME_TAKEN:
            raise
        found = get_bucket(api, name)
        if found is None:
            raise ProviderError("b2", f"bucket name {name} is taken by another B2 account",
                                code=NAME_TAKEN) from None
        return found


def set_bucket_type(api: B2Api, bucket_id: str, bucket_type: str) -> BucketInfo:
    with _mapped(f"update bucket {bucket_id}"):
        bucket = api.BUCKET_CLASS(api, bucket_id)
        return _bucket_info(bucket.update(bucket_type=bucket_type))


def set_lifecycle_rules(api: B2Api, bucket_id: str, rules: list[dict[str, Any]]) -> BucketInfo:
    with _mapped(f"set lifecycle rules of bucket {bucket_id}"):
        bucket = api.BUCKET_CLASS(api, bucket_id)
        return _bucket_info(bucket.update(lifecycle_rules=rules))


def _key_info(key: BaseApplicationKey) -> KeyInfo:
    return KeyInfo(name=str(key.key_name), key_id=str(key.id_),
                   capabilities=tuple(key.capabilities), bucket_id=key.bucket_id,
                   name_prefix=key.name_prefix)


def list_keys(api: B2Api) -> list[KeyInfo]:
    with _mapped("list application keys"):
        return [_key_info(key) for key in api.list_keys()]


def create_key(api: B2Api, name: str, capabilities: list[str], bucket_id: str,
               name_prefix: str | None = None) -> CreatedKey:
    with _mapped(f"create application key {name}"):
        created = api.create_key(capabilities, name, bucket_id=bucket_id,
                                 name_prefix=name_prefix)
    return CreatedKey(_key_info(created), Secret(f"b2 key {name}", created.application_key))


def delete_key(api: B2Api, key_id: str) -> None:
    with _mapped(f"delete application key {key_id}"):
        api.delete_key_by_id(key_id)


def granted(api: B2Api) -> Grant:
    """What the key this ``api`` was authorized with may do, as B2 told it at authorization."""
    allowed = dict(api.account_info.get_allowed() or {})
    return Grant(capabilities=tuple(map(str, allowed.get("capabilities") or [])),
                 bucket_id=allowed.get("bucketId") or None,
                 bucket_name=allowed.get("bucketName") or None,
                 name_prefix=allowed.get("namePrefix") or None)


def account_id(api: B2Api) -> str:
    return str(api.account_info.get_account_id())


def account_key_id(api: B2Api) -> str:
    return str(api.account_info.get_application_key_id())


def upload_error(api: B2Api, bucket_id: str, bucket_name: str, file_name: str,
                 data: bytes) -> str | None:
    """Try a real upload; None when it worked, else the error B2 gave (b2sdk retries a
    refused upload, in case its upload URL went stale, then reports every refusal). A
    refusal is the answer asked for here, so it is returned, not raised."""
    # Built directly: looking the bucket up by name needs listBuckets, which app keys lack.
    bucket = api.BUCKET_CLASS(api, bucket_id, name=bucket_name)
    try:
        bucket.upload_bytes(data, file_name)
    except MaxRetriesExceeded as exc:
        causes = {f"{type(e).__name__}: {e}" for e in exc.exception_info_list}
        return "; ".join(sorted(causes))
    except B2Error as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def upload_bytes(api: B2Api, bucket_id: str, bucket_name: str, file_name: str,
                 data: bytes) -> str:
    """Upload ``data``; returns the new file version's id."""
    with _mapped(f"upload {bucket_name}/{file_name}"):
        bucket = api.BUCKET_CLASS(api, bucket_id, name=bucket_name)
        return str(bucket.upload_bytes(data, file_name).id_)


def delete_file(api: B2Api, bucket_id: str, bucket_name: str, file_name: str) -> None:
    """Delete every version of ``file_name`` (used to clean up a probe)."""
    with _mapped(f"delete {bucket_name}/{file_name}"):
        bucket = api.BUCKET_CLASS(api, bucket_id, name=bucket_name)
        for version in bucket.list_file_versions(file_name):
            if version.file_name == file_name:
                api.delete_file_version(version.id_, version.file_name)


def list_file_names(api: B2Api, bucket_id: str, bucket_name: str) -> list[str]:
    """Every file name in the bucket (latest versions)."""
    with _mapped(f"list files of {bucket_name}"):
        bucket = api.BUCKET_CLASS(api, bucket_id, name=bucket_name)
        return [version.file_name for version, _ in bucket.ls(recursive=True)]


def anonymous_download_status(api: B2Api, bucket_name: str, file_name: str,
                              timeout: float = 10.0) -> int:
    """HTTP status of an unauthenticated download from the bucket: what anyone on the
    internet gets. Private buckets answer 401 whether or not the file exists."""
    url = f"{api.account_info.get_download_url()}/file/{bucket_name}/{file_name}"
    with _mapped(f"anonymous download from {bucket_name}"):
        return requests.get(url, timeout=timeout).status_code


@dataclass(frozen=True)
class FileInfo:
    """One file (its latest version) as a listing shows it, with its custom metadata."""

    name: str
    file_id: str
    size: int
    upload_ms: int
    info: dict[str, str]


def list_files(api: B2Api, bucket_id: str, bucket_name: str, prefix: str) -> list[FileInfo]:
    """The latest version of every file under ``prefix``, oldest name first."""
    with _mapped(f"list {bucket_name}/{prefix}"):
        bucket = api.BUCKET_CLASS(api, bucket_id, name=bucket_name)
        return [FileInfo(str(v.file_name), str(v.id_), int(v.size or 0),
                         int(v.upload_timestamp or 0), dict(v.file_info or {}))
                for v, _ in bucket.ls(prefix, recursive=True)]


def download_file(api: B2Api, bucket_id: str, bucket_name: str, file_id: str,
                  target: Path) -> None:
    """Download one file version to ``target`` (b2sdk checks its SHA-1 on the way)."""
    with _mapped(f"download {bucket_name} file {file_id}"):
        api.download_file_by_id(file_id).save_to(str(target))


def delete_file_error(api: B2Api, bucket_id: str, bucket_name: str, file_name: str,
                      file_id: str) -> str | None:
    """Try to delete one file version; None when it worked, else B2's refusal (asked for
    by probes of a key that must not delete)."""
    try:
        api.delete_file_version(file_id, file_name)
    except B2Error as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def list_error(api: B2Api, bucket_id: str, bucket_name: str, prefix: str) -> str | None:
    """Try to list ``prefix``; None when B2 allowed it, else its refusal."""
    bucket = api.BUCKET_CLASS(api, bucket_id, name=bucket_name)
    try:
        for _ in bucket.ls(prefix, recursive=True):
            break
    except B2Error as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@dataclass(frozen=True)
class Usage:
    """A bucket's contents, every version counted (hide markers too): what B2 requires to be
    gone before it deletes the bucket."""

    versions: int
    names: int
    size: int


def bucket_usage(api: B2Api, bucket_id: str, bucket_name: str) -> Usage:
    with _mapped(f"list every file version of {bucket_name}"):
        bucket = api.BUCKET_CLASS(api, bucket_id, name=bucket_name)
        versions = [v for v, _ in bucket.ls(latest_only=False, recursive=True)]
    return Usage(len(versions), len({v.file_name for v in versions}),
                 sum(int(v.size or 0) for v in versions))


def empty_and_delete_bucket(api: B2Api, bucket_id: str, bucket_name: str) -> int:
    """Delete every file version (hide markers too), then the bucket: B2 deletes only a
    bucket that holds no version of any file (b2_delete_bucket). Returns the versions
    deleted. Irreversible: the caller gates it."""
    with _mapped(f"empty and delete bucket {bucket_name}"):
        bucket = api.BUCKET_CLASS(api, bucket_id, name=bucket_name)
        versions = [v for v, _ in bucket.ls(latest_only=False, recursive=True)]
        for version in versions:
            api.delete_file_version(version.id_, version.file_name)
        api.delete_bucket(bucket)
    return len(versions)


@dataclass(frozen=True)
class FileVersion:
    """One version of a file: an upload, or a hide marker (what "deleting" a file in a
    versioned bucket leaves: https://www.backblaze.com/docs/cloud-storage-file-versions)."""

    name: str
    file_id: str
    action: str  # "upload" | "hide" (B2 also lists "start" for an unfinished large file)
    upload_ms: int
    size: int


def file_versions(api: B2Api, bucket_id: str, bucket_name: str,
                  file_name: str) -> list[FileVersion]:
    """Every version of exactly ``file_name``, newest first (B2's order within a name)."""
    with _mapped(f"list versions of {bucket_name}/{file_name}"):
        bucket = api.BUCKET_CLASS(api, bucket_id, name=bucket_name)
        return [FileVersion(str(v.file_name), str(v.id_), str(v.action),
                            int(v.upload_timestamp or 0), int(v.size or 0))
                for v in bucket.list_file_versions(file_name)
                if v.file_name == file_name]


def delete_file_version(api: B2Api, file_id: str, file_name: str) -> None:
    """Delete one version (b2_delete_file_version); on a hide marker this un-hides the
    file: the newest upload below it is the file again."""
    with _mapped(f"delete version {file_id} of {file_name}"):
        api.delete_file_version(file_id, file_name)


def copy_file(api: B2Api, bucket_id: str, bucket_name: str, source_file_id: str,
              file_name: str) -> FileVersion:
    """A server-side copy of one version (b2_copy_file, metadataDirective COPY: its content
    type and file info too) as the newest version of ``file_name`` in the same bucket."""
    with _mapped(f"copy version {source_file_id} to {bucket_name}/{file_name}"):
        bucket = api.BUCKET_CLASS(api, bucket_id, name=bucket_name)
        made = bucket.copy(source_file_id, file_name)
        return FileVersion(str(made.file_name), str(made.id_), "upload",
                           int(made.upload_timestamp or 0), int(made.size or 0))
