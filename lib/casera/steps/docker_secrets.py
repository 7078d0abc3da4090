"""Docker secrets: versioned names, values from the secrets source, never printed.

Docker secrets are immutable and unreadable once created, so each carries labels: which
secret it is, its version, and a digest of its value. A run whose value matches the newest
version's digest changes nothing; a new value becomes ``<name>_v<N+1>`` (the secret migration
runbook then moves services to it and removes the old version). The digest is a SHA-256 of a
long random value (these secrets are generated or issued, never human passwords), so it
reveals nothing useful.
"""

from __future__ import annotations

import hashlib
import re
from contextlib import ExitStack

import docker

from casera.context import RunContext
from casera.errors import SecretMissingError
from casera.progress import wait_for
from casera.result import StepResult, timed
from casera.secrets import Secret
from casera.steps import storage
from casera.steps.access import node_addresses
from casera.steps.swarm import manager_client

PREFIX = "casera"
VERSIONED = re.compile(rf"^{PREFIX}_(?P<name>[a-z0-9_]+)_v(?P<version>\d+)$")


def digest(name: str, value: Secret) -> str:
    return hashlib.sha256(f"{name}\0{value.reveal()}".encode()).hexdigest()[:24]


def versions(client: docker.DockerClient) -> dict[str, list[tuple[int, str, str]]]:
    """name -> [(version, docker secret name, digest)], oldest first."""
    found: dict[str, list[tuple[int, str, str]]] = {}
    for secret in client.secrets.list(filters={"label": f"{PREFIX}.secret"}):
        match = VERSIONED.match(secret.name)
        if not match:
            continue
        labels = secret.attrs["Spec"].get("Labels") or {}
        found.setdefault(match["name"], []).append(
            (int(match["version"]), secret.name, labels.get(f"{PREFIX}.digest", "")))
    return {name: sorted(items) for name, items in found.items()}


def ensure_docker_secrets(ctx: RunContext, values: dict[str, Secret]) -> StepResult:
    """Each of ``values`` exists as its newest version with that value."""
    with timed(StepResult("docker secrets", f"{len(values)} secrets",
                          dry_run=ctx.dry_run)) as result, ExitStack() as stack:
        if ctx.dry_run and not node_addresses(ctx):
            result.changed = len(values)
            result.diff = [f"+ {PREFIX}_{name}_v1" for name in sorted(values)]
            return result
        client = manager_client(ctx, stack)
        existing = versions(client)
        for name, value in sorted(values.items()):
            history = existing.get(name, [])
            wanted = digest(name, value)
            if history and history[-1][2] == wanted:
                continue
            version = history[-1][0] + 1 if history else 1
            secret_name = f"{PREFIX}_{name}_v{version}"
            result.diff.append(f"+ {secret_name}" + (" (value changed)" if history else ""))
            result.changed += 1
            if not ctx.dry_run:
                client.secrets.create(name=secret_name, data=value.reveal().encode(),
                                      labels={f"{PREFIX}.secret": name,
                                              f"{PREFIX}.version": str(version),
                                              f"{PREFIX}.digest": wanted})
        if not result.changed:
            result.reason = "every secret's newest version holds the current value"
        if ctx.dry_run:
            return result
        now = wait_for("the new secrets to be listed", lambda: (
            lambda v: v if all(name in v for name in values) else None)(versions(client)), 30)
        for name in sorted(values):
            latest = now[name][-1]
            result.check(name, latest[2] == digest(name, values[name]),
                         f"{latest[1]} ({len(now[name])} version(s)); value not shown")
    return result


def current_names(client: docker.DockerClient, names: list[str]) -> dict[str, str]:
    """name -> the newest versioned Docker secret name, for the stack file."""
    existing = versions(client)
    missing = [n for n in names if n not in existing]
    if missing:
        raise LookupError(f"no Docker secret for {', '.join(missing)}: run the secrets step")
    return {name: existing[name][-1][1] for name in names}


def stack_secret_values(ctx: RunContext) -> dict[str, Secret]:
    """Every secret the stack mounts, by its name in the stack file: the app's own secrets
    from the secrets source, the scoped B2 keys from the B2 key store (never the master key).
    In a dry run on a fresh environment the B2 keys do not exist yet: placeholders stand in,
    so the plan can still be shown."""
    values = {name: ctx.secrets.get(name) for name in ("db_password", "secret_key", "apns_key")}
    try:
        keys = storage.app_key_values(ctx)
    except SecretMissingError:
        if not ctx.dry_run:
            raise
        keys = {}
    for kp in ctx.params.b2.keys:
        key = keys.get(kp.name)
        key_id = key.key_id if key else f"(key {kp.name} not made yet)"
        values[f"b2_{kp.bucket}_key_id"] = Secret(f"b2_{kp.bucket}_key_id", key_id)
        values[f"b2_{kp.bucket}_key"] = key.secret if key else Secret(
            f"b2_{kp.bucket}_key", f"(key {kp.name} not made yet)")
    return values
