"""Neon: the restore window, the IP allowlist where the plan has one, and a real connection.

The plan is read from the API (``project.owner.subscription_type``), never assumed: the seed
counts on an IP allowlist on Launch, which Launch does not have (docs/facts.md#neon). On such a
plan the allowlist step says so and names what protects the database instead.

Not reconciled here: roles, databases and passwords (the password is a secret handed to the
services by the Docker-secrets step), compute size and autoscaling, branches.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from functools import partial

from casera.context import RunContext
from casera.db_roles import app_credential, role_store_path
from casera.errors import ProviderError, StepFailed
from casera.operator_secrets import Secret
from casera.plan import Plan, apply
from casera.providers import neon, postgres
from casera.result import StepResult, timed

DAY = 86400


@dataclass(frozen=True)
class PlanLimits:
    title: str
    retention_max_s: int
    ip_allow: bool


# Neon's plan table (2026-08, docs/facts.md#neon): Launch keeps 1 day of history by default
# and allows 7; IP Allow starts at Scale. Free's 6 hours is from Neon's 2025 pricing page.
# subscription_type carries version suffixes (launch_v3, scale_v3): matched by family.
PLAN_LIMITS: dict[str, PlanLimits] = {
    "free": PlanLimits("Free", DAY // 4, False),
    "launch": PlanLimits("Launch", 7 * DAY, False),
    "scale": PlanLimits("Scale", 30 * DAY, True),
    "business": PlanLimits("Business", 30 * DAY, True),
    "enterprise": PlanLimits("Enterprise", 30 * DAY, True),
}
WHAT_PROTECTS_INSTEAD = (
    "TLS on every connection (plaintext is refused; verify_database checks it), the role's "
    "SCRAM-SHA-256 password kept as a Docker secret and never in params or outputs, and the "
    "app connecting only through the -pooler endpoint")
# TLS versions accepted from the client's side: PostgreSQL's own floor since 14
# (ssl_min_protocol_version, https://www.postgresql.org/docs/15/runtime-config-connection.html)
# and PgBouncer's "secure" client_tls_protocols.
TLS_PROTOCOLS = ("TLSv1.2", "TLSv1.3")
# How a server says "plain text refused": Neon's proxy ("connection is insecure (try using
# `sslmode=require`)", neondatabase/neon proxy/src/proxy.rs ERR_INSECURE_CONNECTION, and
# https://neon.com/docs/connect/connection-errors), PgBouncer ("SSL required") and PostgreSQL's
# pg_hba ("... no encryption").
PLAINTEXT_REFUSALS = ("connection is insecure", "SSL required", "no encryption")


def neon_client(ctx: RunContext) -> neon.NeonClient:
    return neon.NeonClient(ctx.params.neon.api_endpoint, ctx.secrets.get("neon_api_key"))


def plan_of(project: neon.NeonProject) -> tuple[str, PlanLimits | None]:
    """(the plan as Neon reports it, its limits or None when unknown here)."""
    family = re.sub(r"_v\d+$", "", project.plan.lower())
    return project.plan, PLAN_LIMITS.get(family)


def _days(seconds: int) -> str:
    days = seconds / DAY
    return f"{days:g} day{'s' if days != 1 else ''}"


def _unknown_plan(result: StepResult, raw: str) -> StepResult:
    result.check("plan", False, f"Neon reports plan {raw!r}, which casera does not know; "
                 "add it to casera.steps.database.PLAN_LIMITS from Neon's plan table")
    return result


def ensure_restore_window(ctx: RunContext) -> StepResult:
    """``history_retention_seconds`` raised to ``neon.history_retention_days``, capped at the
    plan's maximum. Never lowered here: shrinking the window deletes restore history, so an
    operator does that by hand if it is really wanted."""
    p = ctx.params.neon
    with timed(StepResult("neon restore window", p.project_id, dry_run=ctx.dry_run)) as result:
        api = neon_client(ctx)
        project = api.project(p.project_id)
        raw, limits = plan_of(project)
        if limits is None:
            return _unknown_plan(result, raw)
        wanted = p.history_retention_days * DAY
        target = min(wanted, limits.retention_max_s)
        current = project.history_retention_seconds
        capped = (f"; params ask {_days(wanted)}, the {limits.title} plan allows at most "
                  f"{_days(limits.retention_max_s)}" if target < wanted else "")
        plan = Plan()
        if current < target:
            plan.add(f"~ history_retention_seconds: {current} ({_days(current)}) -> "
                     f"{target} ({_days(target)}){capped}",
                     partial(api.update_project_and_wait, p.project_id,
                             {"history_retention_seconds": target}))
        if apply(ctx, result, plan).dry_run and plan:
            return result
        if plan:
            result.reason = f"raised from {_days(current)} to {_days(target)}"
        else:
            result.reason = (f"{_days(current)} already" + capped if current == target else
                             f"{_days(current)}, more than params' {_days(target)}; not lowered "
                             "(that deletes restore history)")
        _verify_window(api, ctx, result, target)
    return result


def verify_restore_window(ctx: RunContext) -> StepResult:
    """Read-only: the plan is known and the window is at least what params ask, capped."""
    p = ctx.params.neon
    with timed(StepResult("neon restore window", p.project_id, dry_run=ctx.dry_run)) as result:
        api = neon_client(ctx)
        raw, limits = plan_of(api.project(p.project_id))
        if limits is None:
            return _unknown_plan(result, raw)
        target = min(p.history_retention_days * DAY, limits.retention_max_s)
        _verify_window(api, ctx, result, target)
    return result


def _verify_window(api: neon.NeonClient, ctx: RunContext, result: StepResult,
                   target: int) -> StepResult:
    project = api.project(ctx.params.neon.project_id)
    raw, limits = plan_of(project)
    have = project.history_retention_seconds
    result.check("plan", limits is not None,
                 f"{limits.title} ({raw}): restore window up to "
                 f"{_days(limits.retention_max_s)}" if limits else raw)
    result.check("restore window", have >= target,
                 f"{_days(have)} of history to restore from" if have >= target else
                 f"{_days(have)}, wanted {_days(target)}")
    return result


def normalise_allowlist(entries: list[str]) -> set[str]:
    """Neon accepts addresses and CIDRs; compare them as networks so 1.2.3.4 == 1.2.3.4/32."""
    return {str(ipaddress.ip_network(e.strip(), strict=False)) for e in entries}


@dataclass(frozen=True)
class OperatorAddress:
    """One allowlist entry for the operator's own connections, and how it was learned."""

    network: str
    source: str


def _route_source(destination: str, port: int) -> str:
    """The source address this machine's kernel picks toward ``destination`` (a UDP
    ``connect`` sends nothing; it only chooses the route)."""
    family = socket.AF_INET6 if ipaddress.ip_address(destination).version == 6 else \
        socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((destination, port))
        return str(probe.getsockname()[0])


def _destinations(ctx: RunContext) -> list[tuple[str, int]]:
    """Where this machine's connections to Neon go: both endpoints (verify_database uses the
    pooler; migrations and pg_dump the direct host), by ``neon.hostaddr`` when params pin one
    (the local cloud), else by DNS."""
    n = ctx.params.neon
    found: list[tuple[str, int]] = []
    for host, port in ((n.pooler_host, n.pooler_port), (n.direct_host, n.direct_port)):
        if n.hostaddr:
            addresses = [n.hostaddr]
        else:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise StepFailed(f"cannot resolve neon endpoint {host} ({exc}): the "
                                 "operator's address toward it cannot be worked out; check "
                                 "the neon.pooler_host/direct_host params and DNS") from exc
            addresses = sorted({str(info[4][0]) for info in infos})
        found += [(a, port) for a in addresses if (a, port) not in found]
    return found


def operator_addresses(ctx: RunContext) -> list[OperatorAddress]:
    """The addresses the operator's own connections to Neon really come from.

    Toward a private or loopback destination (the local cloud, a private link) nothing
    rewrites the source, so the address this machine's route picks is exactly what the
    server sees: locally 127.0.0.1, since ``neon.hostaddr`` is loopback, and NOT
    ``ssh.operator_cidrs`` (the host's address on the node bridge, what the nodes see).
    Toward a public destination (real Neon) the same holds when the route's source is itself
    public. From behind NAT it does not: what Neon sees is the operator's public egress
    address, which only the operator can declare, and ``ssh.operator_cidrs`` is that
    declaration (Hetzner's firewall sees the same egress for SSH). Then
    ``verify_database``, which connects from this machine right after, is what proves the
    declaration: Neon refuses it with "This IP address X is not allowed to connect to this
    endpoint" (neondatabase/neon proxy/src/auth/mod.rs), naming the address to declare.
    """
    found: dict[str, OperatorAddress] = {}
    declared = [str(ipaddress.ip_network(c, strict=False)) for c in ctx.params.ssh.operator_cidrs]
    for destination, port in _destinations(ctx):
        source = _route_source(destination, port)
        if not ipaddress.ip_address(destination).is_global:
            entries = [OperatorAddress(str(ipaddress.ip_network(source)),
                                       f"this machine's source address toward {destination} "
                                       "(private destination: no NAT in between)")]
        elif ipaddress.ip_address(source).is_global:
            entries = [OperatorAddress(str(ipaddress.ip_network(source)),
                                       f"this machine's public source address toward "
                                       f"{destination}")]
        else:
            entries = [OperatorAddress(c, f"ssh.operator_cidrs: this machine ({source}) is "
                                          f"behind NAT toward {destination}, so its public "
                                          "egress address is the declared one")
                       for c in declared]
        for entry in entries:
            found.setdefault(entry.network, entry)
    return list(found.values())


def ensure_ip_allowlist(ctx: RunContext, node_ips: list[str]) -> StepResult:
    """On a plan with IP Allow: the project's allowlist is exactly the nodes' IPs plus the
    operator's real source address(es), for every branch. On a plan without it: say so, and
    what protects the database instead.

    The operator stays on the list because migrations and ``pg_dump`` run from the
    operator's machine against the direct host, and ``verify_database`` connects from there
    too; :func:`operator_addresses` says how that address is learned. Every branch, not
    only protected ones: a DR restore branch holds the same data.
    """
    p = ctx.params
    with timed(StepResult("neon ip allowlist", p.neon.project_id,
                          dry_run=ctx.dry_run)) as result:
        api = neon_client(ctx)
        project = project_with_ip_allow(api, ctx, result)
        if project is None:
            return result
        for ip in node_ips:
            ipaddress.ip_address(ip)  # a typo here would lock the app out: fail loudly
        if not node_ips and not ctx.dry_run:
            raise StepFailed("ensure_ip_allowlist got no node IPs: an allowlist of the "
                             "operators alone would lock the app out; run it after the "
                             "servers exist, with their IPs")
        operators = operator_addresses(ctx)
        operator_nets = {o.network: o for o in operators}
        wanted = normalise_allowlist(node_ips) | set(operator_nets)
        have = normalise_allowlist(project.allowed_ips)
        added, removed = sorted(wanted - have), sorted(have - wanted)
        plan = Plan(gate_title=f"Neon {p.neon.project_id}: remove {len(removed)} address(es) "
                    "from the IP allowlist; their next connections are refused")
        # One PATCH sets the whole list: the first line carries it, the others come with it.
        write = partial(api.update_project_and_wait, p.neon.project_id, {"settings": {
            "allowed_ips": {"ips": sorted(wanted), "protected_branches_only": False}}})
        lines = [(f"+ {ip} " + (f"(operator: {operator_nets[ip].source})"
                                if ip in operator_nets else "(node)"), False) for ip in added]
        lines += [(f"- {ip}", True) for ip in removed]
        if project.protected_branches_only:
            lines.append(("~ applies to every branch, not only protected ones", False))
        # Servers an earlier step of this dry run planned join the list too, in the same PATCH
        # the run makes: counted, their addresses known after apply.
        lines += [(f"+ <{name}: address known after apply> (node)", False)
                  for name in (ctx.planned.get("servers", []) if ctx.dry_run else [])]
        for number, (line, destructive) in enumerate(lines):
            plan.add(line, write if number == 0 else None, destructive=destructive)
        applied = apply(ctx, result, plan)
        if applied.dry_run and plan:
            return result
        result.reason = (f"{len(added)} added, {len(removed)} removed" if plan else
                         f"{len(wanted)} entries: {len(node_ips)} nodes, "
                         f"{len(operators)} operator address(es)")
        if not node_ips:
            return result  # a dry run before the servers exist: nothing to verify against
        _verify_allowlist(api, ctx, result, wanted)
    return result


def verify_ip_allowlist(ctx: RunContext, node_ips: list[str]) -> StepResult:
    """Read-only: on a plan with IP Allow, the allowlist is the nodes plus the operator's
    address(es); on one without, the same statement :func:`ensure_ip_allowlist` makes."""
    p = ctx.params
    with timed(StepResult("neon ip allowlist", p.neon.project_id,
                          dry_run=ctx.dry_run)) as result:
        api = neon_client(ctx)
        if project_with_ip_allow(api, ctx, result) is None:
            return result
        _verify_allowlist(api, ctx, result, normalise_allowlist(node_ips) | {
            o.network for o in operator_addresses(ctx)})
    return result


def project_with_ip_allow(api: neon.NeonClient, ctx: RunContext,
                           result: StepResult) -> neon.NeonProject | None:
    """The project when its plan has IP Allow; otherwise the reason is on ``result`` (a red
    check for a plan casera does not know, the plain statement for a plan without it)."""
    project = api.project(ctx.params.neon.project_id)
    raw, limits = plan_of(project)
    if limits is None:
        _unknown_plan(result, raw)
        return None
    if not limits.ip_allow:
        _say_no_ip_allow(result, limits, raw, project)
        return None
    return project


def _say_no_ip_allow(result: StepResult, limits: PlanLimits, raw: str,
                     project: neon.NeonProject) -> None:
    """The plain statement, as a check that can be red: a plan without IP Allow must not
    show an allowlist either, since nothing would enforce it (left from a downgrade)."""
    ips = project.allowed_ips
    result.reason = f"IP Allow is not part of the {limits.title} plan"
    result.check("no IP allowlist on this plan", not ips,
                 f"none: IP Allow is a Scale-plan feature and this project is on "
                 f"{limits.title} ({raw}), which the seed assumed had it. What protects the "
                 f"database instead: {WHAT_PROTECTS_INSTEAD}" if not ips else
                 f"the project lists {len(ips)} allowed address(es) that the {limits.title} "
                 "plan does not enforce: clear them, or move to Scale")


def _verify_allowlist(api: neon.NeonClient, ctx: RunContext, result: StepResult,
                      wanted: set[str]) -> StepResult:
    project = api.project(ctx.params.neon.project_id)
    have = normalise_allowlist(project.allowed_ips)
    result.check("allowlist as planned", have == wanted,
                 f"{len(have)} entries: {', '.join(sorted(have))}" if have == wanted else
                 f"missing {sorted(wanted - have)}, extra {sorted(have - wanted)}")
    result.check("every branch covered", not project.protected_branches_only,
                 "applies to all branches" if not project.protected_branches_only else
                 "protected branches only: restore branches are open to all")
    return result


def verify_database(ctx: RunContext) -> StepResult:
    """Connect as the app does (the -pooler host, TLS as params say) and prove TLS from the
    client's side: the connection's own TLS session (protocol, cipher), and a plain-text
    attempt refused.

    Not the server's ``pg_stat_ssl``: Neon ends TLS at its proxy and pooler
    (neondatabase/neon#3416), so behind them the server sees the proxy's own link and the
    view says nothing about the client's. The local pooler does the same (plain text to its
    compute), so a check that would be red on Neon is red here too.
    """
    n = ctx.params.neon
    target = f"{n.pooler_host}:{n.pooler_port}/{n.database}"
    with timed(StepResult("neon connection", target, dry_run=ctx.dry_run)) as result:
        # The app's credential: after a DB password rotation, the other login role's.
        app = app_credential(ctx)
        role, password = app.role, app.password
        try:
            facts = postgres.probe(n.pooler_host, n.pooler_port, n.database, role, password,
                                   n.sslmode, n.sslrootcert, n.hostaddr)
        except ProviderError as exc:
            text = _error_text(exc)
            if "authentication failed" in text:
                text += (f" (is the password of {role} current? "
                         f"{role_store_path(ctx.env).name} after a rotation, else db_password, "
                         f"{ctx.secrets.source('db_password')})")
            elif any(w in text for w in ("not allowed to connect", "rejected", "pg_hba")):
                text += (" (the IP allowlist does not hold this machine's address: see "
                         "operator_addresses in casera.steps.database, and ssh.operator_cidrs "
                         "when this machine is behind NAT)")
            facts, failure = None, text
        else:
            failure = ""
        result.check("connect through the pooler", facts is not None,
                     failure or f"as {role}, sslmode={n.sslmode}")
        if facts is None:
            return result
        result.check("server version", bool(facts.server_version),
                     f"PostgreSQL {facts.server_version or '?'}")
        _check_client_tls(result, facts, n.sslmode, n.sslrootcert)
        _check_plaintext_refused(result, n.pooler_host, n.pooler_port, n.database, role,
                                 password, n.hostaddr)
    return result


def _check_client_tls(result: StepResult, facts: postgres.ConnectionFacts, sslmode: str,
                      sslrootcert: str | None) -> None:
    if not facts.ssl_in_use:
        result.check("TLS to the pooler", False, "NOT encrypted")
        return
    attrs = facts.tls
    if attrs is None:
        # PQsslInUse alone: this platform's libpq could not be reached for the details.
        result.check("TLS to the pooler", facts.ssl_in_use,
                     f"encrypted (protocol not readable on this platform); "
                     f"{_certificate_words(sslmode, sslrootcert)}")
        return
    protocol = attrs.get("protocol", "")
    result.check("TLS to the pooler", protocol in TLS_PROTOCOLS,
                 f"{protocol} {attrs.get('cipher', '?')} ({attrs.get('key_bits', '?')}-bit); "
                 f"{_certificate_words(sslmode, sslrootcert)}" if protocol in TLS_PROTOCOLS
                 else f"protocol {protocol or 'unknown'}, wanted one of "
                      f"{', '.join(TLS_PROTOCOLS)}")


def _check_plaintext_refused(result: StepResult, host: str, port: int, database: str,
                             role: str, password: Secret, hostaddr: str | None) -> None:
    try:
        postgres.probe(host, port, database, role, password, "disable", None, hostaddr)
    except ProviderError as exc:
        text = _error_text(exc)
        # The TLS connection just worked, so any other failure (a timeout, a reset) would
        # prove nothing about plain text: only the server's own refusal counts.
        refused = any(words in _full_text(exc) for words in PLAINTEXT_REFUSALS)
        result.check("plaintext refused", refused, text if refused else
                     f"failed, but not with a plain-text refusal: {text}")
    else:
        result.check("plaintext refused", False, "a connection without TLS was ACCEPTED")


def _certificate_words(sslmode: str, sslrootcert: str | None) -> str:
    if sslmode == "verify-full":
        return "certificate and host name verified (sslmode=verify-full)"
    if sslmode == "verify-ca" or sslrootcert:
        # libpq treats require plus a root certificate file as verify-ca.
        return f"certificate verified against {sslrootcert or 'the CA'} (sslmode={sslmode})"
    return "certificate NOT verified (sslmode=require without sslrootcert)"


def _full_text(exc: ProviderError) -> str:
    """The server's or libpq's whole message, as the postgres provider keeps it."""
    details = exc.details if isinstance(exc.details, dict) else {}
    return str(details.get("error") or exc)


def _error_text(exc: ProviderError) -> str:
    text = _full_text(exc).strip().splitlines()
    return text[-1][:200] if text else type(exc).__name__
