"""Preflight: read-only checks before any runbook changes anything.

A red check fails its step and the run like anywhere else (``timed`` raises), with the step's
whole table shown first, so the operator sees every red row of that step at once. What is only
information (versions, settings, "no servers yet") is a note and cannot fail. Every endpoint
probe has a short timeout and reports the error it met, never a secret.
"""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import socket
import subprocess
from collections.abc import Callable

from casera.context import RunContext
from casera.db_roles import app_credential
from casera.operator_secrets import SECRET_SPECS
from casera.paths import params_file
from casera.providers import b2, cloudflare, docker_swarm, hetzner, neon, postgres, ssh
from casera.result import StepResult, timed

LIBRARIES = ("papermill", "nbval", "jupyterlab", "ipywidgets", "hcloud", "docker", "fabric",
             "b2sdk", "psycopg", "redis", "cloudflare", "pydantic")
TOOLS = (("ssh", ["ssh", "-V"]), ("docker", ["docker", "--version"]),
         ("git", ["git", "--version"]))
PROBE_TIMEOUT_S = 5.0


def verify_params(ctx: RunContext) -> StepResult:
    """Params were validated when the run started; say so and show what this run will use."""
    with timed(StepResult("params", str(params_file(ctx.env)), dry_run=ctx.dry_run)) as result:
        # Loading them already refused anything invalid (ParamsError, exit 2), so this can
        # only inform.
        result.note("schema", f"{params_file(ctx.env).name} is valid")
        for line in ctx.summary_lines()[2:]:
            result.note("setting", line)
    return result


def verify_secrets_present(ctx: RunContext) -> StepResult:
    """Each secret is present (its source named, its value never shown)."""
    with timed(StepResult("secrets", f"env {ctx.env}", dry_run=ctx.dry_run)) as result:
        for spec in SECRET_SPECS:
            source = ctx.secrets.source(spec.name)
            result.check(spec.name, source is not None,
                         f"from {source}" if source else
                         f"missing: set {spec.env_var} or add it to {ctx.secrets.file}")
    return result


def _tool_version(command: list[str]) -> str | None:
    if not shutil.which(command[0]):
        return None
    done = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    return (done.stdout or done.stderr).strip().splitlines()[0] if done.returncode == 0 else None


def report_versions(ctx: RunContext) -> StepResult:
    """Python, libraries and tools this run uses: the reviewer's "with which code"."""
    with timed(StepResult("versions", platform.node(), dry_run=ctx.dry_run)) as result:
        result.note("python", platform.python_version())
        for name in LIBRARIES:
            try:
                result.note(name, importlib.metadata.version(name))
            except importlib.metadata.PackageNotFoundError:
                result.check(name, False, "not installed: pip install -e .")
        for name, command in TOOLS:
            version = _tool_version(command)
            result.check(name, version is not None, version or f"{name} not found on PATH")
    return result


def _probe(result: StepResult, name: str, call: Callable[[], str]) -> None:
    answer: str | None = None
    try:
        answer = call()
    except Exception as exc:  # noqa: BLE001 - whatever failed is the finding
        message = str(exc).splitlines()[0][:160] if str(exc) else ""
        failure = f"{type(exc).__name__}: {message}"
    result.check(name, answer is not None, answer if answer is not None else failure)


def _tcp(host: str, port: int) -> str:
    with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
        return f"{host}:{port} accepts connections"


def verify_endpoints(ctx: RunContext, include_nodes: bool = True) -> StepResult:
    """Try every configured endpoint once, with a short timeout. ``include_nodes=False``
    skips SSH and Docker on the servers (before bootstrap there are none)."""
    p, s = ctx.params, ctx.secrets
    with timed(StepResult("endpoints", f"env {ctx.env}", dry_run=ctx.dry_run)) as result:
        servers: list[str] = []

        def hetzner_api() -> str:
            hz = hetzner.for_env(p, s, PROBE_TIMEOUT_S)
            found = hz.servers.list(ctx.params.cluster_label)
            servers.extend(srv.ipv4 for srv in found if srv.ipv4)
            return f"{p.hetzner.api_endpoint}: {len(found)} server(s) labelled {p.cluster_label}"

        _probe(result, "hetzner api", hetzner_api)

        def ssh_and_docker() -> str:
            answers = []
            for ip in servers:
                with ssh.connect(ip, p.ssh.port, p.ssh.admin_user, p.ssh.private_key_file,
                                 PROBE_TIMEOUT_S,
                                 known_hosts=ssh.KnownHosts.for_env(p.env)) as conn:
                    version = ssh.run(conn, docker_swarm.cli(
                        "version --format '{{.Server.Version}}'"))
                    answers.append(f"{ip} docker {version}")
            return "; ".join(answers)

        if include_nodes and not servers:
            # Before the bootstrap there is nothing to try: a fact, not a failure.
            result.note("ssh + docker", "no servers yet, so no SSH or Docker endpoint to try")
        elif include_nodes:
            _probe(result, "ssh + docker", ssh_and_docker)
        _probe(result, "b2", lambda: "authorized, account " + b2.account_id(b2.authorize(
            p.b2.realm, s.get("b2_key_id"), s.get("b2_application_key")))[:6] + "…")

        def neon_api() -> str:
            project = neon.NeonClient(p.neon.api_endpoint, s.get("neon_api_key"),
                                      PROBE_TIMEOUT_S).project(p.neon.project_id)
            return f"project {project.name}, plan {project.plan}"

        _probe(result, "neon api", neon_api)

        def postgres_pooler() -> str:
            app = app_credential(ctx)  # after a DB password rotation, the other role's
            facts = postgres.probe(p.neon.pooler_host, p.neon.pooler_port, p.neon.database,
                                   app.role, app.password, p.neon.sslmode,
                                   p.neon.sslrootcert, p.neon.hostaddr, int(PROBE_TIMEOUT_S))
            return (f"{p.neon.pooler_host} sslmode={p.neon.sslmode}: "
                    f"PostgreSQL {facts.server_version[:40]}")

        _probe(result, "postgres (pooler)", postgres_pooler)

        def cloudflare_zone() -> str:
            cf = cloudflare.client(s.get("cloudflare_api_token"), p.cloudflare.api_base,
                                   PROBE_TIMEOUT_S)
            zone_id = cloudflare.find_zone_id(cf, p.cloudflare.zone)
            if not zone_id:
                raise LookupError(f"zone {p.cloudflare.zone} not found for this token")
            return f"zone {p.cloudflare.zone} found"

        _probe(result, "cloudflare", cloudflare_zone)
    return result


def verify_server_type_offered(ctx: RunContext) -> StepResult:
    """The params' server type is offered at the params' location, read from the API.

    Hetzner offers each type in some locations only (the cost-optimised CX types in its EU
    locations alone) and refuses a server elsewhere with ``invalid_input`` "unsupported
    location for server type" (docs.hetzner.cloud changelog 2025-09-24, "per location server
    types"). Asking first turns that refusal of the first server, mid-bootstrap, into a red
    check before anything is made, naming what the location does offer."""
    p = ctx.params.hetzner
    with timed(StepResult("server type", f"{p.server_type} in {p.location}",
                          dry_run=ctx.dry_run)) as result:
        types = hetzner.for_env(ctx.params, ctx.secrets, PROBE_TIMEOUT_S).catalog.server_types()
        offered = sorted(t.name for t in types if t.at(p.location) is not None)
        wanted = next((t for t in types if t.name == p.server_type), None)
        here = wanted.at(p.location) if wanted else None
        fix = (f"set hetzner.server_type to one offered in {p.location} "
               f"({', '.join(offered) or 'none'}) or hetzner.location to one that offers "
               f"{p.server_type}")
        if wanted is None:
            detail = f"Hetzner has no server type {p.server_type!r}. Fix: {fix}"
        elif here is None:
            where = sorted(offer.location for offer in wanted.offers)
            detail = (f"{p.server_type} is not offered in {p.location} (only in "
                      f"{', '.join(where) or 'no location'}). Fix: {fix}")
        else:
            detail = f"{p.server_type} is offered in {p.location}"
        result.check("offered", here is not None, detail)
        if here is not None:
            # available: in stock right now; Hetzner refuses a create while it is false.
            result.check("available", here.available is not False,
                         "in stock" if here.available is not False else
                         f"{p.server_type} is out of stock in {p.location} for now. Fix: retry "
                         f"later or {fix}")
            if here.unavailable_after is not None:
                result.note("deprecation", f"{p.server_type} in {p.location} is deprecated; "
                            f"no new servers after {here.unavailable_after}")
    return result


def verify_ready_to_bootstrap(ctx: RunContext) -> StepResult:
    """Secrets present, every API answers, and the server type is offered where the params
    put it; raises naming what is red."""
    summary = summarize([verify_secrets_present(ctx), verify_endpoints(ctx, include_nodes=False),
                         verify_server_type_offered(ctx)])
    return summary.raise_for_failed_checks()


def summarize(results: list[StepResult]) -> StepResult:
    """All checks of the run in one green/red table."""
    summary = StepResult("preflight", "summary")
    for step in results:
        for check in step.checks:
            name = f"{step.step}: {check.name}"
            if check.kind == "info":
                summary.note(name, check.detail)
            else:
                summary.check(name, check.ok, check.detail)
    red = len(summary.failed_checks)
    green = sum(c.kind == "check" for c in summary.checks) - red
    summary.reason = f"{green} green, {red} red"
    return summary
