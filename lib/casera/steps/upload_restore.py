"""An upload deleted by mistake, back: B2 buckets keep every version, and "deleting" a file
through the API or the app hides it (b2_hide_file adds a hide marker as its newest version).
Deleting that marker (b2_delete_file_version) makes the newest upload below it the file again,
byte for byte (https://www.backblaze.com/docs/cloud-storage-file-versions, "Hiding files").

Not restorable here: a file whose every version was deleted (B2 keeps no trash), or one the
lifecycle rule already deleted after hiding it (``daysFromHidingToDeleting``); the step says
so. An older upload behind a newer bad one (overwritten by mistake, or a corrupt upload) is
:func:`restore_previous_version`'s case: a server-side copy (b2_copy_file,
https://www.backblaze.com/apidocs/b2-copy-file) of the good version becomes the newest, byte
for byte; the bad one stays below it as history.
"""

from __future__ import annotations

import hashlib
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


def _resolve(ctx: RunContext, bucket: str, file_name: str
             ) -> tuple[b2.B2Api, b2.BucketInfo, str]:
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
    return api, info, name


def _sha256_of(api: b2.B2Api, info: b2.BucketInfo, file_id: str) -> str:
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / "file"
        b2.download_file(api, info.bucket_id, info.name, file_id, target)
        digest = hashlib.sha256()
        with target.open("rb") as source:
            for chunk in iter(lambda: source.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()


def restore_previous_version(ctx: RunContext, file_name: str, version_id: str,
                             bucket: str = "uploads") -> StepResult:
    """Make upload ``version_id`` of ``file_name`` the file again by copying it server-side
    (b2_copy_file) as the newest version: same bytes, content type and file info; every
    version stays (the bad one is history below it). ``version_id`` is the file id of the
    good version, as the run's listing of versions shows it: named explicitly, since "the
    previous one" changes meaning after the copy. Its content newest already: 0 changes.
    Checks that the newest version now downloads byte-equal (SHA-256) to the one named."""
    with timed(StepResult("restore previous version", f"{bucket}/{file_name}",
                          dry_run=ctx.dry_run)) as result:
        api, info, name = _resolve(ctx, bucket, file_name)
        result.target = f"{name}/{file_name}"
        versions = [v for v in b2.file_versions(api, info.bucket_id, name, file_name)
                    if v.action in ("upload", "hide")]
        for version in versions[:10]:
            result.note(version.file_id, f"{version.action} {_at(version.upload_ms)}, "
                        f"{version.size} bytes")
        wanted = next((v for v in versions if v.file_id == version_id), None)
        if wanted is None or wanted.action != "upload":
            uploads = ", ".join(v.file_id for v in versions if v.action == "upload")[:600]
            raise StepFailed(f"parameter version_id={version_id!r} is not an upload of "
                             f"{name}/{file_name} (its uploads, newest first: "
                             f"{uploads or 'none'}); nothing was changed")
        newest = versions[0]
        want_sha = _sha256_of(api, info, wanted.file_id)
        plan = Plan()
        if newest.action == "upload" and newest.size == wanted.size and (
                newest.file_id == wanted.file_id
                or _sha256_of(api, info, newest.file_id) == want_sha):
            result.reason = (f"the newest version {newest.file_id} already holds the bytes of "
                             f"{wanted.file_id} (SHA-256 {want_sha[:12]}...)")
        else:
            # Not a gate: it adds a version and deletes nothing; copying the version it
            # replaces the same way undoes it.
            plan.add(f"+ copy of version {wanted.file_id} (uploaded {_at(wanted.upload_ms)}, "
                     f"{wanted.size} bytes) as the newest version of {file_name}; newest "
                     f"until now: {newest.file_id} ({newest.action} {_at(newest.upload_ms)})",
                     partial(b2.copy_file, api, info.bucket_id, name, wanted.file_id,
                             file_name))
        if apply(ctx, result, plan).dry_run:
            return result
        now = b2.file_versions(api, info.bucket_id, name, file_name)
        top = now[0] if now else None
        result.check("newest version", top is not None and top.action == "upload",
                     f"{top.file_id} ({top.action} {_at(top.upload_ms)})" if top else
                     "no version")
        got = _sha256_of(api, info, top.file_id) if top and top.action == "upload" else ""
        result.check("byte-equal", got == want_sha,
                     f"SHA-256 {got[:16]}... of the newest = that of {wanted.file_id}"
                     if got == want_sha else
                     f"newest {got[:16] or '?'}..., version {wanted.file_id} {want_sha[:16]}...")
        if plan:
            result.reason = (f"version {wanted.file_id} of {_at(wanted.upload_ms)} copied: "
                             f"the newest version {top.file_id if top else '?'} holds its bytes")
    return result


def restore_deleted_upload(ctx: RunContext, file_name: str,
                           bucket: str = "uploads") -> StepResult:
    """Un-hide ``file_name`` in the bucket params name for ``bucket`` (a role: uploads,
    certs, backups). Visible already: 0 changes. Checks that the restored file downloads
    (b2sdk checks its SHA-1) with the size of the upload that was hidden."""
    with timed(StepResult("restore deleted upload", f"{bucket}/{file_name}",
                          dry_run=ctx.dry_run)) as result:
        api, info, name = _resolve(ctx, bucket, file_name)
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


def restore_upload(ctx: RunContext, file_name: str, version_id: str = "",
                   bucket: str = "uploads") -> StepResult:
    """The DR runbook's uploads scenario: with ``version_id``, that upload copied back as the
    newest version (:func:`restore_previous_version`); without, the hidden file un-hidden
    (:func:`restore_deleted_upload`)."""
    if version_id.strip():
        return restore_previous_version(ctx, file_name, version_id.strip(), bucket)
    return restore_deleted_upload(ctx, file_name, bucket)
