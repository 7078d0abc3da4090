"""What every API call shares: the request, field parsing, limits, and lookups that answer
with B2's error codes when something is missing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from casera_localcloud.b2 import errors
from casera_localcloud.b2.auth import Principal
from casera_localcloud.b2.store import Bucket, FileVersion, Store

MAX_PART_NUMBER = 10_000


@dataclass(frozen=True)
class Limits:
    """Part sizes announced in b2_authorize_account.

    Real B2 says 100 MB recommended, 5 MB minimum. The local cloud announces small sizes so
    that b2sdk's large-file path (start, parts, finish) runs on the few-MB files the runbooks
    back up, instead of only in production.
    """

    recommended_part_size: int = 1024 * 1024
    absolute_minimum_part_size: int = 64 * 1024


@dataclass(frozen=True)
class Call:
    """One JSON API call: who, with what, reached through which base URL."""

    principal: Principal
    params: Mapping[str, object]
    base_url: str


class Readable(Protocol):
    """A request body: read at most ``size`` bytes."""

    def read(self, size: int = -1) -> bytes: ...


def str_field(params: Mapping[str, object], name: str, required: bool = True) -> str | None:
    value = params.get(name)  # b2sdk sends unset optionals as explicit nulls
    if value is None:
        if required:
            raise errors.bad_request(f"required field {name} is missing")
        return None
    if not isinstance(value, str):
        raise errors.bad_request(f"{name} must be a string")
    return value


def int_field(params: Mapping[str, object], name: str, default: int, low: int, high: int,
              range_code: str = "bad_request") -> int:
    """An integer parameter; ``range_code`` is the code B2 gives that call's out-of-range
    value (``out_of_range`` for the listings' maxFileCount, ``bad_request`` elsewhere)."""
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise errors.bad_request(f"{name} must be an integer, not {type(value).__name__}")
    try:
        number = int(value)  # query strings and headers arrive as str
    except ValueError as exc:
        raise errors.bad_request(f"{name} must be an integer, not {value[:40]!r}") from exc
    if not low <= number <= high:
        raise errors.B2ApiError(400, range_code,
                                f"{name} must be between {low} and {high}, not {number}")
    return number


def dict_field(params: Mapping[str, object], name: str) -> dict[str, str] | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise errors.bad_request(f"{name} must be an object")
    return {str(k): str(v) for k, v in value.items()}


def list_field(params: Mapping[str, object], name: str) -> list[object] | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, list):
        raise errors.bad_request(f"{name} must be a list")
    return value


# Lifecycle rules: "up to four properties" per rule, at most 100 rules per bucket, day counts
# positive or null (https://www.backblaze.com/docs/cloud-storage-lifecycle-rules).
LIFECYCLE_DAY_FIELDS = ("daysFromHidingToDeleting", "daysFromUploadingToHiding",
                        "daysFromStartingToCancelingUnfinishedLargeFiles")
MAX_LIFECYCLE_RULES = 100


def lifecycle_rules_field(params: Mapping[str, object]) -> list[object] | None:
    """The bucket's lifecycleRules, checked so that a malformed rule is refused rather than
    stored (B2 would refuse it; the emulator must not accept what production will not)."""
    rules = list_field(params, "lifecycleRules")
    if rules is None:
        return None
    if len(rules) > MAX_LIFECYCLE_RULES:
        raise errors.bad_request(f"at most {MAX_LIFECYCLE_RULES} lifecycleRules per bucket")
    for index, rule in enumerate(rules):
        where = f"lifecycleRules[{index}]"
        if not isinstance(rule, dict):
            raise errors.bad_request(f"{where} must be an object")
        unknown = sorted(set(rule) - {"fileNamePrefix", *LIFECYCLE_DAY_FIELDS})
        if unknown:
            raise errors.bad_request(f"{where} has unknown fields: {', '.join(unknown)}")
        if not isinstance(rule.get("fileNamePrefix"), str):
            raise errors.bad_request(f"{where}.fileNamePrefix is required and must be a string")
        for field in LIFECYCLE_DAY_FIELDS:
            days = rule.get(field)
            if days is not None and (isinstance(days, bool) or not isinstance(days, int)
                                     or days < 1):
                raise errors.bad_request(f"{where}.{field} must be a positive integer or null")
    return rules


def check_file_name(name: str) -> None:
    # The same rules b2sdk checks before uploading (raw_api.check_b2_filename), so a client
    # that skips them gets B2's answer rather than a stored unusable name.
    encoded = name.encode()
    if not 1 <= len(encoded) <= 1024:
        raise errors.bad_request("File names must be 1 to 1024 bytes")
    if min(name) < " " or "\x7f" in name:
        raise errors.bad_request("File names must not contain control characters")
    if name.startswith("/") or name.endswith("/") or "//" in name:
        raise errors.bad_request("File names must not start or end with '/' nor contain '//'")
    if max(len(part.encode()) for part in name.split("/")) > 250:
        raise errors.bad_request("File name segments must be at most 250 bytes")


class CallsBase:
    """State shared by the call groups that ``Operations`` combines."""

    def __init__(self, store: Store, limits: Limits | None = None) -> None:
        self.store = store
        self.limits = limits or Limits()

    def _bucket(self, bucket_id: str | None) -> Bucket:
        bucket = self.store.get_bucket(bucket_id) if bucket_id else None
        if bucket is None:
            raise errors.bad_request(f"Invalid bucketId: {bucket_id}", code="bad_bucket_id")
        return bucket

    def _file(self, file_id: str | None) -> FileVersion:
        version = self.store.get_file(file_id) if file_id else None
        if version is None:
            raise errors.not_found(f"File not present: {file_id}")
        return version

    def _own_account(self, call: Call) -> None:
        account_id = str_field(call.params, "accountId")
        if account_id != call.principal.account_id:
            raise errors.unauthorized("accountId does not match the authorization token")
