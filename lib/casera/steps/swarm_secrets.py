"""Docker secrets: versioned names, values from the secrets source, never printed.

Docker secrets are immutable and unreadable once created, so each carries labels: which
secret it is, its version, and a digest of its value. A run whose value matches the newest
version's digest changes nothing; a new value becomes ``<name>_v<N+1>`` (the secret migration
runbook then moves services to it and removes the old version). The digest is a SHA-256 of a
long random value (these secrets are generated or issued, never human passwords), so it
reveals nothing useful.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Any

from casera.context import RunContext
from casera.db_roles import app_credential, app_role
from casera.operator_secrets import Secret
from casera.params import B2KeyParams
from casera.plan import Plan, apply
from casera.progress import wait_for
from casera.providers import docker_swarm
from casera.result import StepResult, timed
from casera.stack.render import SECRET_KEY_ACCEPT, SECRETS
from casera.steps import storage
from casera.steps.swarm import DockerClient, cluster_or_reason

PREFIX = "casera"
VERSIONED = re.compile(rf"^{PREFIX}_(?P<name>[a-z0-9_]+)_v(?P<version>\d+)$")


def digest(name: str, value: Secret) -> str:
    return hashlib.sha256(f"{name}\0{value.reveal()}".encode()).hexdigest()[:24]


def versions(client: DockerClient) -> dict[str, list[tuple[int, str, str]]]:
    """name -> [(version, docker secret name, digest)], oldest first."""
    found: dict[str, list[tuple[int, str, str]]] = {}
    for secret in docker_swarm.secrets(client, f"{PREFIX}.secret"):
        match = VERSIONED.match(secret["name"])
        if not match:
            continue
        found.setdefault(match["name"], []).append(
            (int(match["version"]), secret["name"], secret["labels"].get(f"{PREFIX}.digest", "")))
    return {name: sorted(items) for name, items in found.items()}


# On each db_password version: the login role its password is for. The stack file's DB_USER
# is read from the version it mounts, so a task never gets one role with another's password.
DB_ROLE_LABEL = f"{PREFIX}.db_role"


def ensure_swarm_secrets(ctx: RunContext, values: dict[str, Secret],
                         db_role: str | None = None) -> StepResult:
    """Each of ``values`` exists as its newest version with that value. A new db_password
    version is labelled with the role of the app's credential (``db_roles.app_credential``,
    where ``stack_secret_values`` takes its value from; ``db_role`` in a dry run: the role
    an earlier step of the run would make the credential of)."""
    with timed(StepResult("docker secrets", f"{len(values)} secrets",
                          dry_run=ctx.dry_run)) as result:
        cluster, result.reason = cluster_or_reason(ctx)
        client = cluster.manager if cluster else None
        existing = versions(client) if cluster else {}
        plan = Plan()
        for name, value in sorted(values.items()):
            history = existing.get(name, [])
            wanted = digest(name, value)
            if history and history[-1][2] == wanted:
                continue
            version = history[-1][0] + 1 if history else 1
            secret_name = f"{PREFIX}_{name}_v{version}"
            # The value is revealed only inside the call that sends it to the manager.
            labels = {f"{PREFIX}.secret": name, f"{PREFIX}.version": str(version),
                      f"{PREFIX}.digest": wanted}
            if name == "db_password":
                labels[DB_ROLE_LABEL] = db_role or app_role(ctx)
            plan.add(f"+ {secret_name}" + (" (value changed)" if history else ""),
                     functools.partial(_create, client, secret_name, value, labels))
        if not plan and cluster is not None:
            result.reason = "every secret's newest version holds the current value"
        if apply(ctx, result, plan).dry_run:
            return result
        now = wait_for("the new secrets to be listed", lambda: (
            lambda v: v if all(name in v for name in values) else None)(versions(client)), 30)
        for name in sorted(values):
            latest = now[name][-1]
            result.check(name, latest[2] == digest(name, values[name]),
                         f"{latest[1]} ({len(now[name])} version(s)); value not shown")
    return result


def _create(client: DockerClient, name: str, value: Secret, labels: dict[str, str]) -> str:
    return docker_swarm.create_secret(client, name, value.reveal().encode(), labels)


# Task states in which a task has, or will get, its secrets mounted: everything before a
# terminal state (Engine API TaskState enum,
# https://docs.docker.com/reference/api/engine/version/v1.57/schemas/TaskState/).
LIVE_TASK_STATES = frozenset({"new", "allocated", "pending", "assigned", "accepted",
                              "preparing", "ready", "starting", "running"})
# Service update states in which Swarm may still roll back to PreviousSpec on its own
# (failure_action: rollback) or an operator may resume it (UpdateStatus.State, Engine API
# Service schema: https://docs.docker.com/reference/api/engine/version/v1.57/schemas/Service/).
UNSETTLED_UPDATE_STATES = frozenset({"updating", "paused", "rollback_started",
                                     "rollback_paused"})


def versions_holding(client: DockerClient, name: str, value: Secret) -> set[str]:
    """Ids of the versions of secret ``name`` whose digest label says they hold ``value``."""
    wanted = digest(name, value)
    return {secret["id"] for secret in docker_swarm.secrets(client, f"{PREFIX}.secret")
            if secret["labels"].get(f"{PREFIX}.secret") == name
            and secret["labels"].get(f"{PREFIX}.digest") == wanted}


def _mounted(spec: dict[str, Any] | None) -> set[str]:
    container = ((spec or {}).get("TaskTemplate") or spec or {}).get("ContainerSpec") or {}
    return {ref.get("SecretID", "") for ref in container.get("Secrets") or []}


def secret_users(client: DockerClient, secret_ids: set[str]) -> dict[str, list[str]]:
    """secret id -> what can still read it: a service whose spec mounts it (its next tasks
    get it), a service mid-update whose previous spec mounts it (a rollback brings it back),
    and every task not yet in a terminal state that mounts it (a running container keeps the
    file it was started with). Read from the managers, never assumed from the stack file."""
    users: dict[str, list[str]] = {secret_id: [] for secret_id in secret_ids}
    if not secret_ids:
        return users
    names = {}
    for service in docker_swarm.services(client):
        names[service["id"]] = service["name"]
        for secret_id in _mounted(service["spec"]) & secret_ids:
            users[secret_id].append(f"service {service['name']}")
        update = service["update_state"]
        if update in UNSETTLED_UPDATE_STATES:
            for secret_id in _mounted(service["previous_spec"]) & secret_ids:
                users[secret_id].append(f"service {service['name']} ({update}: may roll back)")
    for task in docker_swarm.tasks(client):
        state = (task.get("Status") or {}).get("State", "")
        if state not in LIVE_TASK_STATES:
            continue
        for secret_id in _mounted(task.get("Spec")) & secret_ids:
            service = names.get(task.get("ServiceID", ""), task.get("ServiceID", "?")[:12])
            users[secret_id].append(f"task {service}.{task.get('Slot', '?')} "
                                    f"{task['ID'][:12]} ({state})")
    return users


def b2_secret_names(kp: B2KeyParams) -> tuple[str, str]:
    """The stack's secret names for a scoped key: (its id, its secret), after its
    ``secret_name`` or else its bucket role."""
    name = kp.secret_name or kp.bucket
    return f"b2_{name}_key_id", f"b2_{name}_key"


def db_role_of(client: DockerClient, version: str | None) -> str | None:
    """The login role a db_password version's password is for (its label); None for a
    version made before versions carried it, or one that does not exist."""
    for secret in docker_swarm.secrets(client, f"{PREFIX}.secret"):
        if secret["name"] == version:
            return secret["labels"].get(DB_ROLE_LABEL) or None
    return None


def current_names(client: DockerClient, names: list[str]) -> dict[str, str]:
    """name -> the newest versioned Docker secret name, for the stack file."""
    existing = versions(client)
    missing = [n for n in names if n not in existing]
    if missing:
        raise LookupError(f"no Docker secret for {', '.join(missing)}: run the secrets step")
    return {name: existing[name][-1][1] for name in names}


def deployed_secret_key(client: DockerClient) -> dict[str, str]:
    """target -> Docker secret version, of the api spec's SECRET_KEY mounts (``secret_key``,
    ``secret_key_accept``); empty before the stack exists."""
    for service in docker_swarm.services(client):
        if service["name"] == f"{PREFIX}_api":
            container = service["spec"]["TaskTemplate"].get("ContainerSpec") or {}
            return {ref["File"]["Name"]: ref["SecretName"]
                    for ref in container.get("Secrets") or []
                    if ref.get("File", {}).get("Name") in ("secret_key", SECRET_KEY_ACCEPT)}
    return {}


def stack_secret_names(client: DockerClient) -> dict[str, str]:
    """What the stack file mounts: the newest version of each secret and, as
    ``secret_key_accept`` (verified, never signed with), the SECRET_KEY that signed until
    now when the newest is new, else the one accepted already: tokens signed before a
    rotation keep verifying after it."""
    names = current_names(client, list(SECRETS))
    deployed = deployed_secret_key(client)
    existing = {name for items in versions(client).values() for _, name, _ in items}
    signing, accepted = deployed.get("secret_key"), deployed.get(SECRET_KEY_ACCEPT)
    if signing and signing != names["secret_key"] and signing in existing:
        names[SECRET_KEY_ACCEPT] = signing
    elif accepted and accepted != names["secret_key"] and accepted in existing:
        names[SECRET_KEY_ACCEPT] = accepted
    return names


def stack_secret_values(ctx: RunContext) -> dict[str, Secret]:
    """Every secret the stack mounts, by its name in the stack file: the app's own secrets
    from the secrets source, the scoped B2 keys from the B2 key store (never the master key).
    In a dry run on a fresh environment the B2 keys do not exist yet: placeholders stand in,
    so the plan can still be shown."""
    values = {name: ctx.secrets.get(name) for name in ("secret_key", "apns_key")}
    # After a rotation the rotation's credential, else CASERA_DB_PASSWORD (neon.role's).
    values["db_password"] = app_credential(ctx).password
    if ctx.dry_run:
        # A key the key step will make (or make anew) gets a new secret version in the real
        # run: the plan must say so, so a stored (old) value must not stand in for it.
        replaced = storage.keys_to_replace(ctx)
        keys = {name: key for name, key in storage.stored_app_keys(ctx).items()
                if name not in replaced}
    else:
        keys = storage.app_key_values(ctx)
    for kp in ctx.params.b2.keys:
        key = keys.get(kp.name)
        id_name, key_name = b2_secret_names(kp)
        key_id = key.key_id if key else f"(key {kp.name} not made yet)"
        values[id_name] = Secret(id_name, key_id)
        values[key_name] = key.secret if key else Secret(
            key_name, f"(key {kp.name} not made yet)")
    return values
