"""An upload deleted by mistake, back: B2 buckets keep every version, and "deleting" a file
through the API or the app hides it (b2_hide_file adds a hide marker as its newest version).
Deleting that marker (b2_delete_file_version) makes the newest upload below it the file again,
byte for byte (https://www.backblaze.com/docs/cloud-storage-file-versions, "Hiding files").

Not restorable here: a file whose every version was deleted (B2 keeps no trash), or one the
lifecycle rule already deleted after hiding it (``daysFromHidingToDeleting``); the step says
so. An older upload behind a newer bad one is not this step's case: that needs
b2_copy_file, which the local B2 does not have yet.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from casera.context import RunContext
from casera.errors import StepFailed
from casera.plan import Plan, apply
from casera.providers import b2
from casera.result import StepResult, timed
from casera.steps.storage import master_api


def _at(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def restore_deleted_upload(ctx: RunContext, file_name: str,
                           bucket: str = "uploads") -> StepResult:
    """Un-hide ``file_name`` in the bucket params name for ``bucket`` (a role: uploads,
    certs, backups). Visible already: 0 changes. Checks that the restored file downloads
    (b2sdk checks its SHA-1) with the size of the upload that was hidden."""
    with timed(StepResult("restore deleted upload", f"{bucket}/{file_name}",
                          dry_run=ctx.dry_run)) as result:
        buckets = ctx.params.b2.buckets
        if bucket not in buckets:
            raise StepFailed(f"parameter bucket={bucket!r} is not a bucket role in params "
                             f"b2.buckets ({', '.join(buckets)}); nothing was changed")
        if not file_name.strip():
            raise StepFailed("parameter file_name is empty: name the file to restore (as "
                             "listed in the bucket); nothing was changed")
        name = buckets[bucket].name  # type: ignore[index]
        api = master_api(ctx)
        info = b2.get_bucket(api, name)
        if info is None:
            raise StepFailed(f"bucket {name} (params b2.buckets.{bucket}) does not exist")
        result.target = f"{name}/{file_name}"
        versions = [v for v in b2.file_versions(api, info.bucket_id, name, file_name)
                    if v.action in ("upload", "hide")]
        if not versions:
            raise StepFailed(f"{name}/{file_name} has no version left: never uploaded, or "
                             "every version deleted (B2 keeps no trash); nothing to restore")
        markers = []
        for version in versions:
            if version.action != "hide":
                break
            markers.append(version)
        uploads = [v for v in versions if v.action == "upload"]
        if not uploads:
            raise StepFailed(f"{name}/{file_name} holds only hide markers: its uploads are "
                             "gone (the lifecycle rule deletes hidden versions)")
        upload = next(v for v in versions if v.action == "upload")
        plan = Plan()
        if not markers:
            result.reason = (f"visible already: version {upload.file_id} uploaded "
                             f"{_at(upload.upload_ms)}")
        # Not a gate: it deletes only the marker; hiding the file again undoes it.
        for marker in markers:
            plan.add(f"- hide marker {marker.file_id} of {file_name} (hidden "
                     f"{_at(marker.upload_ms)}): the upload of {_at(upload.upload_ms)} "
                     f"({upload.size} bytes) is the file again",
                     partial(b2.delete_file_version, api, marker.file_id, file_name))
        if apply(ctx, result, plan).dry_run:
            return result
        now = b2.file_versions(api, info.bucket_id, name, file_name)
        newest = now[0] if now else None
        result.check("visible", newest is not None and newest.file_id == upload.file_id,
                     f"newest version {newest.file_id} ({newest.action})" if newest else
                     "no version")
        with tempfile.TemporaryDirectory() as scratch:
            target = Path(scratch) / "file"
            b2.download_file(api, info.bucket_id, name, upload.file_id, target)
            size = target.stat().st_size
        result.check("downloads", size == upload.size,
                     f"{size} bytes, SHA-1 checked by b2sdk; the upload had {upload.size}")
        if markers:
            result.reason = f"un-hidden: the upload of {_at(upload.upload_ms)} is back"
    return result
