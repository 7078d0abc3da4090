"""Neon steps against a private local Neon: real PostgreSQL with TLS and SCRAM behind real
PgBouncer, and the Neon API emulator, on both the Launch and the Scale plan.

On Scale the allowlist is exercised end to end: a client in a network namespace (an address
of its own, outside the list) is refused, the operator's own connection is not.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from steps_harness import applied, free_port, local_neon, make_ctx

from casera.errors import ApprovalRefused, ProviderError, StepFailed
from casera.operator_secrets import Secret
from casera.providers import neon, postgres
from casera.result import StepResult
from casera.steps import database

pytestmark = pytest.mark.localcloud

NODES = ["10.77.0.11", "10.77.0.12", "10.77.0.13"]
# params/local.yaml: the host's address on the node bridge, what the NODES see for SSH. The
# operator's connections to the local Neon come from 127.0.0.1 (neon.hostaddr is loopback).
SSH_OPERATOR = "10.77.0.1/32"


@pytest.fixture(scope="module")
def cloud():
    if os.geteuid() != 0:
        pytest.skip("the local Neon runs PostgreSQL as the postgres user: needs root")
    if not shutil.which("nsenter"):
        pytest.skip("nsenter is needed for the client outside the allowlist")
    from casera_localcloud import neon
    from casera_localcloud.neon.netns import namespace

    root = Path(tempfile.mkdtemp(prefix="casera-steps-neon-", dir="/tmp"))
    try:
        with local_neon(root) as neon_env, namespace(f"s{os.getpid()}") as ns:
            # The local Neon also listens on the namespace's host end, so the outsider
            # reaches the pooler and the direct endpoint over the network.
            with applied({**neon_env["environ"], "CASERA_NEON_LISTEN_EXTRA": ns.host_ip}):
                neon.up()
            yield {**neon_env, "netns": ns}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def ctx_for(cloud, extra=None, **kw):
    return make_ctx({**cloud["overrides"], **(extra or {})}, cloud["secrets"], **kw)


def outcome(step, *args, **kwargs) -> StepResult:
    """The step's result, red or green: a red check may raise (with the result attached)
    once steps fail structurally; the test reads the result either way."""
    try:
        return step(*args, **kwargs)
    except StepFailed as exc:
        result = getattr(exc, "result", None)
        if not isinstance(result, StepResult):
            raise
        return result


def project(cloud) -> dict:
    return database.neon_client(ctx_for(cloud)).get_project("casera-local")


def set_plan(cloud, plan: str) -> None:
    database.neon_client(ctx_for(cloud)).request("POST", "/_emulator/plan", json={"plan": plan})


def needing_approval(ctx):
    runner = ctx.params.runner.model_copy(update={"approval": "required"})
    return dataclasses.replace(ctx, params=ctx.params.model_copy(update={"runner": runner}))


# ---------------------------------------------------------------- Launch (the seed's plan)


def test_restore_window_dry_run_changes_nothing(cloud):
    assert project(cloud)["history_retention_seconds"] == 86400
    result = database.ensure_restore_window(ctx_for(cloud, dry_run=True))
    assert result.changed == 1
    assert result.diff == ["~ history_retention_seconds: 86400 (1 day) -> 604800 (7 days)"]
    assert project(cloud)["history_retention_seconds"] == 86400


def test_restore_window_raised_to_seven_days_then_left_alone(cloud):
    first = database.ensure_restore_window(ctx_for(cloud))
    assert first.changed == 1 and first.ok, first
    assert project(cloud)["history_retention_seconds"] == 7 * 86400
    second = database.ensure_restore_window(ctx_for(cloud))
    assert second.changed == 0 and second.ok, second
    assert "7 days already" in second.reason


def test_restore_window_capped_at_the_plans_maximum(cloud):
    result = database.ensure_restore_window(
        ctx_for(cloud, {"neon.history_retention_days": 30}, dry_run=True))
    assert result.changed == 0 and result.ok, result
    assert "params ask 30 days, the Launch plan allows at most 7 days" in result.reason


def test_launch_has_no_allowlist_and_says_what_protects_instead(cloud):
    result = database.ensure_ip_allowlist(ctx_for(cloud), NODES)
    assert result.changed == 0 and result.ok, result
    (check,) = result.checks
    assert check.name == "no IP allowlist on this plan"
    assert "Scale-plan feature" in check.detail and "Launch" in check.detail
    for words in ("TLS", "SCRAM", "Docker secret", "-pooler"):
        assert words in check.detail
    assert project(cloud)["settings"]["allowed_ips"]["ips"] == []
    assert database.verify_ip_allowlist(ctx_for(cloud), NODES).ok
    assert database.verify_restore_window(ctx_for(cloud)).ok


def test_verify_database_proves_tls_from_the_client_side(cloud):
    result = database.verify_database(ctx_for(cloud))
    assert result.ok, result
    checks = {c.name: c.detail for c in result.checks}
    assert checks["server version"].startswith("PostgreSQL 15")
    # The client's own TLS session: protocol and cipher, and the CA check sslrootcert gives.
    tls = checks["TLS to the pooler"]
    assert tls.split()[0] in ("TLSv1.2", "TLSv1.3"), tls
    assert "certificate verified against" in tls, tls
    assert "SSL required" in checks["plaintext refused"], checks
    # No server-side pg_stat_ssl check: behind the pooler (Neon's or the local one) it
    # describes the pooler's own, plain, link.
    assert not any("pg_stat_ssl" in name for name in checks)
    assert cloud["secrets"]["CASERA_DB_PASSWORD"] not in str(result)


def test_the_pooler_really_ends_tls_so_pg_stat_ssl_would_have_been_red(cloud):
    ctx = ctx_for(cloud)
    n = ctx.params.neon
    with postgres.connect(n.pooler_host, n.pooler_port, n.database, n.role,
                          ctx.secrets.get("db_password"), n.sslmode, n.sslrootcert,
                          n.hostaddr) as conn:
        assert conn.pgconn.ssl_in_use
        row = conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()"
                           ).fetchone()
    assert row == (False,)


def test_verify_database_is_red_when_plaintext_fails_for_another_reason(cloud, monkeypatch):
    # A plain attempt that fails without the server's refusal (here: nothing listens)
    # proves nothing about TLS, so the check must not turn green on it.
    real = postgres.connect

    def plain_to_nowhere(host, port, *args, **kwargs):
        if args[3] == "disable":  # (dbname, user, password, sslmode, ...)
            return real(host, 1, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(postgres, "connect", plain_to_nowhere)
    result = outcome(database.verify_database, ctx_for(cloud))
    plain = next(c for c in result.checks if c.name == "plaintext refused")
    assert not plain.ok and "not with a plain-text refusal" in plain.detail, plain


def test_verify_database_reports_a_wrong_password(cloud):
    secrets = {**cloud["secrets"], "CASERA_DB_PASSWORD": "not-the-password"}
    result = outcome(database.verify_database, make_ctx(cloud["overrides"], secrets))
    assert not result.ok
    assert "authentication failed" in result.checks[0].detail
    assert "db_password" in result.checks[0].detail
    assert "not-the-password" not in str(result)


# ---------------------------------------------------------------- Scale (IP Allow)


@pytest.fixture()
def scale(cloud):
    set_plan(cloud, "scale")
    try:
        yield cloud
    finally:
        # What Launch lacks goes first, or the emulator refuses the move (as it should).
        database.neon_client(ctx_for(cloud)).update_project(
            "casera-local", {"settings": {"allowed_ips": {"ips": []}},
                             "history_retention_seconds": 7 * 86400})
        set_plan(cloud, "launch")


def test_scale_allowlist_is_exactly_nodes_plus_the_operators_real_address(scale):
    ns = scale["netns"]
    overrides = scale["overrides"]
    outsider = {"pooler": {"host": ns.host_ip, "port": overrides["neon.pooler_port"]},
                "direct": {"host": ns.host_ip, "port": overrides["neon.direct_port"]}}
    login = {"user": "casera", "password": scale["secrets"]["CASERA_DB_PASSWORD"],
             "dbname": "casera", "sslmode": "require"}
    # Before: an empty list lets everyone in, the outsider too (so a refusal later is the
    # allowlist's doing, not the network's).
    for name, where in outsider.items():
        ok, detail = ns.run_client({**where, **login})
        assert ok, f"{name}: {detail}"

    dry = database.ensure_ip_allowlist(ctx_for(scale, dry_run=True), NODES)
    assert dry.changed == 4, dry
    assert any(d.startswith("+ 127.0.0.1/32 (operator: this machine's source address "
                            "toward 127.0.0.1") for d in dry.diff), dry.diff
    assert project(scale)["settings"]["allowed_ips"]["ips"] == []

    first = database.ensure_ip_allowlist(ctx_for(scale), NODES)
    assert first.changed == 4 and first.ok, first
    assert [d.split(" (")[0] for d in first.diff] == [d.split(" (")[0] for d in dry.diff]
    listed = project(scale)["settings"]["allowed_ips"]["ips"]
    assert sorted(listed) == sorted([f"{ip}/32" for ip in NODES] + ["127.0.0.1/32"])
    # Not ssh.operator_cidrs: that is where SSH to the nodes comes from, not this
    # machine's connections to Neon.
    assert SSH_OPERATOR not in listed
    assert project(scale)["settings"]["allowed_ips"]["protected_branches_only"] is False

    # The operator's own connection works: that is why its address is on the list ...
    assert database.verify_database(ctx_for(scale)).ok
    # ... and an address outside it is refused on both endpoints, although the network
    # path is there (the TCP handshake completes).
    for name, where in outsider.items():
        reached, detail = ns.tcp_reaches(where["host"], where["port"])
        assert reached, f"{name}: {detail}"
        ok, detail = ns.run_client({**where, **login})
        assert not ok, f"{name} accepted {ns.client_ip} outside the allowlist: {detail}"
        assert "pg_hba" in detail or "rejected" in detail, detail

    second = database.ensure_ip_allowlist(ctx_for(scale), NODES)
    assert second.changed == 0 and second.ok, second
    assert database.verify_ip_allowlist(ctx_for(scale), NODES).ok
    assert not outcome(database.verify_ip_allowlist, ctx_for(scale), NODES[:2]).ok

    replaced = [*NODES[:2], "10.77.0.14"]
    with pytest.raises(ApprovalRefused):
        database.ensure_ip_allowlist(needing_approval(ctx_for(scale)), replaced)
    assert "10.77.0.13/32" in project(scale)["settings"]["allowed_ips"]["ips"]
    third = database.ensure_ip_allowlist(ctx_for(scale), replaced)
    assert third.changed == 2 and third.ok, third
    assert third.diff == ["+ 10.77.0.14/32 (node)", "- 10.77.0.13/32"]


def test_scale_refuses_an_allowlist_without_nodes(scale):
    with pytest.raises(StepFailed, match="lock the app out"):
        database.ensure_ip_allowlist(ctx_for(scale), [])
    # A dry run on an empty cloud plans the servers an earlier step planned, as the run will
    # then add them: the same count, addresses known after apply.
    dry_ctx = ctx_for(scale, dry_run=True)
    dry_ctx.planned["servers"] = ["casera-local-1", "casera-local-2", "casera-local-3"]
    dry = database.ensure_ip_allowlist(dry_ctx, [])
    assert sum("known after apply" in d for d in dry.diff) == 3
    assert dry.changed == 3 + sum("(operator" in d for d in dry.diff) >= 4, dry.diff


def test_a_scale_out_and_in_dry_run_plans_what_the_run_changes(scale):
    """The scale-out's dry run passes the servers that exist (their addresses) and plans the
    new ones from the servers step; the run then adds exactly those. The scale-in's dry run
    and run remove the same addresses."""
    assert database.ensure_ip_allowlist(ctx_for(scale), NODES).ok  # three nodes listed
    dry_ctx = ctx_for(scale, dry_run=True)
    dry_ctx.planned["servers"] = ["casera-local-4", "casera-local-5"]
    dry = database.ensure_ip_allowlist(dry_ctx, NODES)
    new = ["10.77.0.14", "10.77.0.15"]
    run = database.ensure_ip_allowlist(ctx_for(scale), NODES + new)
    assert dry.changed == run.changed == 2, (dry.diff, run.diff)
    assert dry.diff == [f"+ <casera-local-{i}: address known after apply> (node)"
                        for i in (4, 5)]
    assert run.diff == [f"+ {ip}/32 (node)" for ip in new]
    dry_in = database.ensure_ip_allowlist(ctx_for(scale, dry_run=True), NODES)
    run_in = database.ensure_ip_allowlist(ctx_for(scale), NODES)
    assert dry_in.diff == run_in.diff == [f"- {ip}/32" for ip in new]
    assert dry_in.changed == run_in.changed == 2


def test_launch_with_a_leftover_allowlist_is_red(scale):
    # Set on Scale, then the account moves to Launch behind the emulator's back (the
    # emulator itself refuses that order): the step must not call it fine.
    from casera_localcloud.neon import config, state

    database.neon_client(ctx_for(scale)).update_project(
        "casera-local", {"settings": {"allowed_ips": {"ips": ["10.77.0.11"]}}})
    with applied(scale["environ"]):
        cfg = config.load_config()
        with state.locked(cfg) as st:
            st["project"]["plan"] = "launch"
        try:
            result = outcome(database.verify_ip_allowlist, ctx_for(scale), NODES)
        finally:
            with state.locked(cfg) as st:
                st["project"]["plan"] = "scale"
    (check,) = result.checks
    assert not check.ok and "does not enforce" in check.detail, check


def test_scale_restore_window_goes_to_thirty_days(scale):
    result = database.ensure_restore_window(ctx_for(scale, {"neon.history_retention_days": 30}))
    assert result.changed == 1 and result.ok, result
    assert project(scale)["history_retention_seconds"] == 30 * 86400
    # Back on a 7-day params file the window is not shrunk: that would delete history.
    kept = database.ensure_restore_window(ctx_for(scale))
    assert kept.changed == 0 and "not lowered" in kept.reason


# ---------------------------------------------------------------- the operator's address


def operator_ctx(hostaddr: str, cidrs: list[str]):
    return make_ctx({"neon.hostaddr": hostaddr, "ssh.operator_cidrs": cidrs}, {})


def test_operator_address_toward_a_private_destination_is_the_route_source():
    found = database.operator_addresses(operator_ctx("127.0.0.1", ["198.51.100.7/32"]))
    assert [o.network for o in found] == ["127.0.0.1/32"]
    assert "no NAT in between" in found[0].source


@pytest.mark.parametrize(("source", "expected", "words"), [
    # Behind NAT toward a public Neon: only the declared public egress is honest.
    ("192.168.1.20", ["198.51.100.7/32", "203.0.113.0/28"], "behind NAT"),
    # A public source address is what Neon sees.
    ("8.8.4.4", ["8.8.4.4/32"], "public source address"),
])
def test_operator_address_toward_a_public_neon(monkeypatch, source, expected, words):
    monkeypatch.setattr(database, "_route_source", lambda destination, port: source)
    found = database.operator_addresses(
        operator_ctx("1.1.1.1", ["198.51.100.7/32", "203.0.113.0/28"]))
    assert [o.network for o in found] == expected
    assert all(words in o.source for o in found)
    assert all(ipaddress.ip_network(o.network) for o in found)


# ---------------------------------------------------------------- the providers' errors


def test_neon_transport_errors_are_provider_errors():
    api = neon.NeonClient(f"http://127.0.0.1:{free_port()}/api/v2", Secret("k", "neon-key-9"),
                          timeout=2)
    with pytest.raises(ProviderError) as refused:
        api.project("casera-local")
    assert refused.value.system == "neon" and "GET /projects/casera-local" in str(refused.value)
    assert "neon-key-9" not in str(refused.value)


def test_project_facts_are_plain_data(cloud):
    facts = database.neon_client(ctx_for(cloud)).project("casera-local")
    raw = project(cloud)
    assert facts.plan == raw["owner"]["subscription_type"]
    assert facts.history_retention_seconds == raw["history_retention_seconds"]
    assert list(facts.allowed_ips) == raw["settings"]["allowed_ips"]["ips"]
    assert database.plan_of(facts)[1] is database.PLAN_LIMITS["launch"]


def test_a_refused_connection_is_a_postgres_provider_error(cloud):
    n = ctx_for(cloud).params.neon
    with pytest.raises(ProviderError) as refused:
        postgres.probe(n.pooler_host, n.pooler_port, n.database, n.role,
                       Secret("pw", "wrong-password-1"), n.sslmode, n.sslrootcert, n.hostaddr)
    assert refused.value.system == "postgres"
    assert "authentication failed" in refused.value.details["error"]  # type: ignore[index]
    assert "wrong-password-1" not in str(refused.value) + str(refused.value.details)
