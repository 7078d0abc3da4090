"""Backblaze B2 through ``b2sdk``. ``realm`` is 'production' for Backblaze or the base URL of
an emulator: b2sdk uses an unknown realm as the base URL (docs/facts.md#backblaze-b2).

Reads return plain data (:class:`BucketInfo`, :class:`KeyInfo`) or None; writes do one call
each. Deciding what to create, replace or refuse is the steps' job (``casera.steps.storage``).
"""

from __future__ import annotations

from dataclasses import dataclass

import requests
from b2sdk.v2 import B2Api, BaseApplicationKey, Bucket, InMemoryAccountInfo
from b2sdk.v2.exception import B2Error, MaxRetriesExceeded

from casera.operator_secrets import Secret


@dataclass(frozen=True)
class BucketInfo:
    name: str
    bucket_id: str
    bucket_type: str


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


def authorize(realm: str, key_id: Secret | str, key: Secret) -> B2Api:
    api = B2Api(InMemoryAccountInfo())
    plain_id = key_id.reveal() if isinstance(key_id, Secret) else key_id
    api.authorize_account(realm, plain_id, key.reveal())
    return api


def _bucket_info(bucket: Bucket) -> BucketInfo:
    return BucketInfo(name=str(bucket.name), bucket_id=str(bucket.id_),
                      bucket_type=str(bucket.type_))


def get_bucket(api: B2Api, name: str) -> BucketInfo | None:
    found = api.list_buckets(bucket_name=name)
    return _bucket_info(found[0]) if found else None


def create_bucket(api: B2Api, name: str, bucket_type: str) -> BucketInfo:
    return _bucket_info(api.create_bucket(name, bucket_type))


def set_bucket_type(api: B2Api, bucket_id: str, bucket_type: str) -> BucketInfo:
    bucket = api.BUCKET_CLASS(api, bucket_id)
    return _bucket_info(bucket.update(bucket_type=bucket_type))


def _key_info(key: BaseApplicationKey) -> KeyInfo:
    return KeyInfo(name=str(key.key_name), key_id=str(key.id_),
                   capabilities=tuple(key.capabilities), bucket_id=key.bucket_id,
                   name_prefix=key.name_prefix)


def list_keys(api: B2Api) -> list[KeyInfo]:
    return [_key_info(key) for key in api.list_keys()]


def create_key(api: B2Api, name: str, capabilities: list[str], bucket_id: str) -> CreatedKey:
    created = api.create_key(capabilities, name, bucket_id=bucket_id)
    return CreatedKey(_key_info(created), Secret(f"b2 key {name}", created.application_key))


def delete_key(api: B2Api, key_id: str) -> None:
    api.delete_key_by_id(key_id)


def allowed(api: B2Api) -> dict[str, object]:
    """What the key this ``api`` was authorized with may do, as B2 told it at authorization."""
    return dict(api.account_info.get_allowed() or {})


def account_key_id(api: B2Api) -> str:
    return str(api.account_info.get_application_key_id())


def upload_error(api: B2Api, bucket_id: str, bucket_name: str, file_name: str,
                 data: bytes) -> str | None:
    """Try a real upload; None when it worked, else the error B2 gave (b2sdk retries a
    refused upload, in case its upload URL went stale, then reports every refusal)."""
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


def delete_file(api: B2Api, bucket_id: str, bucket_name: str, file_name: str) -> None:
    """Delete every version of ``file_name`` (used to clean up a probe)."""
    bucket = api.BUCKET_CLASS(api, bucket_id, name=bucket_name)
    for version in bucket.list_file_versions(file_name):
        if version.file_name == file_name:
            api.delete_file_version(version.id_, version.file_name)


def anonymous_download_status(api: B2Api, bucket_name: str, file_name: str,
                              timeout: float = 10.0) -> int:
    """HTTP status of an unauthenticated download from the bucket: what anyone on the
    internet gets. Private buckets answer 401 whether or not the file exists."""
    url = f"{api.account_info.get_download_url()}/file/{bucket_name}/{file_name}"
    return requests.get(url, timeout=timeout).status_code
