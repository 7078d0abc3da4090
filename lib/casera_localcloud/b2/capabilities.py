"""B2 application-key capabilities."""

from __future__ import annotations

# The capability names B2 knows (same list as b2sdk's ALL_CAPABILITIES, kept here so the
# emulator does not depend on b2sdk's internals).
ALL_CAPABILITIES: tuple[str, ...] = (
    "listKeys", "writeKeys", "deleteKeys", "listBuckets", "listAllBucketNames", "readBuckets",
    "writeBuckets", "deleteBuckets", "readBucketEncryption", "writeBucketEncryption",
    "readBucketRetentions", "writeBucketRetentions", "readFileRetentions",
    "writeFileRetentions", "readFileLegalHolds", "writeFileLegalHolds",
    "readBucketReplications", "writeBucketReplications", "bypassGovernance", "listFiles",
    "readFiles", "shareFiles", "writeFiles", "deleteFiles", "readBucketNotifications",
    "writeBucketNotifications",
)
