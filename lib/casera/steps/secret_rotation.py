"""Secret rotation on a live stack (runbooks/rotate-secrets.ipynb): each selected secret gets
a new value, the services roll onto it, and the old value stays valid until no task uses it.
One pair of rolling updates covers every selected class:

- roll 1 (:func:`roll_new_beside_old`): the newest B2, APNs and DB password versions (the
  DB user changes with its password: ``DB_USER`` is read from the mounted version's role
  label), and the new SECRET_KEY mounted as ``secret_key_accept`` while the current one keeps
  signing;
- :func:`verify_rolled`: no task uses an older B2/APNs/DB password version; every api and
  worker task accepts the new SECRET_KEY;
- roll 2 (:func:`roll_old_out`): the stack as the bootstrap renders it: the new SECRET_KEY
  signs, the previous one stays accepted (``swarm_secrets.stack_secret_names``).

Per class:
- ``db_password``: two login roles used alternately, ``neon.role`` (the owner of the
  database and of every table) and ``<role>_alt`` (:func:`casera.db_roles.alternate_role`),
  a member of ``neon.role`` whose sessions act as it (``ALTER ROLE ... SET role``), so both
  have the same privileges on every table and sequence, present and future, and whatever
  either creates is ``neon.role``'s: nothing a migration makes is out of the other's reach.
  Made on first use through the Neon API (on Neon a member of neon_superuser, CREATEROLE,
  never superuser), the grant by SQL as the app's role over the direct host. On Neon a
  password reset invalidates the old one at once, so a rotation never resets the role in
  use: :func:`new_db_password` resets the IDLE role's password (Neon generates it and shows
  it once; it goes straight into ``secrets/<env>.db-role.env``, never through parameters,
  logs or outputs) and records the role in use as retiring; roll 1 moves every task onto
  (idle role, new password) while the old role still works, so tasks still on it and the
  connections they hold open through the pooler are untouched; after the rolls,
  :func:`retire_old_db_role` checks that nothing mounts a version for the old role and resets
  its password to a value nobody keeps (its credential is refused from then on, direct and
  through the pooler); the role stays, idle, for the next rotation, which goes back to it.
- ``secret_key``: the store's value (``CASERA_SECRET_KEY``, the operator puts a new random
  one there) as a new version; the contract on the app is in
  ``casera_localcloud/images/apps/tokens.py``.
- ``b2_keys``: per ``b2.keys`` entry, a new application key with the same scope, made with the
  master key and stored in the B2 key store (the old key recorded as retiring in the same
  write); then ``storage.retire_replaced_keys`` deletes the old key once nothing mounts it.
- ``apns_key``: the store's value (Apple issues APNs keys) as a new version; the previous one
  stays ``params.stack.apns_grace_h`` hours after the new one was made (a ``docker service
  rollback`` mounts it again), then the clean-up removes it.
- clean-up (:func:`clean_old_versions`): versions no service, rollback target or live task
  references are removed, keeping the newest ``params.stack.keep_secret_versions``.

A rotation has an id (default: today's UTC date). The new B2 keys and the new DB credential
record it in their stores, so a re-run of the same rotation finds them made and changes
nothing; SECRET_KEY and APNs need
none (a version whose digest equals the store's value is made; the deployed file says what is
rolled). A run stopped anywhere converges when run again.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from casera.b2_keys import B2KeyStore, key_store
from casera.context import RunContext
from casera.db_roles import (
    DbCredential,
    DbRoleStore,
    alternate_role,
    app_credential,
    role_store,
    role_store_path,
)
from casera.errors import CaseraError, ProviderError, StepFailed, WaitTimeout
from casera.operator_secrets import Secret
from casera.params import B2KeyParams
from casera.plan import Plan, apply
from casera.progress import wait_for
from casera.providers import b2, docker_swarm, neon, postgres
from casera.result import StepResult, timed
from casera.steps import stack, storage
from casera.steps.access import node_ssh
from casera.steps.database import neon_client
from casera.steps.secret_migration import _roll
from casera.steps.swarm import cluster_or_reason
from casera.steps.swarm_secrets import (
    DB_ROLE_LABEL,
    SECRET_KEY_ACCEPT,
    b2_secret_names,
    deployed_secret_key,
    ensure_swarm_secrets,
    secret_users,
    stack_secret_names,
    stack_secret_values,
    versions,
)

CLASSES = ("db_password", "secret_key", "b2_keys", "apns_key")
ROTATION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")
PLANNED = "secret_rotation"  # ctx.planned key: what a dry run's earlier steps would do


@dataclass(frozen=True)
class Selection:
    classes: tuple[str, ...]
    rotation_id: str


def select(ctx: RunContext, secrets: str = "all", rotation: str = "") -> Selection:
    """The classes to rotate and the rotation's id, validated before anything remote."""
    # -p values are read as YAML: a list, or an id that looks like a number, arrive typed.
    secrets = ",".join(secrets) if isinstance(secrets, list) else str(secrets)
    rotation = str(rotation) if rotation is not None else ""
    asked = [s.strip() for s in secrets.split(",") if s.strip()]
    if not asked:
        raise CaseraError(f"secrets={secrets!r}: name the secrets to rotate, e.g. "
                          f"-p secrets=all or -p secrets=apns_key,b2_keys ({', '.join(CLASSES)})")
    unknown = [s for s in asked if s not in (*CLASSES, "all")]
    if unknown:
        raise CaseraError(f"secrets: {', '.join(unknown)} unknown; use all or a comma list of "
                          f"{', '.join(CLASSES)} (casera run rotate-secrets --env {ctx.env} "
                          "-p secrets=...)")
    rotation_id = rotation or datetime.now(UTC).strftime("%Y-%m-%d")
    if not ROTATION_ID.match(rotation_id):
        raise CaseraError(f"rotation={rotation!r}: 1-40 letters, digits, '.', '_' or '-' "
                          "(default: today's UTC date); a new id starts a new rotation")
    classes = CLASSES if "all" in asked else tuple(c for c in CLASSES if c in asked)
    return Selection(classes, rotation_id)


def _planned(ctx: RunContext) -> dict[str, Any]:
    return ctx.planned.setdefault(PLANNED, {})


def secret_names(ctx: RunContext, selection: Selection) -> list[str]:
    """The stack's Docker secret names the selected classes rotate."""
    names = [c for c in ("db_password", "secret_key", "apns_key") if c in selection.classes]
    if "b2_keys" in selection.classes:
        names += [n for kp in ctx.params.b2.keys for n in b2_secret_names(kp)]
    return names


def _skip(result: StepResult, selection: Selection, wanted: str) -> bool:
    if wanted not in selection.classes:
        result.reason = f"{wanted} not selected (secrets: {', '.join(selection.classes)})"
        return True
    return False


# ------------------------------------------------------------------ B2 application keys


def new_b2_keys(ctx: RunContext, selection: Selection) -> StepResult:
    """Per ``b2.keys`` entry not yet made by this rotation: a new key with the same scope,
    stored with the old one recorded as retiring (nothing is deleted here)."""
    p = ctx.params
    with timed(StepResult("new B2 keys", ", ".join(k.name for k in p.b2.keys),
                          dry_run=ctx.dry_run)) as result:
        if _skip(result, selection, "b2_keys"):
            return result
        store = key_store(ctx.env)
        api = storage.master_api(ctx)
        listed = {k.key_id for k in b2.list_keys(api)}
        stored = store.load()
        retiring = store.retiring()
        plan = Plan()
        for kp in p.b2.keys:
            current = stored.get(kp.name)
            if current is None or current[0] not in listed:
                raise StepFailed(f"B2 key {kp.name}: no current key in {store.path} that B2 "
                                 "lists; run the bootstrap (its storage step makes one), then "
                                 "this runbook")
            if store.rotation(kp.name) == selection.rotation_id:
                result.note(kp.name, f"made by rotation {selection.rotation_id} already")
                continue
            bucket = b2.get_bucket(api, p.b2.buckets[kp.bucket].name)
            retire = set(retiring.get(kp.name, [])) | {current[0]}
            plan.add(f"+ key {kp.name}: a new key with the same scope; {current[0]} retiring "
                     "(deleted after the roll, once nothing mounts it)",
                     partial(_new_key, api, store, kp, bucket, retire, selection.rotation_id))
            _planned(ctx).setdefault("b2", []).append(kp.name)
        if not plan:
            result.reason = f"every key was made by rotation {selection.rotation_id}"
        if apply(ctx, result, plan).dry_run or not plan:
            return result
        now = {k.key_id for k in b2.list_keys(api)}
        for kp in p.b2.keys:
            key_id, _ = store.load()[kp.name]
            result.check(f"{kp.name} new key listed", key_id in now and key_id not in listed,
                         f"{key_id} (the old one keeps working until it is retired)")
    return result


def _new_key(api: b2.B2Api, store: B2KeyStore, kp: B2KeyParams,
             bucket: b2.BucketInfo | None, retire: set[str], rotation_id: str) -> str:
    if bucket is None:
        raise StepFailed(f"B2 key {kp.name}: bucket of {kp.bucket} does not exist")
    created = b2.create_key(api, kp.name, list(kp.capabilities), bucket.bucket_id,
                            kp.name_prefix)
    # One atomic write: the new key, the old one as retiring, and this rotation's id.
    store.put(kp.name, created.info.key_id, created.secret, retiring=retire,
              rotation=rotation_id)
    return created.info.key_id


def retire_old_b2_keys(ctx: RunContext, selection: Selection) -> StepResult:
    """The B2 keys this rotation replaced, deleted once nothing mounts them
    (``storage.retire_replaced_keys``). A dry run plans the deletions the run will make: the
    keys in use now, which the new keys replace. Not selected: left to the bootstrap's
    storage step, which retires replaced keys too."""
    planned = _planned(ctx).get("b2", []) if ctx.dry_run else []
    if not planned and "b2_keys" in selection.classes:
        return storage.retire_replaced_keys(ctx)
    with timed(StepResult("b2 old keys", ", ".join(k.name for k in ctx.params.b2.keys),
                          dry_run=ctx.dry_run)) as result:
        if _skip(result, selection, "b2_keys"):
            return result
        stored = key_store(ctx.env).load()
        plan = Plan(gate_title="B2: delete the replaced application keys")
        for name in planned:
            plan.add(f"- key {name} ({stored[name][0]}): replaced by this rotation; deleted "
                     "once no service spec, rollback target or live task mounts it",
                     destructive=True)
        apply(ctx, result, plan)
    return result


# ------------------------------------------------------------------ DB password (Neon roles)


@dataclass(frozen=True)
class _Roles:
    api: neon.NeonClient
    project_id: str
    branch_id: str


def _neon_roles(ctx: RunContext) -> _Roles:
    n = ctx.params.neon
    api = neon_client(ctx)
    branch = api.branch_by_name(n.project_id, n.branch)
    if branch is None:
        raise StepFailed(f"neon.branch {n.branch!r}: no such branch in project "
                         f"{n.project_id}; fix params/{ctx.env}.yaml (neon.branch)")
    return _Roles(api, n.project_id, branch.id)


def _roles_pair(ctx: RunContext) -> tuple[str, str]:
    """(the role the app uses, the idle one), validated before anything remote."""
    owner = ctx.params.neon.role
    active = app_credential(ctx).role
    pair = (owner, alternate_role(owner))
    if active not in pair:
        raise StepFailed(f"{role_store_path(ctx.env)}: DB_ROLE={active} is neither of the "
                         f"two login roles {pair[0]} and {pair[1]} (neon.role and its "
                         "alternate); fix the file or neon.role")
    return active, pair[1] if active == owner else owner


def new_db_password(ctx: RunContext, selection: Selection) -> StepResult:
    """The idle login role (the one the app does not use) gets a fresh password from Neon,
    kept in ``secrets/<env>.db-role.env`` with the role the app uses now recorded as
    retiring (nothing is revoked here: the app's role keeps working). Made on first use: the
    alternate role, a member of ``neon.role`` whose sessions act as it (the same privileges
    on every table and sequence, present and future)."""
    n = ctx.params.neon
    with timed(StepResult("new DB password", f"{n.project_id}/{n.branch}",
                          dry_run=ctx.dry_run)) as result:
        if _skip(result, selection, "db_password"):
            return result
        store = role_store(ctx.env)
        current = store.current()
        if current is not None and store.rotation() == selection.rotation_id:
            result.reason = (f"made by rotation {selection.rotation_id} already: the app's "
                             f"credential is role {current.role}")
            return result
        active, idle = _roles_pair(ctx)
        roles = _neon_roles(ctx)
        exists = idle in roles.api.roles(roles.project_id, roles.branch_id)
        made: dict[str, Secret] = {}
        plan = Plan()
        if not exists:
            plan.add(f"+ role {idle}: the second login role (Neon API; on Neon a member of "
                     "neon_superuser, never superuser)",
                     partial(_create_role, roles, idle, made))
        if idle != n.role and not (exists and _acts_as(ctx, idle, active)):
            plan.add(f"~ role {idle}: member of {n.role}, its sessions act as {n.role} (ALTER "
                     f"ROLE ... SET role): {n.role}'s privileges on every table and sequence, "
                     f"present and future, and what it creates is {n.role}'s",
                     partial(_make_act_as, ctx, idle, active))
        plan.add(f"~ role {idle}: new password (Neon reset_password, shown once, kept in "
                 f"{store.path.name}); {active}, which the app uses, keeps working until the "
                 "roll is done and nothing uses it",
                 partial(_new_password, ctx, roles, store, idle, made, selection.rotation_id))
        _planned(ctx)["db"] = idle
        if apply(ctx, result, plan).dry_run:
            return result
        new = store.current()
        for label, cred in (("new", new), ("replaced, valid until retired", store.retiring())):
            if cred is None:
                continue
            failure = _login_failure(ctx, cred, pooled=True)
            result.check(f"{cred.role} through the pooler ({label})", failure is None,
                         failure or f"{cred.role} logs in (sslmode={n.sslmode})")
    return result


def _acts_as(ctx: RunContext, member: str, active: str) -> bool:
    with _direct(ctx, app_credential(ctx)) as conn:
        return postgres.acts_as(conn, member, ctx.params.neon.role)


def _make_act_as(ctx: RunContext, member: str, active: str) -> None:
    # As the app's role: on Neon it has CREATEROLE (neon_superuser); the direct host, as for
    # migrations (the pooler's transaction mode is for the app).
    with _direct(ctx, app_credential(ctx)) as conn:
        postgres.make_act_as(conn, member, ctx.params.neon.role)


def _direct(ctx: RunContext, cred: DbCredential) -> Any:
    n = ctx.params.neon
    return postgres.connect(n.direct_host, n.direct_port, n.database, cred.role, cred.password,
                            n.sslmode, n.sslrootcert, n.hostaddr)


def _login_failure(ctx: RunContext, cred: DbCredential, pooled: bool) -> str | None:
    """None when ``cred`` logs in (through the pooler or direct), else the server's words."""
    n = ctx.params.neon
    host, port = (n.pooler_host, n.pooler_port) if pooled else (n.direct_host, n.direct_port)
    try:
        postgres.probe(host, port, n.database, cred.role, cred.password, n.sslmode,
                       n.sslrootcert, n.hostaddr)
    except ProviderError as exc:
        return str(exc).splitlines()[-1][:200]
    return None


def _create_role(roles: _Roles, name: str, made: dict[str, Secret]) -> str:
    made[name] = roles.api.create_role(roles.project_id, roles.branch_id, name)
    return name


def _new_password(ctx: RunContext, roles: _Roles, store: DbRoleStore, idle: str,
                  made: dict[str, Secret], rotation_id: str) -> str:
    # A role made a moment ago comes with its password; else Neon resets it (the idle role
    # is used by nothing, so nothing notices).
    password = made.get(idle) or roles.api.reset_role_password(roles.project_id,
                                                               roles.branch_id, idle)
    # One atomic write: the new credential, this rotation, and the one it replaces.
    store.put(DbCredential(idle, Secret("db_password", password.reveal())), rotation_id,
              retiring=app_credential(ctx))
    return idle


def retire_old_db_role(ctx: RunContext, selection: Selection) -> StepResult:
    """The login role the rotation replaced gets a password nobody keeps (Neon
    reset_password, the answer dropped), once no service spec, rollback target or live task
    mounts a db_password version for it: its credential is refused from then on, direct and
    through the pooler. The role stays, idle, for the next rotation."""
    n = ctx.params.neon
    with timed(StepResult("db old role", f"{n.project_id}/{n.branch}",
                          dry_run=ctx.dry_run)) as result:
        if _skip(result, selection, "db_password"):
            return result
        store = role_store(ctx.env)
        planned = _planned(ctx).get("db") if ctx.dry_run else None
        retiring = DbCredential(app_credential(ctx).role, Secret("db_password", "")) \
            if planned else store.retiring()
        if retiring is None:
            result.reason = "no replaced role to retire"
            return result
        cluster, result.reason = cluster_or_reason(ctx)
        if cluster is None:
            return result
        if not planned:
            using = _db_role_users(ctx, cluster.manager, retiring.role)
            if using:
                result.check(f"{retiring.role}: nothing uses it", False,
                             "still used by " + "; ".join(using[:4]) + ": run the roll first")
                return result
        plan = Plan(gate_title=f"Neon: refuse the replaced DB credential (role "
                    f"{retiring.role})")
        plan.add(f"- role {retiring.role}: password reset to a value nobody keeps (its "
                 "credential is refused from now on, direct and through the pooler; the "
                 "role stays for the next rotation)",
                 partial(_retire, ctx, store, retiring.role), destructive=True)
        if apply(ctx, result, plan).dry_run:
            return result
        if retiring.password.reveal():
            for pooled in (True, False):
                failure = _login_failure(ctx, retiring, pooled)
                result.check(f"old credential refused ({'pooler' if pooled else 'direct'})",
                             failure is not None and "authentication failed" in failure,
                             failure or f"{retiring.role} with its old password LOGS IN")
        new = app_credential(ctx)
        failure = _login_failure(ctx, new, pooled=True)
        result.check(f"{new.role} through the pooler", failure is None,
                     failure or f"{new.role} logs in: the app's credential")
    return result


def _retire(ctx: RunContext, store: DbRoleStore, role: str) -> str:
    roles = _neon_roles(ctx)
    # The new password is dropped unseen: nobody keeps it, so the role cannot log in until a
    # later rotation resets it again.
    roles.api.reset_role_password(roles.project_id, roles.branch_id, role)
    store.retired()
    return role


def _db_role_users(ctx: RunContext, client: Any, role: str) -> list[str]:
    """What still mounts a db_password version for ``role`` (a version without the label
    was made for ``neon.role``, before versions carried it)."""
    ids = {s["id"] for s in docker_swarm.secrets(client, "casera.secret")
           if s["labels"].get("casera.secret") == "db_password"
           and (s["labels"].get(DB_ROLE_LABEL) or ctx.params.neon.role) == role}
    return sorted({u for users in secret_users(client, ids).values() for u in users})


# ------------------------------------------------------------------ Docker secret versions


def new_versions(ctx: RunContext, selection: Selection) -> StepResult:
    """The selected secrets' current values (operator store, B2 key store) as new Docker
    secret versions; a value already the newest version changes nothing."""
    values = stack_secret_values(ctx)
    wanted = {name: values[name] for name in secret_names(ctx, selection)}
    if ctx.dry_run:
        # Keys the B2 step would make do not exist in a dry run: stand-ins make the plan show
        # the versions the run makes.
        for kp in ctx.params.b2.keys:
            if kp.name in _planned(ctx).get("b2", []):
                for name in b2_secret_names(kp):
                    wanted[name] = Secret(name, f"(new key {kp.name}, made by the run)")
        if _planned(ctx).get("db"):
            wanted["db_password"] = Secret("db_password", "(new password of role "
                                           f"{_planned(ctx)['db']}, made by the run)")
    result = ensure_swarm_secrets(ctx, wanted, db_role=_planned(ctx).get("db"))
    _planned(ctx)["versions"] = [line.split()[1] for line in result.diff if line.startswith("+")]
    return result


def _roll_to(ctx: RunContext, result: StepResult, names: Callable[[Any], dict[str, str] | None],
             planned: bool, line: str, title: str, timeout: float) -> None:
    """One rolling update to the stack file rendered with ``names(client)`` (None: as params
    and the swarm say, what the bootstrap renders); nothing when that file is deployed and
    every task runs it. ``planned``: a dry run in which earlier steps would make versions."""
    cluster, result.reason = cluster_or_reason(ctx)
    if cluster is None:
        return
    leader = str(cluster.leader)
    conn = node_ssh(ctx, leader, cluster.nodes[leader])
    text, _ = stack.render_for(ctx, cluster, conn, "docker_secrets", names(cluster.manager))
    if not (ctx.dry_run and planned) and (
            stack.deployed_file(conn).strip() == text.strip()
            and stack.converged(ctx, cluster.manager)):
        result.reason = "the stack file is deployed and every task runs it"
        return
    plan = Plan()
    for version in _planned(ctx).get("versions", []) if ctx.dry_run else []:
        plan.show(f"  new version: {version}")
    # The file is rendered again inside: in a dry run it shows the versions existing now.
    _roll(ctx, cluster, "docker_secrets", result, plan, line, title, timeout,
          names=names(cluster.manager))


def _signing_beside_new(client: Any) -> dict[str, str] | None:
    """Roll 1's names when the newest SECRET_KEY is not signing yet: the newest versions of
    everything, except that the key that signs now keeps signing and the new one is mounted
    as ``secret_key_accept`` (every task accepts it before any task signs with it)."""
    names = stack_secret_names(client)
    signing = deployed_secret_key(client).get("secret_key")
    if signing and signing != names["secret_key"]:
        names[SECRET_KEY_ACCEPT] = names["secret_key"]
        names["secret_key"] = signing
    return names


def roll_new_beside_old(ctx: RunContext, selection: Selection,
                        timeout: float = 900) -> StepResult:
    """Roll 1: every task mounts the new versions (B2 keys, APNs key), and the new
    SECRET_KEY beside the one that still signs."""
    result = StepResult("roll 1: new versions beside the old", "api, worker, backup",
                        dry_run=ctx.dry_run)
    return _roll_step(ctx, result, _signing_beside_new, bool(_planned(ctx).get("versions")),
                      "newest versions; a new SECRET_KEY accepted, not yet signing",
                      "api, worker and backup", timeout)


def roll_old_out(ctx: RunContext, selection: Selection, timeout: float = 900) -> StepResult:
    """Roll 2: the stack as the bootstrap renders it: the new SECRET_KEY signs, the previous
    one stays accepted (tokens signed before the rotation still verify)."""
    result = StepResult("roll 2: sign with the new SECRET_KEY", "api, worker",
                        dry_run=ctx.dry_run)
    planned = any(v.startswith("casera_secret_key_v") for v in _planned(ctx).get("versions", []))
    return _roll_step(ctx, result, lambda client: None, planned,
                      "the new SECRET_KEY signs, the previous one is accepted", "api and worker",
                      timeout)


def _roll_step(ctx: RunContext, result: StepResult,
               names: Callable[[Any], dict[str, str] | None], planned: bool, what: str,
               tasks: str, timeout: float) -> StepResult:
    with timed(result):
        _roll_to(ctx, result, names, planned, f"~ docker stack deploy casera: {what} (rolling)",
                 f"secret rotation, {result.step}: every {tasks} task is replaced, one at a "
                 "time", timeout)
    return result


def verify_rolled(ctx: RunContext, selection: Selection, timeout: float = 300) -> StepResult:
    """After roll 1: no service spec, rollback target or live task uses an older version of
    a rotated B2 or APNs key, and every running api and worker task mounts the newest
    SECRET_KEY (it accepts tokens signed with it before any task signs with it)."""
    with timed(StepResult("every task on the new versions", "api, worker, backup",
                          dry_run=ctx.dry_run)) as result:
        if ctx.dry_run:
            result.reason = "dry run: nothing rolled"
            return result
        cluster, _ = cluster_or_reason(ctx)
        client = cluster.manager  # type: ignore[union-attr]  # a run raises without one
        stack.wait_converged(ctx, client, timeout)
        history = versions(client)
        names = [n for n in secret_names(ctx, selection) if n != "secret_key"]
        ids = {s["name"]: s["id"] for s in docker_swarm.secrets(client, "casera.secret")}
        old = {name: {ids[v[1]]: v[1] for v in history.get(name, [])[:-1]} for name in names}

        old_ids = {i for ids in old.values() for i in ids}

        def free() -> dict[str, list[str]] | None:
            # Non-empty (a key per old id) when nothing uses them: truthy for wait_for.
            users = secret_users(client, old_ids)
            return None if any(users.values()) else users

        users = secret_users(client, old_ids)
        if any(users.values()):
            # Old tasks may still be stopping: wait for them (read-only), then say who is left.
            try:
                users = wait_for("the old tasks mounting older secret versions to stop", free,
                                 timeout, interval=2)
            except WaitTimeout:
                users = secret_users(client, old_ids)
        for name in names:
            using = sorted({u for i in old[name] for u in users.get(i, [])})
            result.check(f"{name}: only {history[name][-1][1]} in use", not using,
                         "; ".join(using[:4]) or f"{len(old[name])} older version(s) unused")
        if "secret_key" in selection.classes:
            newest = history["secret_key"][-1][1]
            services = stack.stack_services(client)
            running = stack.running_tasks(client)
            lacking, seen = [], 0
            for service in ("api", "worker"):
                for task in running.get(services[service]["id"], []):
                    seen += 1
                    refs = (task["Spec"].get("ContainerSpec") or {}).get("Secrets") or []
                    if newest not in {r["SecretName"] for r in refs}:
                        lacking.append(f"{service} task {task['ID'][:12]}")
            result.check(f"secret_key: every api and worker task accepts {newest}",
                         seen > 0 and not lacking,
                         "; ".join(lacking[:4]) or f"{seen} running task(s) mount it")
    return result


# ------------------------------------------------------------------ clean-up


def age_h(created: str, now: datetime | None = None) -> float:
    """Hours since Docker's CreatedAt (RFC 3339 with nanoseconds, which fromisoformat does
    not take: the fraction is cut to microseconds)."""
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$",
                     created)
    if not match:
        raise CaseraError(f"Docker secret CreatedAt {created!r} is not RFC 3339")
    fraction = (match[2] or ".0")[:7]
    zone = "+00:00" if match[3] == "Z" else match[3]
    when = datetime.fromisoformat(f"{match[1]}{fraction}{zone}")
    return ((now or datetime.now(UTC)) - when).total_seconds() / 3600


def clean_old_versions(ctx: RunContext) -> StepResult:
    """Versions beyond the newest ``stack.keep_secret_versions`` of each secret that nothing
    references are removed; the previous APNs version stays ``stack.apns_grace_h`` hours
    after its successor was made (the rollback target)."""
    keep, grace = ctx.params.stack.keep_secret_versions, ctx.params.stack.apns_grace_h
    with timed(StepResult("clean up old secret versions",
                          f"keep newest {keep}; APNs previous for {grace} h",
                          dry_run=ctx.dry_run)) as result:
        cluster, result.reason = cluster_or_reason(ctx)
        if cluster is None:
            return result
        client = cluster.manager
        listed = {s["name"]: s for s in docker_swarm.secrets(client, "casera.secret")}
        planned = set(_planned(ctx).get("versions", [])) if ctx.dry_run else set()
        plan = Plan(gate_title="remove old Docker secret versions nothing references")
        candidates: dict[str, str] = {}
        for name, items in sorted(versions(client).items()):
            # A version the dry run plans counts as the newest, as it will in the run.
            coming = sum(1 for p in planned if p.startswith(f"casera_{name}_v"))
            names = [v[1] for v in items]
            old = names[:max(0, len(names) + coming - keep)]
            if name == "apns_key":
                # The rollback target: the version before the newest (the newest now, when a
                # new one comes), while the newest is younger than the grace period.
                previous = names[-1] if coming else (names[-2] if len(names) > 1 else None)
                if previous in old and (coming or age_h(listed[names[-1]]["created"]) < grace):
                    old.remove(previous)
                    result.note(f"{previous} kept", f"previous APNs key, for a rollback within "
                                f"{grace} h of its successor")
            for version in old:
                candidates[listed[version]["id"]] = version
        users = secret_users(client, set(candidates))
        # A dry run before the rolls: they move every user off an older version, except the
        # SECRET_KEY that roll 2 keeps accepted (the one signing now, when a new one comes).
        deployed = deployed_secret_key(client)
        accepted_after = deployed.get("secret_key" if any(
            p.startswith("casera_secret_key_v") for p in planned) else SECRET_KEY_ACCEPT)
        removing = []
        for secret_id, version in sorted(candidates.items(), key=lambda i: i[1]):
            using = users.get(secret_id, [])
            if not using or (ctx.dry_run and planned and version != accepted_after):
                removing.append(version)
                plan.add(f"- {version}: older than the newest {keep}; "
                         + ("nothing references it" if not using else
                            "the roll moves its users off it"),
                         partial(docker_swarm.remove_secret, client, secret_id),
                         destructive=True)
            else:
                plan.show(f"  {version} kept: still used by {'; '.join(using[:3])}")
        if not plan:
            result.reason = f"no version beyond the newest {keep} is unreferenced"
        if apply(ctx, result, plan).dry_run or not plan:
            return result
        left = {s["name"] for s in docker_swarm.secrets(client, "casera.secret")}
        for version in removing:
            result.check(f"{version} removed", version not in left,
                         "gone" if version not in left else "STILL listed")
    return result
