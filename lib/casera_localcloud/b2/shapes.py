"""Answer shapes: buckets, file versions and keys as B2 returns them.

Shapes follow what b2sdk reads back: bucket dicts need ``options``,
``defaultServerSideEncryption`` and ``fileLockConfiguration``; file versions other than hide
markers need ``fileRetention`` and ``legalHold`` or b2sdk raises UnexpectedCloudBehaviour.
"""

from __future__ import annotations

from casera_localcloud.b2.store import Bucket, FileVersion, Key

UNLOCKED = {"isClientAuthorizedToRead": True, "value": {"mode": None}}
NO_LEGAL_HOLD = {"isClientAuthorizedToRead": True, "value": None}


def bucket_dict(bucket: Bucket) -> dict[str, object]:
    return {
        "accountId": bucket.account_id,
        "bucketId": bucket.bucket_id,
        "bucketName": bucket.name,
        "bucketType": bucket.bucket_type,
        "bucketInfo": bucket.info,
        "corsRules": bucket.cors_rules,
        "lifecycleRules": bucket.lifecycle_rules,
        "options": ["s3"],
        "revision": bucket.revision,
        "defaultServerSideEncryption": {"isClientAuthorizedToRead": True,
                                        "value": {"mode": "none"}},
        "fileLockConfiguration": {
            "isClientAuthorizedToRead": True,
            "value": {"defaultRetention": {"mode": None, "period": None},
                      "isFileLockEnabled": False},
        },
        "replicationConfiguration": {"isClientAuthorizedToRead": True, "value": None},
    }


def file_dict(version: FileVersion, account_id: str) -> dict[str, object]:
    answer: dict[str, object] = {
        "accountId": account_id,
        "action": version.action,
        "bucketId": version.bucket_id,
        "contentLength": version.size,
        "contentSha1": version.sha1,
        "contentMd5": None,
        "contentType": version.content_type,
        "fileId": version.file_id,
        "fileInfo": version.info,
        "fileName": version.name,
        "uploadTimestamp": version.upload_ms,
        "serverSideEncryption": {"mode": "none"},
        "replicationStatus": None,
    }
    if version.action != "hide":
        answer["fileRetention"] = UNLOCKED
        answer["legalHold"] = NO_LEGAL_HOLD
    return answer


def key_dict(key: Key) -> dict[str, object]:
    return {
        "accountId": key.account_id,
        "applicationKeyId": key.key_id,
        "keyName": key.name,
        "capabilities": key.capabilities,
        # v4 answers bucketIds; b2sdk.v2 (API v3) reads the single bucketId of older keys.
        "bucketIds": key.bucket_ids,
        "bucketId": key.bucket_ids[0] if key.bucket_ids else None,
        "namePrefix": key.name_prefix,
        "expirationTimestamp": key.expires_ms,
        "options": ["s3"],
    }
