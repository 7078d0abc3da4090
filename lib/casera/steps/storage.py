"""Backblaze B2: the private buckets and the scoped application keys the services use.

Everything here talks to B2 with the master key (``b2_key_id``/``b2_application_key``), which
only ever makes and checks the scoped keys: no service is handed the master key.

B2 shows a key's secret once, in the answer that creates it. So the secrets of the keys made
here live in the operator's B2 key store (:mod:`casera.b2_keys`: the git-ignored
``secrets/<env>.b2-keys.env``, mode 0600) until the Docker-secrets step hands them on
(:func:`app_key_values`). A key that exists in B2 but whose secret is not in that file (a CI
machine, a second operator) is useless to this run, so it is replaced, as a rotation:
:func:`ensure_app_keys` makes and stores the new key and records the old one as *retiring*
(it deletes nothing); the Docker-secrets step makes a new secret version and the stack step
rolls the services onto it; then :func:`retire_replaced_keys` deletes the old key, behind the
approval gate, once Swarm shows that nothing mounts it any more. A run that stops anywhere in
between leaves the services with a key that still works.

Lifecycle rules are reconciled for a bucket whose params set ``keep_days`` (the backups
bucket): exactly one rule, over every file name, hiding a file that many days after its upload
and deleting it a day later. A key with ``name_prefix`` is restricted to those names by B2 on
every call (listing, upload, download, hide, delete).

Not reconciled here: keys in the account whose names are not in params (left alone, they may
be an operator's), lifecycle rules of buckets without ``keep_days``, CORS, and the account's
spending caps (web UI only).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial

from casera.b2_keys import B2KeyStore, key_store
from casera.context import RunContext
from casera.errors import ProviderError, SecretMissingError, StepFailed, WaitTimeout
from casera.operator_secrets import Secret
from casera.params import B2KeyParams, BucketParams, Params
from casera.plan import Plan, apply
from casera.progress import wait_for
from casera.providers import b2
from casera.result import StepResult, timed

PROBE_PREFIX = ".casera-probe/"
# Capabilities that would let a leaked app key act beyond its bucket's files.
ACCOUNT_CAPABILITIES = frozenset({"listKeys", "writeKeys", "deleteKeys", "writeBuckets",
                                  "deleteBuckets", "listAllBucketNames"})


# ------------------------------------------------------------------ the keys' secrets


@dataclass(frozen=True)
class AppKey:
    """A scoped application key as the services need it."""

    name: str
    key_id: str
    secret: Secret
    bucket_name: str
    for_services: tuple[str, ...]


def app_key_values(ctx: RunContext) -> dict[str, AppKey]:
    """The scoped keys params name, with their secrets, for the Docker-secrets step.

    Raises :class:`SecretMissingError` when a key was never made or its secret was lost:
    run :func:`ensure_app_keys` first (it replaces a key whose secret is gone).
    """
    keys = stored_app_keys(ctx)
    for kp in ctx.params.b2.keys:
        if kp.name not in keys:
            raise SecretMissingError(
                f"B2 key {kp.name}: its secret is not in {key_store(ctx.env).path}; run "
                f"ensure_app_keys (it makes the key, or replaces one whose secret was lost)")
    return keys


def stored_app_keys(ctx: RunContext) -> dict[str, AppKey]:
    """The scoped keys params name whose secrets are stored; the others are left out."""
    stored = key_store(ctx.env).load()
    return {kp.name: AppKey(kp.name, *stored[kp.name], ctx.params.b2.buckets[kp.bucket].name,
                            tuple(kp.for_services))
            for kp in ctx.params.b2.keys if kp.name in stored}


# ------------------------------------------------------------------ buckets


def master_api(ctx: RunContext) -> b2.B2Api:
    return b2.authorize(ctx.params.b2.realm, ctx.secrets.get("b2_key_id"),
                        ctx.secrets.get("b2_application_key"))


def ensure_buckets(ctx: RunContext) -> StepResult:
    """``b2.buckets`` (uploads, certs, backups) exist and are private, with the lifecycle rule
    their ``keep_days`` asks for. A missing bucket is created; a public one is made private
    behind the gate (its public URLs stop working); a lifecycle rule that differs is replaced
    behind the gate (it decides when B2 deletes files)."""
    p = ctx.params
    names = [bp.name for bp in p.b2.buckets.values()]
    with timed(StepResult("b2 buckets", ", ".join(names), dry_run=ctx.dry_run)) as result:
        api = master_api(ctx)
        found = {bp.name: b2.get_bucket(api, bp.name) for bp in p.b2.buckets.values()}
        missing = [bp for bp in p.b2.buckets.values() if found[bp.name] is None]
        wrong = [(bp, have) for bp in p.b2.buckets.values()
                 if (have := found[bp.name]) is not None and have.bucket_type != bp.type]
        rules = [(bp, have) for bp in p.b2.buckets.values()
                 if (have := found[bp.name]) is not None and bp.keep_days is not None
                 and list(have.lifecycle_rules) != lifecycle_rules(bp)]
        plan = Plan(gate_title=f"B2: make {len(wrong)} public bucket(s) private (their public "
                    f"download URLs stop working); set the lifecycle rule of {len(rules)}")
        for bp in missing:
            keep = f", files kept {bp.keep_days} days" if bp.keep_days else ""
            plan.add(f"+ bucket {bp.name} ({bp.type}{keep})",
                     partial(_create_bucket, api, ctx.env, bp.name, bp.type,
                             lifecycle_rules(bp)))
        for bp, have in rules:
            plan.add(f"~ bucket {bp.name} lifecycle: {list(have.lifecycle_rules)} -> "
                     f"{lifecycle_rules(bp)}",
                     partial(b2.set_lifecycle_rules, api, have.bucket_id, lifecycle_rules(bp)),
                     destructive=True)
        for bp, have in wrong:
            plan.add(f"~ bucket {bp.name}: {have.bucket_type} -> {bp.type}",
                     partial(b2.set_bucket_type, api, have.bucket_id, bp.type),
                     destructive=True)
        applied = apply(ctx, result, plan)
        if not plan:
            result.reason = f"{len(names)} buckets exist and are private"
        elif applied.dry_run:
            return result
        else:
            result.reason = (f"{len(missing)} created, {len(wrong)} made private, "
                             f"{len(rules)} lifecycle rule(s) set")
        _verify_buckets(api, p, result)  # read-only: fine in a dry run that plans nothing
    return result


def lifecycle_rules(bp: BucketParams) -> list[dict[str, object]]:
    """The bucket's lifecycle rules as B2 stores them: none, or one over every file name
    that hides a file ``keep_days`` after its upload and deletes it a day after that
    (https://www.backblaze.com/docs/cloud-storage-lifecycle-rules)."""
    if bp.keep_days is None:
        return []
    return [{"daysFromHidingToDeleting": 1, "daysFromUploadingToHiding": bp.keep_days,
             "fileNamePrefix": ""}]


def _create_bucket(api: b2.B2Api, env: str, name: str, bucket_type: str,
                   rules: list[dict[str, object]] | None = None) -> b2.BucketInfo:
    try:
        return b2.create_bucket(api, name, bucket_type, rules)
    except ProviderError as exc:
        if exc.code != b2.NAME_TAKEN:
            raise
        # Bucket names are global across B2 accounts; the provider already re-read ours.
        raise StepFailed(f"B2 bucket name {name} is taken by another B2 account; choose "
                         f"another name in params/{env}.yaml b2.buckets") from None


def verify_buckets(ctx: RunContext) -> StepResult:
    """Read-only: each bucket exists, is private, and refuses an anonymous download."""
    p = ctx.params.b2
    with timed(StepResult("b2 buckets", ", ".join(bp.name for bp in p.buckets.values()),
                          dry_run=ctx.dry_run)) as result:
        _verify_buckets(master_api(ctx), ctx.params, result)
    return result


def _verify_buckets(api: b2.B2Api, params: Params, result: StepResult) -> None:
    for bp in params.b2.buckets.values():
        have = b2.get_bucket(api, bp.name)
        if have is None:
            result.check(bp.name, False, "does not exist")
            continue
        result.check(f"{bp.name} type", have.bucket_type == bp.type, have.bucket_type)
        if bp.keep_days is not None:
            result.check(f"{bp.name} lifecycle", list(have.lifecycle_rules)
                         == lifecycle_rules(bp), f"files hidden {bp.keep_days} days after "
                         "upload, deleted a day later" if list(have.lifecycle_rules)
                         == lifecycle_rules(bp) else f"rules {list(have.lifecycle_rules)}")
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
    keep: b2.KeyInfo | None  # the key the services get; None: a new one is made
    retire: list[b2.KeyInfo]  # every other key of that name: deleted once nothing mounts it
    why: str


def _scope_ok(key: b2.KeyInfo, kp: B2KeyParams, bucket: b2.BucketInfo | None) -> bool:
    return (bucket is not None and key.bucket_id == bucket.bucket_id
            and set(key.capabilities) == set(kp.capabilities)
            and (key.name_prefix or None) == kp.name_prefix)


def _describe(kp: B2KeyParams, bucket_name: str) -> str:
    where = f"{bucket_name}/{kp.name_prefix}*" if kp.name_prefix else bucket_name
    return (f"{kp.name}: {','.join(kp.capabilities)} on {where} "
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
            why = (f"exists, secret stored; {len(others)} other key(s) of that name without "
                   "a stored secret" if others else "exists, secret stored")
            plans.append(_KeyPlan(kp, bucket, mine, others, why))
            continue
        if mine is not None:
            why = "scope differs from params (B2 keys cannot be changed)"
        elif same_name:
            why = "exists but its secret is not stored here (B2 shows it only at creation)"
        else:
            why = "does not exist"
        plans.append(_KeyPlan(kp, bucket, None, list(same_name), why))
    return plans


def _key_plans(ctx: RunContext, api: b2.B2Api) -> list[_KeyPlan]:
    buckets = {role: b2.get_bucket(api, bp.name) for role, bp in ctx.params.b2.buckets.items()}
    return _plan_keys(ctx.params, buckets, b2.list_keys(api), key_store(ctx.env).load())


def keys_to_replace(ctx: RunContext) -> set[str]:
    """Names of the keys :func:`ensure_app_keys` would make anew: the Docker-secrets step's
    dry run plans a new secret version for them, as the real run will make one."""
    return {plan.params.name for plan in _key_plans(ctx, master_api(ctx)) if plan.keep is None}


def ensure_app_keys(ctx: RunContext) -> StepResult:
    """One application key per ``b2.keys`` entry, restricted to its bucket with exactly its
    capabilities, made with the master key; its secret kept in ``secrets/<env>.b2-keys.env``.

    Reused when it exists with that scope and its secret is stored. Otherwise a new key is
    made and stored, and every other key of that name is recorded as retiring in the same
    write. Nothing is deleted here: the services still mount the old key until the stack step
    rolls them onto the new Docker secret, and :func:`retire_replaced_keys` deletes it after.
    """
    p = ctx.params
    store = key_store(ctx.env)
    with timed(StepResult("b2 keys", ", ".join(k.name for k in p.b2.keys),
                          dry_run=ctx.dry_run)) as result:
        api = master_api(ctx)
        decisions = _key_plans(ctx, api)
        recorded = store.retiring()
        plan = Plan()
        made = noted = 0
        for decision in decisions:
            kp = decision.params
            retire = set(recorded.get(kp.name, [])) | {k.key_id for k in decision.retire}
            notes = [f"~ key {k.name} ({k.key_id}): retiring; deleted after the stack step, "
                     "once no service mounts it"
                     for k in decision.retire if k.key_id not in recorded.get(kp.name, [])]
            noted += len(notes)
            if decision.keep is None:
                made += 1
                if decision.bucket is None and not ctx.dry_run:
                    raise StepFailed(f"B2 key {kp.name}: bucket {p.b2.buckets[kp.bucket].name} "
                                     "does not exist; run ensure_buckets first")
                plan.add(f"+ key {_describe(kp, p.b2.buckets[kp.bucket].name)}: "
                         f"{decision.why}", partial(_make_key, api, store, kp, decision.bucket,
                                                    retire))
                for line in notes:
                    plan.add(line)  # recorded by the same write that stores the new key
            else:
                for number, line in enumerate(notes):
                    plan.add(line, partial(store.set_retiring, kp.name, retire)
                             if number == 0 else None)
        applied = apply(ctx, result, plan)
        if not plan:
            result.reason = f"{len(decisions)} keys exist with their scope and stored secrets"
        if applied.dry_run:
            if not made:
                _verify_keys(ctx, api, result, probe_writes=False)
            return result
        if plan:
            result.reason = (f"{made} key(s) made, {noted} recorded as retiring (the old keys "
                             "keep working until retire_replaced_keys deletes them)")
        _verify_keys(ctx, api, result, probe_writes=True)
    return result


def _make_key(api: b2.B2Api, store: B2KeyStore, kp: B2KeyParams,
              bucket: b2.BucketInfo | None, retire: set[str]) -> b2.KeyInfo:
    if bucket is None:  # refused before the plan was applied; here for the type checker
        raise StepFailed(f"B2 key {kp.name}: its bucket does not exist")
    created = b2.create_key(api, kp.name, list(kp.capabilities), bucket.bucket_id,
                            kp.name_prefix)
    store.put(kp.name, created.info.key_id, created.secret, retiring=retire)
    return created.info


# ------------------------------------------------------------------ retiring replaced keys


# key id -> what in the cluster still mounts a Docker secret version holding that key id.
KeyUsers = Callable[[RunContext, dict[str, B2KeyParams]], dict[str, list[str]]]


def swarm_key_users(ctx: RunContext, keys: dict[str, B2KeyParams]) -> dict[str, list[str]]:
    """key id -> every service spec, rollback target and live task that mounts a Docker
    secret version holding that key id, read from Swarm. No servers: nothing can mount it."""
    # Imported here: swarm_secrets imports this module for the key values it versions.
    from casera.steps import swarm_secrets
    from casera.steps.access import node_addresses
    from casera.steps.swarm import manager_client

    if not keys or not node_addresses(ctx):
        return {key_id: [] for key_id in keys}
    with ExitStack() as stack:
        # Raises when no manager answers: an unreadable cluster never counts as "unused".
        client = manager_client(ctx, stack)
        holding = {key_id: swarm_secrets.versions_holding(
            client, swarm_secrets.b2_secret_names(kp)[0], Secret("b2 key id", key_id))
            for key_id, kp in keys.items()}
        users = swarm_secrets.secret_users(client, set().union(*holding.values()))
    return {key_id: sorted({use for secret_id in ids for use in users.get(secret_id, [])})
            for key_id, ids in holding.items()}


def retire_replaced_keys(ctx: RunContext, timeout: float = 600,
                         key_users: KeyUsers = swarm_key_users) -> StepResult:
    """Delete the keys :func:`ensure_app_keys` replaced, once nothing can still use them.

    A replaced key is deleted only when Swarm shows that no service spec, no rollback target
    of a service still updating, and no live task mounts a Docker secret version holding
    its id (a key without its id authorizes nothing). The step waits up to ``timeout`` for a
    rolling update to finish; a key still mounted then is left in place, named in a red
    check, and the next run retires it. The deletions wait for the approval gate. The current
    key (the one whose secret is stored) is never a candidate.
    """
    p = ctx.params
    store = key_store(ctx.env)
    with timed(StepResult("b2 old keys", ", ".join(k.name for k in p.b2.keys),
                          dry_run=ctx.dry_run)) as result:
        api = master_api(ctx)
        listed = {k.key_id for k in b2.list_keys(api)}
        # The same decisions ensure_app_keys follows: in a dry run they show what that step
        # would record; in a real run after it, exactly what it recorded (plus any key of that
        # name made since, e.g. by a run that stopped between creating and storing a key).
        decisions = _key_plans(ctx, api)
        candidates = {k.key_id: (d.params, k) for d in decisions for k in d.retire}
        current = {d.keep.key_id for d in decisions if d.keep is not None}
        recorded = store.retiring()
        stale_records = sorted(i for ids in recorded.values() for i in ids
                               if i not in listed or i in current)
        keys = {key_id: kp for key_id, (kp, _) in candidates.items()}
        users = key_users(ctx, keys) if candidates else {}
        if any(users.values()) and not ctx.dry_run:
            # Read-only: a rolling update onto the new key may still be under way.
            def all_free() -> dict[str, list[str]] | None:
                now = key_users(ctx, keys)
                return None if any(now.values()) else now

            try:
                users = wait_for("the services to stop mounting the replaced B2 keys",
                                 all_free, timeout, interval=3)
            except WaitTimeout:
                users = key_users(ctx, keys)
        held = sorted(key_id for key_id in candidates if users.get(key_id))
        plan = Plan(gate_title=f"B2: delete {len(candidates) - len(held)} replaced "
                    "application key(s)")
        if stale_records:
            # Deleted by hand or by another machine's run: only the note goes.
            plan.show(f"  record of {len(stale_records)} retiring key(s) no longer in B2 "
                      "dropped")
        for key_id, (_, key) in sorted(candidates.items(), key=lambda item: item[0]):
            using = users.get(key_id, [])
            mounts = (f"{len(using)} ({'; '.join(using[:3])}"
                      f"{'; ...' if len(using) > 3 else ''})")
            if not using:
                plan.add(f"- key {key.name} ({key_id}): replaced; no service spec, rollback "
                         "target or live task mounts it (read from Swarm just now)",
                         partial(b2.delete_key, api, key_id), destructive=True)
            elif ctx.dry_run:
                # The run waits for the rolling update, then deletes it: a planned change.
                plan.add(f"- key {key.name} ({key_id}): still mounted by {mounts}; the run "
                         f"waits up to {timeout:.0f} s for the services to roll onto the new "
                         "key", destructive=True)
            else:
                plan.show(f"  key {key.name} ({key_id}): still mounted by {mounts} after "
                          f"{timeout:.0f} s; left in place")
        applied = apply(ctx, result, plan)
        if not candidates:
            result.reason = "no replaced key waits to be deleted"
        if applied.dry_run:
            return result
        for name in {kp.name for kp, _ in candidates.values()} | set(recorded):
            store.set_retiring(name, [k for k in held if candidates[k][0].name == name])
        if not candidates:
            return result
        free = sorted(key_id for key_id in candidates if key_id not in held)
        remaining = {k.key_id for k in b2.list_keys(api)} if free else listed
        result.reason = (f"{len(free)} deleted" + (f", {len(held)} still in use" if held
                                                   else ""))
        for key_id in free:
            result.check(f"{candidates[key_id][1].name} {key_id} deleted",
                         key_id not in remaining,
                         "no longer listed" if key_id not in remaining else "STILL listed")
        for key_id in held:
            result.check(f"{candidates[key_id][1].name} {key_id} retired", False,
                         f"still mounted after {timeout:.0f} s: {'; '.join(users[key_id][:3])}; "
                         "left in place, a re-run retires it once the services rolled")
    return result


def verify_app_keys(ctx: RunContext, probe_writes: bool = True) -> StepResult:
    """Each key's scope as B2 lists it and as B2 grants it to the stored secret; a key
    without writeFiles really cannot upload, one with write and delete really can."""
    with timed(StepResult("b2 keys", ", ".join(k.name for k in ctx.params.b2.keys),
                          dry_run=ctx.dry_run)) as result:
        _verify_keys(ctx, master_api(ctx), result, probe_writes and not ctx.dry_run)
    return result


def _verify_keys(ctx: RunContext, api: b2.B2Api, result: StepResult, probe_writes: bool) -> None:
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
                     f"{bucket_name if on_bucket else key.bucket_id or 'ALL buckets'}"
                     + (f"/{key.name_prefix}*" if key.name_prefix else ""))
        # What B2 grants the stored secret is the real scope, whatever the listing says.
        app = b2.authorize(p.b2.realm, key_id, secret)
        grant = b2.granted(app)
        caps = set(grant.capabilities)
        bucket_ok = bucket is not None and grant.bucket_id == bucket.bucket_id
        result.check(f"{kp.name} granted scope",
                     bucket_ok and caps == set(kp.capabilities)
                     and not caps & ACCOUNT_CAPABILITIES and grant.name_prefix == kp.name_prefix,
                     f"{','.join(sorted(caps))} on {grant.bucket_name or 'ALL buckets'}"
                     + (f"/{grant.name_prefix}*" if grant.name_prefix else ""))
        if not probe_writes or bucket is None:
            continue
        probe = f"{kp.name_prefix or ''}{PROBE_PREFIX}{ctx.run_id}-{kp.name}"
        if "writeFiles" in kp.capabilities and "deleteFiles" not in kp.capabilities:
            _probe_append_only(api, app, kp, bucket, probe, result)
            continue
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


def _probe_append_only(api: b2.B2Api, app: b2.B2Api, kp: B2KeyParams, bucket: b2.BucketInfo,
                       probe: str, result: StepResult) -> None:
    """A key that writes but must not delete (the backup key): B2 lets it upload under its
    prefix, and refuses it a delete, an upload outside its prefix and a listing outside it,
    so a node holding it can add snapshots but neither erase nor read the others' files."""
    try:
        file_id: str | None = b2.upload_bytes(app, bucket.bucket_id, bucket.name, probe,
                                              b"casera write probe")
        error = None
    except ProviderError as exc:
        file_id, error = None, str(exc)
    result.check(f"{kp.name} can write", error is None,
                 f"uploaded {probe}" if error is None else error[:160])
    if file_id is not None:
        refused = b2.delete_file_error(app, bucket.bucket_id, bucket.name, probe, file_id)
        result.check(f"{kp.name} cannot delete", refused is not None,
                     f"delete refused ({refused[:90]})" if refused else
                     "a delete WORKED with the backup key")
        b2.delete_file(api, bucket.bucket_id, bucket.name, probe)
    if not kp.name_prefix:
        return
    outside = PROBE_PREFIX + probe.rsplit("/", 1)[-1]
    error = b2.upload_error(app, bucket.bucket_id, bucket.name, outside, b"casera probe")
    result.check(f"{kp.name} cannot write outside {kp.name_prefix}", error is not None,
                 f"upload refused ({error[:90]})" if error else "an upload outside WORKED")
    if error is None:
        b2.delete_file(api, bucket.bucket_id, bucket.name, outside)
    refused = b2.list_error(app, bucket.bucket_id, bucket.name, "")
    result.check(f"{kp.name} cannot list outside {kp.name_prefix}", refused is not None,
                 f"listing the whole bucket refused ({refused[:90]})" if refused else
                 "listing the whole bucket WORKED")
