"""Backblaze B2: the private buckets and the scoped application keys the services use.

Everything here talks to B2 with the master key (``b2_key_id``/``b2_application_key``), which
only ever makes and checks the scoped keys: no service is handed the master key.

B2 shows a key's secret once, in the answer that creates it. So the secrets of the keys made
here live in a small git-ignored file, ``secrets/<env>.b2-keys.env`` (mode 0600), until the
Docker-secrets step hands them on (:func:`app_key_values`). A key that exists in B2 but whose
secret is not in that file is useless to us and is replaced (create new, store it, delete
old), behind the approval gate because whatever still uses the old key loses access.

Not reconciled here: keys in the account whose names are not in params (left alone, they may
be an operator's), bucket lifecycle rules, CORS, and the account's spending caps (web UI only).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from b2sdk.v2 import B2Api
from b2sdk.v2.exception import DuplicateBucketName

from casera.context import RunContext
from casera.errors import SecretMissingError, StepFailed
from casera.gate import confirm
from casera.params import B2KeyParams, Params
from casera.paths import secrets_file
from casera.providers import b2
from casera.result import StepResult, timed
from casera.secrets import Secret

PROBE_PREFIX = ".casera-probe/"
# Capabilities that would let a leaked app key act beyond its bucket's files.
ACCOUNT_CAPABILITIES = frozenset({"listKeys", "writeKeys", "deleteKeys", "writeBuckets",
                                  "deleteBuckets", "listAllBucketNames"})


# ------------------------------------------------------------------ the key store


@dataclass(frozen=True)
class AppKey:
    """A scoped application key as the services need it."""

    name: str
    key_id: str
    secret: Secret
    bucket_name: str
    for_services: tuple[str, ...]


class B2KeyStore:
    """``<name>_KEY_ID=...`` / ``<name>_APPLICATION_KEY=...`` lines in a 0600 file.

    The same KEY=VALUE form as ``secrets/<env>.env`` so an operator can read and repair it
    with an editor; written atomically so a crash never leaves half a key.
    """

    ID_SUFFIX = "_KEY_ID"
    SECRET_SUFFIX = "_APPLICATION_KEY"

    def __init__(self, path: Path) -> None:
        self.path = path

    def _lines(self) -> dict[str, str]:
        values: dict[str, str] = {}
        if not self.path.exists():
            return values
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            if "=" not in text:
                # The line may hold a secret: name the line, never its content.
                raise SecretMissingError(f"{self.path}:{number}: not KEY=VALUE; fix that line "
                                         "(its content is not shown)")
            key, _, value = text.partition("=")
            values[key.strip()] = value.strip()
        return values

    def load(self) -> dict[str, tuple[str, Secret]]:
        """key name -> (key id, secret) for every complete entry."""
        lines = self._lines()
        found = {}
        for key, key_id in lines.items():
            if key.endswith(self.ID_SUFFIX):
                name = key.removesuffix(self.ID_SUFFIX)
                secret = lines.get(name + self.SECRET_SUFFIX)
                if secret:
                    found[name] = (key_id, Secret(f"b2 key {name}", secret))
        return found

    def put(self, name: str, key_id: str, secret: Secret) -> None:
        lines = self._lines()
        lines[name + self.ID_SUFFIX] = key_id
        lines[name + self.SECRET_SUFFIX] = secret.reveal()
        self._write(lines)

    def _write(self, lines: dict[str, str]) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        # Created 0600 from the start: a chmod after writing would leave a readable window.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write("# B2 application keys made by casera; B2 shows a secret only once, "
                      "so losing this file means replacing the keys. Never commit it.\n")
            out.writelines(f"{k}={v}\n" for k, v in sorted(lines.items()))
        os.chmod(tmp, 0o600)
        tmp.replace(self.path)

    def values(self) -> list[str]:
        """Every stored secret, for the runner's scrub and leak scan. Never print this."""
        return [secret.reveal() for _, secret in self.load().values()]


def key_store(env: str) -> B2KeyStore:
    return B2KeyStore(secrets_file(env).with_name(f"{env}.b2-keys.env"))


def app_key_values(ctx: RunContext) -> dict[str, AppKey]:
    """The scoped keys params name, with their secrets, for the Docker-secrets step.

    Raises :class:`SecretMissingError` when a key was never made or its secret was lost:
    run :func:`ensure_app_keys` first (it replaces a key whose secret is gone).
    """
    stored = key_store(ctx.env).load()
    keys = {}
    for kp in ctx.params.b2.keys:
        if kp.name not in stored:
            raise SecretMissingError(
                f"B2 key {kp.name}: its secret is not in {key_store(ctx.env).path}; run "
                f"ensure_app_keys (it makes the key, or replaces one whose secret was lost)")
        key_id, secret = stored[kp.name]
        keys[kp.name] = AppKey(kp.name, key_id, secret, ctx.params.b2.buckets[kp.bucket].name,
                               tuple(kp.for_services))
    return keys


def stored_secret_values(env: str) -> list[str]:
    """The app keys' secrets, so the runner can scrub outputs of them too (they are made
    during the run, after the runner read the environment's secrets)."""
    return key_store(env).values()


# ------------------------------------------------------------------ buckets


def master_api(ctx: RunContext) -> B2Api:
    return b2.authorize(ctx.params.b2.realm, ctx.secrets.get("b2_key_id"),
                        ctx.secrets.get("b2_application_key"))


def ensure_buckets(ctx: RunContext) -> StepResult:
    """``b2.buckets`` (uploads, certs) exist and are private. A missing bucket is created; a
    public one is made private behind the gate (its public URLs stop working)."""
    p = ctx.params.b2
    names = [bp.name for bp in p.buckets.values()]
    with timed(StepResult("b2 buckets", ", ".join(names), dry_run=ctx.dry_run)) as result:
        api = master_api(ctx)
        found = {bp.name: b2.get_bucket(api, bp.name) for bp in p.buckets.values()}
        missing = [bp for bp in p.buckets.values() if found[bp.name] is None]
        wrong = [(bp, found[bp.name]) for bp in p.buckets.values()
                 if found[bp.name] is not None and found[bp.name].bucket_type != bp.type]
        result.diff += [f"+ bucket {bp.name} ({bp.type})" for bp in missing]
        result.diff += [f"~ bucket {bp.name}: {have.bucket_type} -> {bp.type}"
                        for bp, have in wrong if have]
        result.changed = len(missing) + len(wrong)
        if not result.changed:
            result.reason = f"{len(names)} buckets exist and are private"
            _verify_buckets(api, ctx.params, result)  # read-only: fine in a dry run too
            return result
        if ctx.dry_run:
            return result
        if wrong:
            confirm(ctx, f"B2: make {len(wrong)} public bucket(s) private",
                    [f"~ {bp.name}: {have.bucket_type} -> {bp.type}; its public download "
                     "URLs stop working" for bp, have in wrong if have])
        for bp in missing:
            try:
                b2.create_bucket(api, bp.name, bp.type)
            except DuplicateBucketName:
                # Bucket names are global across B2 accounts. A retried create of ours
                # shows up on re-read; anyone else's means a name change in params.
                if b2.get_bucket(api, bp.name) is None:
                    raise StepFailed(
                        f"B2 bucket name {bp.name} is taken by another B2 account; choose "
                        f"another name in params/{ctx.env}.yaml b2.buckets") from None
        for bp, have in wrong:
            if have:
                b2.set_bucket_type(api, have.bucket_id, bp.type)
        result.reason = f"{len(missing)} created, {len(wrong)} made private"
        _verify_buckets(api, ctx.params, result)
    return result


def verify_buckets(ctx: RunContext) -> StepResult:
    """Read-only: each bucket exists, is private, and refuses an anonymous download."""
    p = ctx.params.b2
    with timed(StepResult("b2 buckets", ", ".join(bp.name for bp in p.buckets.values()),
                          dry_run=ctx.dry_run)) as result:
        _verify_buckets(master_api(ctx), ctx.params, result)
    return result


def _verify_buckets(api: B2Api, params: Params, result: StepResult) -> None:
    for bp in params.b2.buckets.values():
        have = b2.get_bucket(api, bp.name)
        if have is None:
            result.check(bp.name, False, "does not exist")
            continue
        result.check(f"{bp.name} type", have.bucket_type == bp.type, have.bucket_type)
        # The listing says "private"; an anonymous GET is what the internet actually gets.
        status = b2.anonymous_download_status(api, bp.name, PROBE_PREFIX + "anonymous")
        result.check(f"{bp.name} anonymous download", status == 401,
                     f"refused (HTTP {status})" if status == 401 else
                     f"HTTP {status}: the bucket answers strangers")


# ------------------------------------------------------------------ application keys


@dataclass
class _KeyPlan:
    params: B2KeyParams
    bucket: b2.BucketInfo | None
    keep: b2.KeyInfo | None
    stale: list[b2.KeyInfo]
    why: str


def _scope_ok(key: b2.KeyInfo, kp: B2KeyParams, bucket: b2.BucketInfo | None) -> bool:
    return (bucket is not None and key.bucket_id == bucket.bucket_id
            and set(key.capabilities) == set(kp.capabilities) and not key.name_prefix)


def _describe(kp: B2KeyParams, bucket_name: str) -> str:
    return (f"{kp.name}: {','.join(kp.capabilities)} on {bucket_name} "
            f"(for {', '.join(kp.for_services)})")


def _plan_keys(params: Params, buckets: dict[str, b2.BucketInfo | None],
               existing: Iterable[b2.KeyInfo],
               stored: dict[str, tuple[str, Secret]]) -> list[_KeyPlan]:
    by_name: dict[str, list[b2.KeyInfo]] = {}
    for key in existing:
        by_name.setdefault(key.name, []).append(key)
    plans = []
    for kp in params.b2.keys:
        bucket = buckets[kp.bucket]
        same_name = by_name.get(kp.name, [])
        stored_id = stored[kp.name][0] if kp.name in stored else None
        mine = next((k for k in same_name if k.key_id == stored_id), None)
        if mine is not None and _scope_ok(mine, kp, bucket):
            others = [k for k in same_name if k is not mine]
            why = (f"exists, secret stored; {len(others)} duplicate(s) without a stored "
                   "secret" if others else "exists, secret stored")
            plans.append(_KeyPlan(kp, bucket, mine, others, why))
            continue
        if mine is not None:
            why = "scope differs from params (B2 keys cannot be changed)"
        elif same_name:
            why = "exists but its secret is not stored (B2 shows it only at creation)"
        else:
            why = "does not exist"
        plans.append(_KeyPlan(kp, bucket, None, list(same_name), why))
    return plans


def ensure_app_keys(ctx: RunContext) -> StepResult:
    """One application key per ``b2.keys`` entry, restricted to its bucket with exactly its
    capabilities, made with the master key; its secret kept in ``secrets/<env>.b2-keys.env``.

    Reused when it exists with that scope and its secret is stored. Otherwise a new key is
    made and stored first, and only then the old one deleted (behind the gate), so a crash
    in between leaves a duplicate the next run removes, never a service without a key.
    """
    p = ctx.params
    store = key_store(ctx.env)
    with timed(StepResult("b2 keys", ", ".join(k.name for k in p.b2.keys),
                          dry_run=ctx.dry_run)) as result:
        api = master_api(ctx)
        buckets = {role: b2.get_bucket(api, bp.name) for role, bp in p.b2.buckets.items()}
        plans = _plan_keys(p, buckets, b2.list_keys(api), store.load())
        for plan in plans:
            described = _describe(plan.params, p.b2.buckets[plan.params.bucket].name)
            if plan.keep is None:
                result.diff.append(f"{'~ replace' if plan.stale else '+'} key {described}: "
                                   f"{plan.why}")
            result.diff += [f"- key {k.name} ({k.key_id}): no stored secret" for k in plan.stale]
        result.changed = sum((plan.keep is None) + len(plan.stale) for plan in plans)
        if not result.changed:
            result.reason = f"{len(plans)} keys exist with their scope and stored secrets"
        if ctx.dry_run:
            if not result.changed:
                _verify_keys(ctx, api, result, probe_writes=False)
            return result
        deletions = [f"- {k.name} ({k.key_id}): {plan.why}" for plan in plans
                     for k in plan.stale]
        if deletions:
            # Asked before anything is made, so a refusal leaves the account as it was.
            confirm(ctx, f"B2: replace or delete {len(deletions)} application key(s); "
                    "anything still using them loses access", deletions)
        for plan in plans:
            if plan.keep is None:
                if plan.bucket is None:
                    raise StepFailed(f"B2 key {plan.params.name}: bucket "
                                     f"{p.b2.buckets[plan.params.bucket].name} does not "
                                     "exist; run ensure_buckets first")
                created = b2.create_key(api, plan.params.name, list(plan.params.capabilities),
                                        plan.bucket.bucket_id)
                store.put(plan.params.name, created.info.key_id, created.secret)
            for key in plan.stale:
                b2.delete_key(api, key.key_id)
        if result.changed:
            made = sum(plan.keep is None for plan in plans)
            gone = sum(len(plan.stale) for plan in plans)
            result.reason = f"{made} key(s) made, {gone} deleted"
        _verify_keys(ctx, api, result, probe_writes=True)
    return result


def verify_app_keys(ctx: RunContext, probe_writes: bool = True) -> StepResult:
    """Each key's scope as B2 lists it and as B2 grants it to the stored secret; a key
    without writeFiles really cannot upload, one with write and delete really can."""
    with timed(StepResult("b2 keys", ", ".join(k.name for k in ctx.params.b2.keys),
                          dry_run=ctx.dry_run)) as result:
        _verify_keys(ctx, master_api(ctx), result, probe_writes and not ctx.dry_run)
    return result


def _verify_keys(ctx: RunContext, api: B2Api, result: StepResult, probe_writes: bool) -> None:
    p = ctx.params
    buckets = {role: b2.get_bucket(api, bp.name) for role, bp in p.b2.buckets.items()}
    listed = b2.list_keys(api)
    stored = key_store(ctx.env).load()
    master_id = ctx.secrets.get("b2_key_id").reveal()
    for kp in p.b2.keys:
        bucket = buckets[kp.bucket]
        bucket_name = p.b2.buckets[kp.bucket].name
        if kp.name not in stored:
            result.check(f"{kp.name} stored", False, f"no secret in {key_store(ctx.env).path}")
            continue
        key_id, secret = stored[kp.name]
        if not result.check(f"{kp.name} not the master key", key_id != master_id,
                            "a scoped key of its own" if key_id != master_id else
                            "the stored key IS the master key"):
            continue
        key = next((k for k in listed if k.key_id == key_id), None)
        if key is None:
            result.check(f"{kp.name} listed", False, f"key {key_id} is not in the account")
            continue
        on_bucket = bucket is not None and key.bucket_id == bucket.bucket_id
        result.check(f"{kp.name} listed scope", _scope_ok(key, kp, bucket),
                     f"{','.join(sorted(key.capabilities))} on "
                     f"{bucket_name if on_bucket else key.bucket_id or 'ALL buckets'}")
        # What B2 grants the stored secret is the real scope, whatever the listing says.
        app = b2.authorize(p.b2.realm, key_id, secret)
        granted = b2.allowed(app)
        caps = set(map(str, granted.get("capabilities") or []))
        bucket_ok = bucket is not None and granted.get("bucketId") == bucket.bucket_id
        result.check(f"{kp.name} granted scope",
                     bucket_ok and caps == set(kp.capabilities)
                     and not caps & ACCOUNT_CAPABILITIES,
                     f"{','.join(sorted(caps))} on {granted.get('bucketName') or 'ALL buckets'}")
        if not probe_writes or bucket is None:
            continue
        probe = f"{PROBE_PREFIX}{ctx.run_id}-{kp.name}"
        error = b2.upload_error(app, bucket.bucket_id, bucket.name, probe, b"casera write probe")
        if "writeFiles" not in kp.capabilities:
            result.check(f"{kp.name} cannot write", error is not None,
                         f"upload refused ({error[:90]})" if error else
                         "an upload WORKED with a read-only key")
            if error is None:
                b2.delete_file(api, bucket.bucket_id, bucket.name, probe)
        elif "deleteFiles" in kp.capabilities:
            if error is None:
                b2.delete_file(app, bucket.bucket_id, bucket.name, probe)
            result.check(f"{kp.name} can write", error is None,
                         "uploaded and deleted a probe" if error is None else error[:160])
