"""Renders the Casera stack file (``docker stack deploy`` compose format) from settings.

The template is plain YAML with ``string.Template`` placeholders, so no templating dependency
is needed and the file reads as the stack it becomes. Every value is substituted JSON-encoded
(JSON is valid YAML), so an image reference, a password-free DSN part or a list cannot break
the YAML around it.

Where this machine's kernel forces local values (no IPVS: ``dnsrr`` and host-mode ports; no
ESP: no overlay encryption), the settings carry the choice explicitly and the rendered file
states it in its header. :data:`SEED_NETWORK` holds the production values from the seed.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NotRequired, TypedDict

from casera.errors import CaseraError
from casera.operator_secrets import Secret
from casera.params import REPLICA_RANGES

if TYPE_CHECKING:
    from casera.params import Params

TEMPLATE = Path(__file__).with_name("casera-stack.tmpl.yml")

SERVICES = ("api", "worker", "admin", "redis", "dozzle", "backup")
# Dozzle listens on each manager's loopback only (see the template); reach it by SSH tunnel.
DOZZLE_PORT = 9999
# The B2 keys are the scoped application keys bootstrap makes (never the master key): the api
# gets the uploads read/write key and the certs read-only key, the worker only the latter.
# The backup service gets only the backups keys (write and list under their prefixes: redis/
# for snapshots, postgres/ for the nightly pg_dump) and the database password for pg_dump.
SECRETS = ("db_password", "secret_key", "b2_uploads_key_id", "b2_uploads_key",
           "b2_certs_key_id", "b2_certs_key", "apns_key", "b2_backups_key_id", "b2_backups_key",
           "b2_pgdump_key_id", "b2_pgdump_key")

# Which secrets each service gets (the rest get none). The worker never gets the uploads
# (read/write) key; the backup service only its own.
SERVICE_SECRETS: dict[str, tuple[str, ...]] = {
    "api": ("db_password", "secret_key", "b2_uploads_key_id", "b2_uploads_key",
            "b2_certs_key_id", "b2_certs_key", "apns_key"),
    "worker": ("db_password", "secret_key", "b2_certs_key_id", "b2_certs_key", "apns_key"),
    "backup": ("db_password", "b2_backups_key_id", "b2_backups_key", "b2_pgdump_key_id",
               "b2_pgdump_key"),
}
# The SECRET_KEY the apps also accept (never sign with), mounted beside secret_key when the
# settings name a version for it: the previous key after a rotation, or the new one during
# its first roll (the contract: casera_localcloud/images/apps/tokens.py).
SECRET_KEY_ACCEPT = "secret_key_accept"
# docker_secrets: mounts only (the plan). legacy_env: the values in env vars and no mounts
# (before the migration). both: env vars and mounts, the secret migration's first roll.
SecretsSource = Literal["docker_secrets", "legacy_env", "both"]
SECRETS_SOURCES: tuple[str, ...] = ("docker_secrets", "legacy_env", "both")
# Docker secret file mode: read by the owner (the app's uid) only.
SECRET_FILE_MODE = 0o400


def secret_env_var(name: str) -> str:
    """The env var a secret lived in before the migration (the stand-in apps' fallback,
    ``apps.common.env_var_for``): DB_PASSWORD, SECRET_KEY, ..."""
    return name.upper()


SECRET_ENV_VARS: dict[str, str] = {secret_env_var(name): name for name in SECRETS}


def secret_env_in(container_spec: dict[str, object] | None) -> list[str]:
    """The names (never the values) of the env vars in a ContainerSpec that carry one of the
    stack's secrets the legacy way."""
    env = (container_spec or {}).get("Env") or []
    names = [str(item).split("=", 1)[0] for item in env]  # type: ignore[union-attr]
    return sorted(name for name in names if name in SECRET_ENV_VARS)


def file_forms(value: str) -> list[str]:
    """How a secret value can appear in a rendered stack file: as itself, and JSON-escaped
    with ``$`` doubled (what the legacy env lines hold)."""
    return [form for form in {value, _compose_text(value)[1:-1]} if form]


class DatabaseSettings(TypedDict):
    host: str  # the pooler (Neon's -pooler host); the apps never use the direct endpoint
    port: int
    name: str
    user: str
    sslmode: str  # "require" at least; the password comes from the db_password secret
    hostaddr: str | None  # where the host name points from the nodes when DNS cannot say


class NetworkSettings(TypedDict):
    overlay_network: str  # made (and probed) by bootstrap before the stack: external here
    overlay_encrypted: bool
    endpoint_mode: Literal["vip", "dnsrr"]
    api_publish_mode: Literal["ingress", "host"]
    api_published_port: int


class BackupSettings(TypedDict):
    interval_s: int  # between snapshots
    prefix: str  # file-name prefix in the backups bucket (the backup key is restricted to it)
    realm: str  # 'production' for Backblaze, or the emulator's base URL
    # The nightly pg_dump: from the direct host (pg_dump needs session features the pooler
    # lacks), every dump_interval_s, under dump_prefix (the pg_dump key's). Absent: no dumps.
    dump_interval_s: NotRequired[int]
    dump_prefix: NotRequired[str]
    dump_host: NotRequired[str]
    dump_port: NotRequired[int]


class StackSettings(TypedDict):
    env: str
    images: dict[str, str]  # service -> image reference, for every name in SERVICES
    replicas: dict[str, int]
    users: dict[str, str]  # service -> "uid:gid" or a user name the image knows; never root
    healthchecks: dict[str, list[str]]  # service -> healthcheck `test` (["CMD", ...])
    secrets: dict[str, str]  # name in SECRETS -> versioned Docker secret, e.g. ..._v1
    database: DatabaseSettings
    network: NetworkSettings
    backup: BackupSettings
    # How long a stopping api task keeps serving while its /readyz says 503, so the load
    # balancer takes it out of rotation before it stops accepting (Params.lb_unhealthy_after_s).
    # 0 or absent: it stops at once.
    api_drain_s: NotRequired[int]
    # Roll-out pace (params.StackParams): Docker's healthcheck interval for every service,
    # and the pause between replaced tasks. Absent: 10 s each.
    healthcheck_interval_s: NotRequired[int]
    update_delay_s: NotRequired[int]
    # How long Swarm watches each updated task before the update counts as done (Docker's
    # `monitor`). Absent: 30 s.
    update_monitor_s: NotRequired[int]
    # Absent: docker_secrets. legacy_env and both need secret_values (every name in SECRETS).
    secrets_source: NotRequired[SecretsSource]
    secret_values: NotRequired[dict[str, Secret]]


# The seed's production networking: encrypted overlay (IPsec; the firewall must pass ESP),
# Swarm virtual IPs, and the api published through the routing mesh.
SEED_NETWORK: NetworkSettings = {
    "overlay_network": "casera",
    "overlay_encrypted": True,
    "endpoint_mode": "vip",
    "api_publish_mode": "ingress",
    "api_published_port": 80,
}

class StackSettingsError(CaseraError):
    """The settings cannot make a valid stack; the message names the key."""


def _require_keys(what: str, given: dict[str, object], needed: tuple[str, ...]) -> None:
    missing = [name for name in needed if name not in given]
    unknown = [name for name in given if name not in needed]
    if missing or unknown:
        raise StackSettingsError(
            f"{what}: missing {missing or 'nothing'}, unknown {unknown or 'nothing'}; "
            f"expected exactly {list(needed)}"
        )


def validate(settings: StackSettings) -> None:
    """Refuse settings that would deploy something the runbooks cannot stand behind."""
    for key in ("images", "replicas", "users", "healthchecks"):
        _require_keys(key, settings[key], SERVICES)  # type: ignore[literal-required]
    source = settings.get("secrets_source", "docker_secrets")
    if source not in SECRETS_SOURCES:
        raise StackSettingsError(f"secrets_source: {source!r} must be one of "
                                 f"{', '.join(SECRETS_SOURCES)}")
    if source != "legacy_env":
        names = dict(settings["secrets"])
        names.pop(SECRET_KEY_ACCEPT, None)  # optional
        _require_keys("secrets", names, SECRETS)
    if source != "docker_secrets":
        _require_keys("secret_values", dict(settings.get("secret_values") or {}), SECRETS)
    for service in SERVICE_SECRETS:
        if source != "legacy_env" and not _numeric_owner(settings["users"][service]):
            raise StackSettingsError(
                f"users.{service}: {settings['users'][service]!r} must be numeric uid:gid, "
                "the owner of its secret files (Docker cannot resolve a user name there)")
    for service, count in settings["replicas"].items():
        low, high = REPLICA_RANGES[service]
        if not low <= count <= high:
            raise StackSettingsError(
                f"replicas.{service}: {count} is outside {low}-{high} (the seed's range)")
    for service, user in settings["users"].items():
        if user.split(":", 1)[0] in ("", "0", "root"):
            raise StackSettingsError(f"users.{service}: {user!r} is root; every service runs "
                                     "as a non-root user")
    for service, test in settings["healthchecks"].items():
        if not test or test[0] not in ("CMD", "CMD-SHELL"):
            raise StackSettingsError(f"healthchecks.{service}: {test!r} must start with CMD "
                                     "or CMD-SHELL")
    drain = settings.get("api_drain_s", 0)
    if not 0 <= drain <= 600:
        raise StackSettingsError(f"api_drain_s: {drain} must be 0..600 seconds (the LB's "
                                 "health-check window)")
    network = settings["network"]
    if network["endpoint_mode"] not in ("vip", "dnsrr"):
        raise StackSettingsError(f"network.endpoint_mode: {network['endpoint_mode']!r}")
    if network["api_publish_mode"] not in ("ingress", "host"):
        raise StackSettingsError(f"network.api_publish_mode: {network['api_publish_mode']!r}")
    if network["endpoint_mode"] == "dnsrr" and network["api_publish_mode"] == "ingress":
        # Docker refuses this pair at deploy time; say so before anything is sent.
        raise StackSettingsError("network: endpoint_mode dnsrr needs api_publish_mode host "
                                 "(the routing mesh only works with virtual IPs)")
    if settings["database"]["sslmode"] in ("disable", "allow", "prefer"):
        raise StackSettingsError(f"database.sslmode: {settings['database']['sslmode']!r} "
                                 "allows plain text; use require or verify-full")


def _numeric_owner(user: str) -> bool:
    uid, _, gid = user.partition(":")
    return uid.isdigit() and (gid or uid).isdigit()


def _compose_text(value: str) -> str:
    """A value as a JSON string with ``$`` doubled: `docker stack deploy` interpolates
    ``$NAME`` in the file, so a secret holding a ``$`` would otherwise arrive altered."""
    return json.dumps(value).replace("$", "$$")


def _secret_values(settings: StackSettings) -> dict[str, str]:
    source = settings.get("secrets_source", "docker_secrets")
    secrets, users = settings["secrets"], settings["users"]
    values: dict[str, str] = {}
    for service, names in SERVICE_SECRETS.items():
        uid, _, gid = users[service].partition(":")
        accept = [SECRET_KEY_ACCEPT] if SECRET_KEY_ACCEPT in secrets and (
            "secret_key" in names) else []
        mounts = [] if source == "legacy_env" else [
            {"source": name, "target": name, "uid": uid, "gid": gid or uid,
             "mode": SECRET_FILE_MODE} for name in (*names, *accept)]
        values[f"mounts_{service}"] = json.dumps(mounts)
        # The values are revealed here only, into the text of a legacy stack file.
        env = [] if source == "docker_secrets" else [
            f"{secret_env_var(name)}: "
            f"{_compose_text(settings['secret_values'][name].reveal())}" for name in names]
        values[f"legacy_env_{service}"] = "\n      ".join(env)
    values["secret_definitions"] = json.dumps({} if source == "legacy_env" else {
        name: {"external": True, "name": secrets[name]} for name in SECRETS
        + ((SECRET_KEY_ACCEPT,) if SECRET_KEY_ACCEPT in secrets else ())})
    values["secrets_source_note"] = {
        "docker_secrets": "Secrets: files under /run/secrets only.",
        "legacy_env": "Secrets: LEGACY - values in the services' env vars, none mounted.",
        "both": "Secrets: env vars AND files (the secret migration's first roll).",
    }[source]
    return values


def _notes(network: NetworkSettings) -> dict[str, str]:
    return {
        "overlay_encryption_note": (
            "on (IPsec; nodes must pass ESP, IP protocol 50)" if network["overlay_encrypted"]
            else "OFF - traffic between nodes is not encrypted"),
        "endpoint_mode_note": (
            "vip (Swarm virtual IPs)" if network["endpoint_mode"] == "vip"
            else "dnsrr (no virtual IPs: DNS returns task addresses)"),
        "api_publish_mode_note": (
            "ingress (routing mesh: every node answers)" if network["api_publish_mode"]
            == "ingress" else "host (only nodes running an api task answer)"),
    }


def render_stack(settings: StackSettings) -> str:
    """The stack file's YAML text for these settings (validated first)."""
    validate(settings)
    network = settings["network"]
    db = settings["database"]
    drain_s = settings.get("api_drain_s", 0)
    values: dict[str, str] = {
        "env": settings["env"],
        "env_json": json.dumps(settings["env"]),
        "db_host": json.dumps(db["host"]),
        "db_port": json.dumps(str(db["port"])),
        "db_name": json.dumps(db["name"]),
        "db_user": json.dumps(db["user"]),
        "db_sslmode": json.dumps(db["sslmode"]),
        "db_extra_hosts": json.dumps([f"{db['host']}:{db['hostaddr']}"] if db.get("hostaddr")
                                     else []),
        "overlay_network": json.dumps(network["overlay_network"]),
        "endpoint_mode": json.dumps(network["endpoint_mode"]),
        "api_publish_mode": json.dumps(network["api_publish_mode"]),
        "api_published_port": json.dumps(int(network["api_published_port"])),
        "api_update_order": json.dumps("start-first" if network["api_publish_mode"] == "ingress"
                                       else "stop-first"),
        "dozzle_port": str(DOZZLE_PORT),
        "backup_interval_s": json.dumps(str(int(settings["backup"]["interval_s"]))),
        "backup_interval_note": f"{int(settings['backup']['interval_s'])} s",
        "backup_prefix": json.dumps(settings["backup"]["prefix"]),
        "b2_realm": json.dumps(settings["backup"]["realm"]),
        "dump_interval_s": json.dumps(str(int(settings["backup"].get("dump_interval_s", 0)))),
        "dump_interval_note": (f"{int(settings['backup']['dump_interval_s'])} s"
                               if settings["backup"].get("dump_interval_s") else "never (off)"),
        "dump_prefix": json.dumps(settings["backup"].get("dump_prefix", "postgres/")),
        "dump_host": json.dumps(settings["backup"].get("dump_host", db["host"])),
        "dump_port": json.dumps(str(settings["backup"].get("dump_port", db["port"]))),
        "backup_extra_hosts": json.dumps(
            [f"{settings['backup'].get('dump_host', db['host'])}:{db['hostaddr']}"]
            if db.get("hostaddr") else []),
        "api_drain_s": json.dumps(str(int(drain_s))),
        # Docker kills a task this long after SIGTERM: the drain plus time for the requests in
        # flight (the app waits up to 5 s for them) and its exit.
        "api_stop_grace": json.dumps(f"{int(drain_s) + 10}s"),
        "healthcheck_interval": json.dumps(f"{int(settings.get('healthcheck_interval_s', 10))}s"),
        "update_delay": json.dumps(f"{int(settings.get('update_delay_s', 10))}s"),
        "update_monitor": json.dumps(f"{int(settings.get('update_monitor_s', 30))}s"),
        **_notes(network),
    }
    for service in SERVICES:
        values[f"image_{service}"] = json.dumps(settings["images"][service])
        values[f"replicas_{service}"] = json.dumps(int(settings["replicas"][service]))
        values[f"user_{service}"] = json.dumps(settings["users"][service])
        values[f"healthcheck_{service}"] = json.dumps(list(settings["healthchecks"][service]))
    values.update(_secret_values(settings))
    # substitute(), not safe_substitute(): a placeholder without a value is a bug to see now.
    return string.Template(TEMPLATE.read_text()).substitute(values)


def write_stack(settings: StackSettings, path: Path) -> Path:
    path.write_text(render_stack(settings))
    return path


def settings_from_params(
    params: Params,
    *,
    secrets: dict[str, str],
    docker_socket_gid: int,
    images: dict[str, str] | None = None,
    secrets_source: SecretsSource | None = None,
    secret_values: dict[str, Secret] | None = None,
    db_user: str | None = None,
) -> StackSettings:
    """Stack settings from an environment's params plus what only the cluster knows: the
    current secret versions and the group owning the nodes' Docker socket (Dozzle's group,
    so it reads the socket without being root). ``images`` overrides the params' images;
    ``db_user`` the params' ``neon.role`` (the role whose password the stack mounts, after a
    DB password rotation the other login role)."""
    services = params.services
    users = {name: getattr(services, name).user for name in SERVICES}
    users["dozzle"] = f"{users['dozzle'].split(':')[0]}:{docker_socket_gid}"
    neon, swarm = params.neon, params.swarm
    settings: StackSettings = {
        "env": params.env,
        "images": images or {name: getattr(services, name).image for name in SERVICES},
        "replicas": {name: getattr(services, name).replicas for name in SERVICES},
        "users": users,
        "healthchecks": {name: list(getattr(services, name).healthcheck) for name in SERVICES},
        "secrets": dict(secrets),
        "database": {"host": neon.pooler_host, "port": neon.pooler_port, "name": neon.database,
                     "user": db_user or neon.role, "sslmode": neon.sslmode,
                     "hostaddr": neon.node_hostaddr},
        "network": {"overlay_network": swarm.overlay_network,
                    "overlay_encrypted": swarm.overlay_encrypted,
                    "endpoint_mode": swarm.endpoint_mode,
                    "api_publish_mode": swarm.publish_mode,
                    "api_published_port": swarm.api_published_port},
        "backup": {"interval_s": params.redis.backup.interval_min * 60,
                   "prefix": params.redis.backup.prefix,
                   "realm": params.b2.node_realm or params.b2.realm,
                   "dump_interval_s": params.neon.backup.interval_min * 60,
                   "dump_prefix": params.neon.backup.prefix,
                   "dump_host": neon.direct_host, "dump_port": neon.direct_port},
        "api_drain_s": params.lb_unhealthy_after_s(),
        "healthcheck_interval_s": params.stack.healthcheck_interval_s,
        "update_delay_s": params.stack.update_delay_s,
        "update_monitor_s": params.stack.update_monitor_s,
        "secrets_source": secrets_source or params.stack.secrets_source,
    }
    if secret_values is not None:
        settings["secret_values"] = dict(secret_values)
    return settings
