"""Account-level calls: authorization, buckets and application keys."""

from __future__ import annotations

import re
from dataclasses import replace

from casera_localcloud.b2 import auth, errors
from casera_localcloud.b2.calls import (
    Call,
    CallsBase,
    dict_field,
    int_field,
    lifecycle_rules_field,
    list_field,
    str_field,
)
from casera_localcloud.b2.capabilities import ALL_CAPABILITIES
from casera_localcloud.b2.shapes import bucket_dict, key_dict
from casera_localcloud.b2.store import now_ms

BUCKET_NAME_RE = re.compile(r"^[A-Za-z0-9-]{6,63}$")
KEY_NAME_RE = re.compile(r"^[A-Za-z0-9-]{1,100}$")
MAX_KEY_DURATION_S = 1000 * 24 * 3600


class AccountCalls(CallsBase):
    # account ----------------------------------------------------------------------------

    def authorize(self, header: str | None, version: int, base_url: str) -> dict[str, object]:
        key, token = auth.authorize_account(self.store, header)
        buckets = None
        if key.bucket_ids is not None:
            buckets = []
            for bucket_id in key.bucket_ids:
                bucket = self.store.get_bucket(bucket_id)
                buckets.append({"id": bucket_id, "name": bucket.name if bucket else None})
        storage: dict[str, object] = {
            "apiUrl": base_url,
            "downloadUrl": base_url,
            "s3ApiUrl": base_url,  # the emulator has no S3 API; b2sdk only stores this
            "recommendedPartSize": self.limits.recommended_part_size,
            "absoluteMinimumPartSize": self.limits.absolute_minimum_part_size,
            "infoType": "storageApi",
        }
        # v4 nests the key's restrictions under "allowed" and lists several buckets; v3 has
        # them flat in storageApi and knows one bucket at most (b2sdk.v2 reads that form).
        legacy_allowed = {
            "capabilities": key.capabilities,
            "bucketId": buckets[0]["id"] if buckets else None,
            "bucketName": buckets[0]["name"] if buckets else None,
            "namePrefix": key.name_prefix,
        }
        if version >= 4:
            storage["allowed"] = {"buckets": buckets, "capabilities": key.capabilities,
                                  "namePrefix": key.name_prefix}
        else:
            storage.update(legacy_allowed)
        answer: dict[str, object] = {
            "accountId": key.account_id,
            "authorizationToken": token.token,
            "applicationKeyExpirationTimestamp": key.expires_ms,
            "apiInfo": {"storageApi": storage, "groupsApi": {"infoType": "groupsApi"}},
        }
        if version <= 2:  # v1/v2 answered with the storage fields at the top level
            answer.update({k: v for k, v in storage.items()
                           if k != "infoType" and k not in legacy_allowed})
            answer["allowed"] = legacy_allowed
            del answer["apiInfo"]
        return answer

    # buckets ----------------------------------------------------------------------------

    def b2_create_bucket(self, call: Call) -> dict[str, object]:
        self._own_account(call)
        name = str_field(call.params, "bucketName") or ""
        bucket_type = str_field(call.params, "bucketType")
        auth.require(call.principal, "writeBuckets")
        if not BUCKET_NAME_RE.match(name) or name.lower().startswith("b2-"):
            raise errors.bad_request(
                "Bucket names are 6 to 63 letters, digits and '-', not starting with 'b2-'")
        if bucket_type not in ("allPrivate", "allPublic"):
            raise errors.bad_request("bucketType must be allPrivate or allPublic")
        if self.store.get_bucket_by_name(name) is not None:
            raise errors.bad_request(f"Bucket name is already in use: {name}",
                                     code="duplicate_bucket_name")
        bucket = self.store.create_bucket(
            name, bucket_type, dict_field(call.params, "bucketInfo") or {},
            list_field(call.params, "corsRules") or [],
            lifecycle_rules_field(call.params) or [])
        return bucket_dict(bucket)

    def b2_list_buckets(self, call: Call) -> dict[str, object]:
        self._own_account(call)
        bucket_id = str_field(call.params, "bucketId", required=False)
        bucket_name = str_field(call.params, "bucketName", required=False)
        key = call.principal.key
        if key.bucket_ids is None:
            auth.require(call.principal, "listBuckets")
        elif bucket_id is None and bucket_name is None:
            # B2 (v2 on) refuses a full listing to a bucket-restricted key.
            raise errors.unauthorized("a key restricted to buckets must name the bucket")
        else:
            named = self.store.get_bucket_by_name(bucket_name) if bucket_name else None
            target = bucket_id or (named.bucket_id if named else key.bucket_ids[0])
            auth.require(call.principal, "listBuckets", target)
        types = list_field(call.params, "bucketTypes") or ["all"]
        found = [
            b for b in self.store.list_buckets()
            if (bucket_id is None or b.bucket_id == bucket_id)
            and (bucket_name is None or b.name == bucket_name)
            and (key.bucket_ids is None or b.bucket_id in key.bucket_ids)
            and ("all" in types or b.bucket_type in types)
        ]
        return {"buckets": [bucket_dict(b) for b in found]}

    def b2_update_bucket(self, call: Call) -> dict[str, object]:
        self._own_account(call)
        bucket = self._bucket(str_field(call.params, "bucketId"))
        auth.require(call.principal, "writeBuckets", bucket.bucket_id)
        if int_field(call.params, "ifRevisionIs", bucket.revision, 0, 2**62) != bucket.revision:
            raise errors.B2ApiError(409, "conflict", "ifRevisionIs does not match")
        bucket_type = str_field(call.params, "bucketType", required=False) or bucket.bucket_type
        if bucket_type not in ("allPrivate", "allPublic"):
            raise errors.bad_request("bucketType must be allPrivate or allPublic")
        info = dict_field(call.params, "bucketInfo")
        cors = list_field(call.params, "corsRules")
        lifecycle = lifecycle_rules_field(call.params)
        updated = replace(
            bucket, bucket_type=bucket_type, revision=bucket.revision + 1,
            info=bucket.info if info is None else info,
            cors_rules=bucket.cors_rules if cors is None else cors,
            lifecycle_rules=bucket.lifecycle_rules if lifecycle is None else lifecycle)
        return bucket_dict(self.store.update_bucket(updated))

    def b2_delete_bucket(self, call: Call) -> dict[str, object]:
        self._own_account(call)
        bucket = self._bucket(str_field(call.params, "bucketId"))
        auth.require(call.principal, "deleteBuckets", bucket.bucket_id)
        if self.store.count_files(bucket.bucket_id):
            raise errors.bad_request("Cannot delete non-empty bucket")
        self.store.delete_bucket(bucket.bucket_id)
        return bucket_dict(bucket)

    # keys -------------------------------------------------------------------------------

    def b2_create_key(self, call: Call) -> dict[str, object]:
        self._own_account(call)
        auth.require(call.principal, "writeKeys")
        name = str_field(call.params, "keyName") or ""
        if not KEY_NAME_RE.match(name):
            raise errors.bad_request("keyName must be 1 to 100 letters, digits and '-'")
        capabilities = list_field(call.params, "capabilities")
        if not capabilities:
            raise errors.bad_request("capabilities must be a non-empty list")
        unknown = sorted(set(map(str, capabilities)) - set(ALL_CAPABILITIES))
        if unknown:
            raise errors.bad_request(f"unknown capabilities: {', '.join(unknown)}")
        bucket_ids = list_field(call.params, "bucketIds")
        if bucket_ids is None and call.params.get("bucketId"):  # API v3 and older: one bucket
            bucket_ids = [call.params["bucketId"]]
        if bucket_ids is not None:
            if not bucket_ids:
                raise errors.bad_request("bucketIds must be a non-empty list")
            for bucket_id in bucket_ids:
                self._bucket(str(bucket_id))
        name_prefix = str_field(call.params, "namePrefix", required=False) or None
        if name_prefix is not None and bucket_ids is None:
            # "namePrefix: When present, restricts access to files whose names start with the
            # prefix. You must set bucketId when setting this."
            # (https://www.backblaze.com/apidocs/b2-create-key)
            raise errors.bad_request("namePrefix needs bucketId: a name prefix only "
                                     "restricts a key that is restricted to a bucket")
        duration = call.params.get("validDurationInSeconds")
        expires = None
        if duration is not None:
            seconds = int_field(call.params, "validDurationInSeconds", 0, 1, MAX_KEY_DURATION_S)
            expires = now_ms() + seconds * 1000
        key = self.store.create_key(
            name, [str(c) for c in capabilities],
            [str(b) for b in bucket_ids] if bucket_ids is not None else None,
            name_prefix, expires)
        return {**key_dict(key), "applicationKey": key.secret}

    def b2_list_keys(self, call: Call) -> dict[str, object]:
        self._own_account(call)
        auth.require(call.principal, "listKeys")
        count = int_field(call.params, "maxKeyCount", 100, 1, 10_000)
        start = str_field(call.params, "startApplicationKeyId", required=False) or ""
        keys = [k for k in self.store.list_keys() if k.key_id >= start]
        following = keys[count].key_id if len(keys) > count else None
        return {"keys": [key_dict(k) for k in keys[:count]], "nextApplicationKeyId": following}

    def b2_delete_key(self, call: Call) -> dict[str, object]:
        auth.require(call.principal, "deleteKeys")
        key_id = str_field(call.params, "applicationKeyId") or ""
        key = self.store.get_key(key_id)
        if key is None or key.account_id != call.principal.account_id or key.is_master:
            raise errors.bad_request(f"application key does not exist: {key_id}")
        self.store.delete_key(key_id)
        return key_dict(key)
