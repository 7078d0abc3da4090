"""Params: one YAML file per environment, validated before anything touches a remote system.

``load_params(env)`` reads ``params/<env>.yaml``, applies ``-p key.path=value`` overrides,
refuses anything that looks like a secret, validates against the schema below and returns a
frozen :class:`Params`. Every problem is reported at once with the file, the key and the fix.

Where the local cloud must differ from Hetzner because of this machine's kernel (no IPVS, no
ESP), the difference is a params value (``swarm.overlay_encrypted``, ``swarm.endpoint_mode``,
``swarm.publish_mode``), never a code path: the executed notebook shows which was used.

Staging and production are real: besides the schema they refuse ``http://`` endpoints and an
unencrypted overlay always, and, when loaded for a run (``for_run``, the default),
documentation addresses as operator CIDRs and values still holding a placeholder
(``CHANGE-ME``, ``<...>``, ``TODO``). The committed files keep such placeholders on purpose
(a made-up Neon project id or office address would be worse than none), so a run refuses
them with exit 2 before any remote call, and tests read the files with ``for_run=False``.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from casera.errors import ParamIssue, ParamsError
from casera.operator_secrets import SECRET_SPECS, SecretStore
from casera.paths import params_file

# The seed's replica ranges (the seed plan, "Container Distribution").
REPLICA_RANGES: dict[str, tuple[int, int]] = {
    "api": (3, 6),
    "worker": (2, 3),
    "admin": (1, 1),
    "redis": (1, 1),
    "dozzle": (1, 1),
    # Not in the seed: the Redis snapshot job (issue 11). One task, or two would race.
    "backup": (1, 1),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class HetznerParams(_Strict):
    api_endpoint: str = Field(description="Hetzner Cloud API base URL, ending in /v1")
    location: str
    server_type: str
    image: str
    server_count: int = Field(ge=1, le=9)
    name_prefix: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    labels: dict[str, str]
    ssh_key_name: str
    ssh_public_key_file: str

    @field_validator("api_endpoint")
    @classmethod
    def _ends_in_v1(cls, value: str) -> str:
        # hcloud-python builds URLs as endpoint + path (docs/facts.md#hetzner).
        if not re.match(r"^https?://[^/]+(/.*)?/v1$", value):
            raise ValueError("must be an http(s) URL ending in /v1")
        return value


class SSHParams(_Strict):
    port: int = Field(ge=1, le=65535)
    admin_user: str = Field(pattern=r"^[a-z_][a-z0-9_-]*$")
    private_key_file: str
    operator_cidrs: list[str] = Field(min_length=1)
    connect_timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("operator_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)
        return value


# load_balancer: where the nodes see the LB's connections come from (LoadBalancerParams);
# cloudflare: Cloudflare's published ranges, read from its API (GET /ips) on every run.
FirewallSource = Literal["anywhere", "operators", "cluster", "load_balancer", "cloudflare"]


class FirewallRuleParams(_Strict):
    description: str
    protocol: Literal["tcp", "udp", "icmp", "esp", "gre"]
    port: str | None = None
    source: FirewallSource | list[str]

    @model_validator(mode="after")
    def _port_matches_protocol(self) -> FirewallRuleParams:
        if self.protocol in ("tcp", "udp") and not self.port:
            raise ValueError(f"a {self.protocol} rule needs a port (e.g. '443' or '7946-7950')")
        if self.protocol not in ("tcp", "udp") and self.port:
            raise ValueError(f"a {self.protocol} rule has no port; remove port")
        if self.port and not re.fullmatch(r"\d{1,5}(-\d{1,5})?", self.port):
            raise ValueError(f"port {self.port!r} is not a number or a range like '7946-7950'")
        return self


class FirewallParams(_Strict):
    name: str
    rules: list[FirewallRuleParams] = Field(min_length=1)

    @model_validator(mode="after")
    def _esp_for_encrypted_overlay(self) -> FirewallParams:
        # The seed's table forgot ESP; without it an encrypted overlay carries nothing.
        if not any(r.protocol == "esp" and r.source == "cluster" for r in self.rules):
            raise ValueError("no ESP rule from the cluster: the encrypted overlay needs IP "
                             "protocol 50 between nodes; add {protocol: esp, source: cluster}")
        return self


class SwarmParams(_Strict):
    overlay_network: str
    overlay_encrypted: bool
    endpoint_mode: Literal["vip", "dnsrr"]
    publish_mode: Literal["ingress", "host"]
    redis_node: int = Field(ge=1, description="index (1-based) of the server that holds Redis")
    dozzle_on_managers: bool = True
    workers: list[str] = Field(default_factory=list, description=(
        "servers that join as workers, not managers: at most one, the scale-out's "
        "extra_worker (an even node count with an odd manager count)"))
    api_published_port: int = Field(default=80, ge=1, le=65535)
    probe_image: str = Field(description="an image with python3, for the overlay traffic probe")


class ServiceParams(_Strict):
    image: str
    replicas: int
    user: str = Field(description="uid[:gid] inside the image; never root")
    healthcheck: list[str] = Field(min_length=2, description="compose healthcheck test")

    @field_validator("user")
    @classmethod
    def _not_root(cls, value: str) -> str:
        if value.split(":")[0] in ("", "0", "root"):
            raise ValueError("every service runs as a non-root user. Fix: set a uid such as "
                             "10001")
        return value


class ServicesParams(_Strict):
    api: ServiceParams
    worker: ServiceParams
    admin: ServiceParams
    redis: ServiceParams
    dozzle: ServiceParams
    backup: ServiceParams

    @field_validator("api", "worker", "admin", "redis", "dozzle", "backup")
    @classmethod
    def _replicas_in_seed_range(cls, value: ServiceParams, info: ValidationInfo) -> ServiceParams:
        low, high = REPLICA_RANGES[str(info.field_name)]
        if not low <= value.replicas <= high:
            span = f"exactly {low}" if low == high else f"{low} to {high}"
            raise ValueError(f"replicas is {value.replicas}, outside the plan's range ({span}). "
                             f"Fix: set replicas to {span}")
        return value


BucketRole = Literal["uploads", "certs", "backups"]


class BucketParams(_Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9-]{6,50}$")
    type: Literal["allPrivate"] = "allPrivate"
    keep_days: int | None = Field(default=None, ge=1, le=3650, description=(
        "a lifecycle rule hides every file this many days after its upload and deletes it "
        "a day later; None: no lifecycle rule (files are kept)"))


class B2KeyParams(_Strict):
    name: str
    bucket: BucketRole
    capabilities: list[str] = Field(min_length=1)
    name_prefix: str | None = Field(default=None, description=(
        "restrict the key to file names starting with this (B2 enforces it on every call)"))
    for_services: list[Literal["api", "worker", "admin", "backup"]]
    secret_name: str | None = Field(default=None, pattern=r"^[a-z0-9]+$", description=(
        "the stack's Docker secrets for this key are b2_<secret_name>_key_id and "
        "b2_<secret_name>_key; None: the bucket role (a second key on one bucket, such as "
        "the pg_dump key on backups, needs its own)"))


class B2Params(_Strict):
    realm: str = Field(description="'production' for Backblaze, or the emulator's base URL")
    node_realm: str | None = Field(default=None, description=(
        "local cloud: the realm as tasks on the nodes reach it (None: the same as realm)"))
    buckets: dict[BucketRole, BucketParams]
    keys: list[B2KeyParams]


class RedisBackupParams(_Strict):
    interval_min: int = Field(default=15, ge=1, le=1440,
                              description="minutes between the backup service's snapshots")
    bucket: BucketRole = "backups"
    prefix: str = Field(default="redis/", pattern=r"^[A-Za-z0-9._-]+/$",
                        description="file-name prefix of the snapshots (the backup key's)")
    snapshot_command: list[str] = Field(
        default=["python3", "-m", "standin.backup", "--once"], min_length=1,
        description="run inside the backup task for an on-demand snapshot; prints one JSON "
                    "line with the uploaded file's name")


class DatabaseBackupParams(_Strict):
    """The nightly logical dump (issue 12): ``pg_dump`` from the direct host (the pooler has
    no session features), uploaded by the backup service with its own scoped key."""

    interval_min: int = Field(default=1440, ge=1, le=10080, description=(
        "minutes between the backup service's pg_dump runs (1440: nightly)"))
    bucket: BucketRole = "backups"
    prefix: str = Field(default="postgres/", pattern=r"^[A-Za-z0-9._-]+/$",
                        description="file-name prefix of the dumps (the pg_dump key's)")
    max_age_min: int = Field(default=2880, ge=1, description=(
        "the backup drill reports a newest dump older than this red (default: two nights)"))
    dump_command: list[str] = Field(
        default=["python3", "-m", "standin.backup", "--pg-dump-once"], min_length=1,
        description="run inside the backup task for a dump now; prints one JSON line with "
                    "the uploaded file's name")
    dump_timeout_s: int = Field(default=3600, ge=10, le=86400, description=(
        "how long a dump taken now (backup-drill dump_now) may take before the step fails"))


class RedisParams(_Strict):
    backup: RedisBackupParams = RedisBackupParams()
    standby: bool = Field(default=False, description=(
        "a warm standby: a replica (service casera-redis-standby) on a node other than "
        "Redis', so a node loss promotes it instead of restoring from B2 (off in the plan)"))


class NeonParams(_Strict):
    api_endpoint: str
    project_id: str
    branch: str
    database: str
    role: str
    pooler_host: str
    pooler_port: int = 5432
    direct_host: str
    direct_port: int = 5432
    hostaddr: str | None = Field(default=None, description="local cloud: address for the names")
    node_hostaddr: str | None = Field(default=None, description="local cloud: the same, as "
                                      "the nodes reach it (extra_hosts in the stack)")
    sslmode: Literal["require", "verify-ca", "verify-full"]
    sslrootcert: str | None = None
    history_retention_days: int = Field(ge=1, le=30)
    backup: DatabaseBackupParams = DatabaseBackupParams()

    @field_validator("pooler_host")
    @classmethod
    def _pooler(cls, value: str) -> str:
        if "-pooler" not in value.split(".")[0]:
            raise ValueError("the app connects through Neon's PgBouncer: the host's first "
                             "label ends in -pooler (ep-xxx-pooler.region.aws.neon.tech)")
        return value


class LoadBalancerServiceParams(_Strict):
    listen_port: int
    destination_port: int


class LoadBalancerParams(_Strict):
    enabled: bool
    name: str
    type: str = "lb11"
    services: list[LoadBalancerServiceParams] = Field(default_factory=list)
    # The sources a firewall rule ``source: load_balancer`` allows. None: the LB's public
    # addresses (Hetzner's LB reaches public targets from them). The local LB proxies from
    # the host's bridge address instead, so params/local.yaml names that.
    node_facing_cidrs: list[str] | None = None

    @field_validator("node_facing_cidrs")
    @classmethod
    def _node_facing(cls, value: list[str] | None) -> list[str] | None:
        for cidr in value or []:
            ipaddress.ip_network(cidr, strict=False)
        return value


class HealthCheckParams(_Strict):
    path: str = Field(default="/readyz", pattern=r"^/")
    interval_s: int = Field(default=10, ge=3, le=60)
    timeout_s: int = Field(default=5, ge=1, le=60)
    retries: int = Field(default=3, ge=1, le=5)  # Hetzner: 1..5 (terraform-provider-hcloud#1162)

    @model_validator(mode="after")
    def _timeout_below_interval(self) -> HealthCheckParams:
        if self.timeout_s >= self.interval_s:
            raise ValueError(f"timeout_s ({self.timeout_s}) must be below interval_s "
                             f"({self.interval_s}), or checks overlap. Fix: lower timeout_s")
        return self


class HstsParams(_Strict):
    # Opt-in: browsers remember it for max_age_s and refuse plain http to the name until then;
    # turning it off later does not reach browsers that already saw it (the runbook says so).
    enabled: bool = False
    max_age_s: int = Field(default=31_536_000, ge=0, le=31_536_000)
    include_subdomains: bool = False
    preload: bool = False


class EdgeParams(_Strict):
    """TLS from Cloudflare to the LB (Full strict) with an origin certificate for the API's
    hostname, HTTPS enforced. Needs the load balancer."""

    certificate_source: Literal["cloudflare_origin_ca", "operator"]
    certificate_name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$",
                                  description="Hetzner certificate name, before -g<generation>")
    certificate_generation: int = Field(default=1, ge=1, description="raise by one to rotate")
    certificate_validity_days: Literal[7, 30, 90, 365, 730, 1095, 5475] = 5475
    renew_within_days: int = Field(default=30, ge=1)
    origin_ca_root_file: str = Field(description="the CA the checks trust: Cloudflare's Origin "
                                     "CA root (PEM), or the local cloud's stand-in")
    https_listen_port: int = Field(default=443, ge=1, le=65535)
    min_tls_version: Literal["1.2", "1.3"] = "1.2"
    hsts: HstsParams = Field(default_factory=HstsParams)
    health_check: HealthCheckParams = Field(default_factory=HealthCheckParams)


class CloudflareParams(_Strict):
    api_base: str | None = Field(default=None, description="None: Cloudflare itself")
    zone: str
    record: str
    proxied: bool = True


class StackParams(_Strict):
    # Where the services get their secrets. docker_secrets: files under /run/secrets (the
    # plan). legacy_env: the values in the services' environment variables, as before the
    # migration (the before-state the secret-migration runbook starts from; never for a new
    # environment). The bootstrap deploys what this says and refuses to move a running
    # legacy stack itself: runbooks/secret-migration.ipynb does that under its checks.
    secrets_source: Literal["docker_secrets", "legacy_env"] = "docker_secrets"
    # Rolling-update pace. healthcheck_interval_s: how often Docker checks every service
    # (api, worker, admin, Redis, Dozzle, backup); a new task counts as running only once its
    # first check passes (swarmkit waits for "healthy" before it reports a task with a
    # healthcheck running), so every task started in a deploy or a roll-out waits about this
    # long. update_delay_s: the pause between two replaced tasks, which must let the LB count
    # the new api task healthy before the next old one stops (see Params.lb_healthy_after_s).
    # Production keeps Docker's customary 10 s; the local cloud checks more often to keep its
    # e2e roll-outs short.
    healthcheck_interval_s: int = Field(default=10, ge=2, le=60)
    update_delay_s: int = Field(default=10, ge=0, le=120)
    # How long Swarm watches each updated task for a failure (then rolls the service back)
    # before the update counts as done. Until then the previous spec's secrets count as in use
    # (swarm_secrets.secret_users: a rollback would bring them back), so every clean-up of old
    # keys and secret versions, and a health run, wait it out after a roll-out. Production
    # keeps 30 s; the local cloud 10 s (a stand-in that fails does so within its first checks).
    update_monitor_s: int = Field(default=30, ge=5, le=600)
    # runbooks/rotate-secrets.ipynb's clean-up: the newest versions of each Docker secret
    # kept (older ones no service references are removed), and how long the previous APNs
    # key version stays after a rotation, for a rollback to it.
    keep_secret_versions: int = Field(default=2, ge=1, le=20)
    apns_grace_h: int = Field(default=72, ge=0, le=24 * 90)


class RunnerParams(_Strict):
    cell_timeout_s: int = Field(default=1800, ge=10)
    approval: Literal["auto", "required"]


class SteadyProfileParams(_Strict):
    users: int = Field(default=8, ge=1, le=500)
    rate_per_user: float = Field(default=2.0, gt=0, le=50,
                                 description="requests/s each user sends at most")
    duration_s: int = Field(default=20, ge=5, le=3600)
    write_share: float = Field(default=0.2, ge=0, le=1,
                               description="share of POST /items (a row and an Asynq task)")


class RampProfileParams(_Strict):
    start_users: int = Field(default=2, ge=1, le=1000)
    step_users: int = Field(default=4, ge=1, le=1000)
    max_users: int = Field(default=20, ge=1, le=2000)
    step_s: int = Field(default=5, ge=2, le=600, description="seconds per users level")
    rate_per_user: float = Field(default=5.0, gt=0, le=50)
    write_share: float = Field(default=0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> RampProfileParams:
        if self.max_users < self.start_users:
            raise ValueError(f"max_users ({self.max_users}) is below start_users "
                             f"({self.start_users}). Fix: raise max_users")
        return self


class DigestBurstParams(_Strict):
    jobs: int = Field(default=2000, ge=1, le=1_000_000,
                      description="digest tasks enqueued through the api (the plan: 100k)")
    batch: int = Field(default=1000, ge=1, le=5000, description="tasks per POST /digests")
    drain_timeout_s: int = Field(default=120, ge=5, le=7200)


class LoadThresholds(_Strict):
    """Checks: a breach fails the run, naming the threshold, where and by how much."""

    p95_ms: float = Field(default=1500, gt=0)
    p99_ms: float = Field(default=3000, gt=0)
    error_ratio: float = Field(default=0.01, ge=0, le=1)
    min_rps: float = Field(default=5, ge=0, description="the steady profile's throughput")
    min_saturation_rps: float = Field(default=5, ge=0,
                                      description="ramp: RPS at which p95/errors cross, at least")
    min_drain_jobs_per_s: float = Field(default=20, ge=0)


class LoadTestParams(_Strict):
    """Traffic goes to the LB only, bounded in users, rate and time (every profile's)."""

    warm_up_requests: int = Field(default=20, ge=0, le=1000,
                                  description="not counted: wakes a Neon compute scaled to 0")
    warm_up_timeout_s: int = Field(default=90, ge=5, le=900)
    steady: SteadyProfileParams = Field(default_factory=SteadyProfileParams)
    ramp: RampProfileParams = Field(default_factory=RampProfileParams)
    digest_burst: DigestBurstParams = Field(default_factory=DigestBurstParams)
    thresholds: LoadThresholds = Field(default_factory=LoadThresholds)
    neon_compute_cu: float = Field(default=0.25, gt=0, le=56,
                                   description="the compute size whose max_connections the "
                                               "pool figures are compared with")


class Params(_Strict):
    env: str
    hetzner: HetznerParams
    ssh: SSHParams
    firewall: FirewallParams
    swarm: SwarmParams
    services: ServicesParams
    b2: B2Params
    neon: NeonParams
    load_balancer: LoadBalancerParams
    cloudflare: CloudflareParams
    runner: RunnerParams
    edge: EdgeParams | None = None
    redis: RedisParams = RedisParams()
    load_test: LoadTestParams = Field(default_factory=LoadTestParams)
    stack: StackParams = Field(default_factory=StackParams)

    @model_validator(mode="after")
    def _cross_checks(self) -> Params:
        if self.swarm.redis_node > self.hetzner.server_count:
            raise ValueError(f"swarm.redis_node is {self.swarm.redis_node} but there are only "
                             f"{self.hetzner.server_count} servers")
        workers, count = self.swarm.workers, self.hetzner.server_count
        names = self.server_names()
        if len(workers) > 1 or not set(workers) <= set(names[1:]):
            raise ValueError(
                f"swarm.workers is {workers}: it names at most one server, one of "
                f"{', '.join(names[1:]) or 'none'} (the first server starts the swarm as a "
                "manager); the scale-out's extra_worker sets it")
        managers = count - len(workers)
        if managers % 2 == 0:
            # Every node but swarm.workers is a manager; 4 managers tolerate no more
            # failures than 3.
            raise ValueError(
                f"hetzner.server_count {count}" + (f" less swarm.workers {workers}" if workers
                                                   else "")
                + f" is {managers} managers, which tolerate no more failures than "
                f"{managers - 1}; keep the manager count odd (an even server count only with "
                "one worker: the scale-out's extra_worker)")
        if self.redis.standby and self.hetzner.server_count < 2:
            raise ValueError("redis.standby is true but hetzner.server_count is "
                             f"{self.hetzner.server_count}: the standby needs a node other "
                             "than Redis' own; set redis.standby: false or add a server")
        backup = self.redis.backup
        if backup.bucket not in self.b2.buckets:
            raise ValueError(f"redis.backup.bucket is {backup.bucket!r} but b2.buckets has no "
                             "such bucket; add it (e.g. backups: {name: casera-backups})")
        if not any(k.bucket == backup.bucket and k.name_prefix == backup.prefix
                   and "backup" in k.for_services for k in self.b2.keys):
            raise ValueError(f"no b2.keys entry for the backup service on bucket "
                             f"{backup.bucket} with name_prefix {backup.prefix!r}; add one "
                             "(capabilities [listFiles, writeFiles], for_services [backup])")
        dump = self.neon.backup
        if dump.bucket not in self.b2.buckets:
            raise ValueError(f"neon.backup.bucket is {dump.bucket!r} but b2.buckets has no "
                             "such bucket; add it (e.g. backups: {name: casera-backups})")
        if not any(k.bucket == dump.bucket and k.name_prefix == dump.prefix
                   and "backup" in k.for_services and k.secret_name == "pgdump"
                   for k in self.b2.keys):
            raise ValueError(f"no b2.keys entry for the backup service's pg_dump on bucket "
                             f"{dump.bucket} with name_prefix {dump.prefix!r}; add one "
                             "(capabilities [listFiles, writeFiles], for_services [backup], "
                             "secret_name pgdump)")
        secret_names = [k.secret_name or k.bucket for k in self.b2.keys]
        doubled = sorted({n for n in secret_names if secret_names.count(n) > 1})
        if doubled:
            raise ValueError(f"b2.keys: more than one key would be the Docker secrets "
                             f"b2_{doubled[0]}_key_id/_key; give each a distinct secret_name")
        if self.env == "production" and self.runner.approval != "required":
            raise ValueError("runner.approval must be 'required' in production")
        if self.edge is not None and not self.load_balancer.enabled:
            raise ValueError("edge needs the load balancer (TLS ends there): set "
                             "load_balancer.enabled: true or remove edge")
        if self.swarm.publish_mode == "host" and \
                self.stack.update_delay_s < self.lb_healthy_after_s():
            # Host-mode api tasks are the LB's targets: an old task stopped before the LB
            # counts the new one healthy takes two of them out of rotation at once.
            raise ValueError(f"stack.update_delay_s ({self.stack.update_delay_s}) is shorter "
                             f"than the LB needs to count a new api task healthy "
                             f"({self.lb_healthy_after_s()} s from edge.health_check); "
                             "raise stack.update_delay_s or shorten the health check")
        return self

    @property
    def cluster_label(self) -> str:
        """The label selector that finds this environment's servers."""
        return ",".join(f"{k}={v}" for k, v in sorted(self.hetzner.labels.items()))

    def lb_unhealthy_after_s(self) -> int:
        """The longest a target can keep getting new connections from the load balancer after
        it starts failing the health check: the check that just passed, then ``retries + 1``
        failing ones, each up to ``interval`` apart, the last taking ``timeout``. 0 without
        an LB. The LB's checks use ``edge.health_check``, else the same defaults
        (steps.load_balancer)."""
        if not self.load_balancer.enabled:
            return 0
        check = self.edge.health_check if self.edge else HealthCheckParams()
        return (check.retries + 1) * check.interval_s + check.timeout_s

    def lb_healthy_after_s(self) -> int:
        """The longest until the load balancer sends traffic to a target that has just turned
        healthy: ``retries`` passing checks in a row (at least one; Hetzner: "an unhealthy
        target needs the same number of successful retries to become healthy again",
        https://docs.hetzner.cloud/reference/cloud#load-balancers), each up to ``interval``
        plus ``timeout`` apart. 0 without an LB."""
        if not self.load_balancer.enabled:
            return 0
        check = self.edge.health_check if self.edge else HealthCheckParams()
        return max(1, check.retries) * (check.interval_s + check.timeout_s)

    def server_names(self) -> list[str]:
        return [f"{self.hetzner.name_prefix}-{i}" for i in range(1, self.hetzner.server_count + 1)]

    def manager_names(self) -> list[str]:
        """The servers that are swarm managers: all but ``swarm.workers``."""
        return [n for n in self.server_names() if n not in self.swarm.workers]

    def public_dict(self) -> dict[str, Any]:
        """Everything here, for metadata and papermill: params hold no secrets by construction."""
        return self.model_dump(mode="json")


# Key names that would hold a secret value; ``*_file`` and ``*_name`` keys only point at one.
_SECRET_KEY = re.compile(
    r"(^|_)(password|passwd|token|secret|api_key|apikey|access_key|application_key|"
    r"private_key|secret_key)$"
)
_SECRET_VALUE = (
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"^[a-z][a-z0-9+.-]*://[^/:@\s]+:[^/@\s]+@"),  # URL with a password in it
)


def _walk(node: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        out: list[tuple[str, Any]] = []
        for key, value in node.items():
            out += _walk(value, f"{path}.{key}" if path else str(key))
        return out
    if isinstance(node, list):
        return [item for i, value in enumerate(node) for item in _walk(value, f"{path}[{i}]")]
    return [(path, node)]


def _secret_issues(raw: dict[str, Any], env: str, secrets: SecretStore | None) -> list[ParamIssue]:
    known = set(secrets.values()) if secrets else set()
    env_vars = ", ".join(spec.env_var for spec in SECRET_SPECS)
    fix = (f"remove the value; secrets come from the environment or secrets/{env}.env "
           f"({env_vars}) because papermill writes params in clear text into every output")
    issues = []
    for path, value in _walk(raw):
        leaf = path.rsplit(".", 1)[-1]
        text = value if isinstance(value, str) else None
        if _SECRET_KEY.search(leaf) and value not in (None, ""):
            issues.append(ParamIssue(path, "looks like a secret written into a params file", fix))
        elif text and (text in known or any(p.search(text) for p in _SECRET_VALUE)):
            issues.append(ParamIssue(path, "holds a secret value (not shown)", fix))
    return issues


def _issue_from_pydantic(error: dict[str, Any], allowed: dict[str, list[str]]) -> ParamIssue:
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = ".".join(loc[:-1])
        known = allowed.get(parent, [])
        return ParamIssue(key, "unknown key",
                          f"remove it or fix its spelling; keys allowed here: {', '.join(known)}")
    if kind == "missing":
        return ParamIssue(key, "required key is missing", "add it (see params/production.yaml)")
    got = error.get("input")
    shown = repr(got) if not isinstance(got, dict | list) else type(got).__name__
    if kind.endswith("_type") or kind.endswith("_parsing"):
        expected = _TYPE_WORDS.get(kind.split("_")[0], kind.split("_")[0])
        return ParamIssue(key, f"expected {expected}, got {shown}",
                          f"write {expected} (no quotes around numbers or booleans)")
    if kind == "literal_error":
        return ParamIssue(key, f"{shown} is not allowed; {error['msg'].lower()}",
                          "use one of the allowed values")
    message = error["msg"].removeprefix("Value error, ")
    problem, _, fix = message.partition(". Fix: ")
    if kind != "value_error":
        problem = f"{problem} (got {shown})"
    return ParamIssue(key, problem, fix or "change the value as described")


_TYPE_WORDS = {"int": "an integer", "string": "a string", "bool": "true or false",
               "float": "a number", "dict": "a mapping", "list": "a list",
               "model": "a mapping"}


def _allowed_keys(model: type[BaseModel], prefix: str = "") -> dict[str, list[str]]:
    table = {prefix: list(model.model_fields)}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            table |= _allowed_keys(annotation, f"{prefix}.{name}" if prefix else name)
    return table


def parse_override(text: str) -> tuple[str, Any]:
    """``services.api.replicas=4`` -> ("services.api.replicas", 4); values parse as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError("-p", [ParamIssue(text, "not KEY=VALUE", "write -p key.path=value")])
    return key.strip(), yaml.safe_load(value) if value else ""


def _apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> None:
    for dotted, value in overrides.items():
        node = raw
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                raise ParamsError(f"override -p {dotted}", [ParamIssue(
                    dotted, f"{part} is not a section of the params",
                    "use a dotted path that exists in the params file, e.g. services.api.replicas",
                )])
            node = child
        node[parts[-1]] = value


REAL_ENVS = ("staging", "production")
# RFC 5737, section 3: TEST-NET-1/2/3, reserved for documentation, never anyone's address.
DOCUMENTATION_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"))
_PLACEHOLDER = re.compile(r"change[-_ ]?me|<[^<>]*>|\b(todo|fixme|tbd|replace[-_ ]?me)\b",
                          re.IGNORECASE)


def _skip_http_check(path: str) -> bool:
    # A healthcheck runs inside its own container against its own loopback.
    return path.startswith("services.") and ".healthcheck" in path


def _real_env_issues(raw: dict[str, Any], env: str, for_run: bool) -> list[ParamIssue]:
    """What a real environment refuses beyond the schema (see the module docstring)."""
    if env not in REAL_ENVS:
        return []
    issues = []
    for path, value in _walk(raw):
        if not isinstance(value, str):
            continue
        if value.lower().startswith("http://") and not _skip_http_check(path):
            issues.append(ParamIssue(path, f"{value!r} is plain http: tokens and data would "
                                     f"cross the network in clear text in {env}",
                                     "use the https:// endpoint"))
        if for_run and _PLACEHOLDER.search(value):
            issues.append(ParamIssue(path, f"{value!r} is a placeholder, not filled in",
                                     f"put the real value for {env} in the params file or "
                                     f"pass -p {path}=VALUE"))
    swarm = raw.get("swarm")
    if isinstance(swarm, dict) and swarm.get("overlay_encrypted") is False:
        issues.append(ParamIssue("swarm.overlay_encrypted", f"is false, so in {env} the "
                                 "services' traffic between nodes (database credentials "
                                 "included) would cross the network unencrypted",
                                 "set overlay_encrypted: true (only the local cloud, whose "
                                 "kernel has no ESP, runs without it)"))
    if for_run:
        issues += _documentation_cidrs(raw, env)
    return issues


def _documentation_cidrs(raw: dict[str, Any], env: str) -> list[ParamIssue]:
    cidrs: list[tuple[str, Any]] = []
    ssh = raw.get("ssh")
    if isinstance(ssh, dict) and isinstance(ssh.get("operator_cidrs"), list):
        cidrs += [(f"ssh.operator_cidrs[{i}]", c) for i, c in enumerate(ssh["operator_cidrs"])]
    firewall = raw.get("firewall")
    rules = firewall.get("rules") if isinstance(firewall, dict) else None
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        if isinstance(rule, dict) and isinstance(rule.get("source"), list):
            cidrs += [(f"firewall.rules[{i}].source[{j}]", c)
                      for j, c in enumerate(rule["source"])]
    issues = []
    for path, cidr in cidrs:
        try:
            network = ipaddress.ip_network(str(cidr), strict=False)
        except ValueError:
            continue  # the schema names it
        doc = next((d for d in DOCUMENTATION_NETWORKS
                    if d.version == network.version and network.overlaps(d)), None)
        if doc is not None:
            issues.append(ParamIssue(path, f"{cidr} is a documentation address ({doc}, "
                                     "RFC 5737/3849): no operator connects from it, so SSH "
                                     f"to {env} would be open to nobody, or to whoever is "
                                     "routed it later",
                                     "put your office or VPN egress address here (curl -s "
                                     "https://ifconfig.me shows yours), as a /32"))
    return issues


def load_params(
    env: str,
    overrides: dict[str, Any] | None = None,
    path: Path | None = None,
    secrets: SecretStore | None = None,
    for_run: bool = True,
) -> Params:
    """Read, check and validate ``params/<env>.yaml``. Raises :class:`ParamsError`.

    ``for_run=False`` reads a staging or production file as a template (tests), without
    refusing its unfilled placeholders and documentation addresses; a run never does."""
    path = path or params_file(env)
    shown = str(path)
    if not path.exists():
        raise ParamsError(shown, [ParamIssue("(file)", "does not exist",
                                             "create it from params/production.yaml or pick "
                                             "another --env")])
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(file)"
        raise ParamsError(shown, [ParamIssue(where, f"is not valid YAML ({exc.__class__.__name__})",
                                             "fix the YAML syntax at that line")]) from None
    if not isinstance(raw, dict):
        raise ParamsError(shown, [ParamIssue("(top level)", "is not a mapping",
                                             "the file must be a YAML mapping of sections")])
    _apply_overrides(raw, dict(overrides or {}))
    issues = _secret_issues(raw, env, secrets)
    if issues:
        # Alone: the schema's messages quote values, and one of these may be a secret.
        raise ParamsError(shown, issues)
    issues = _real_env_issues(raw, env, for_run)
    if raw.get("env") != env:
        issues.append(ParamIssue("env", f"is {raw.get('env')!r} but the file is for {env!r}",
                                 f"set env: {env}"))
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        allowed = _allowed_keys(Params)
        issues += [_issue_from_pydantic(e, allowed) for e in exc.errors()]
    if issues:
        raise ParamsError(shown, issues)
    return params
