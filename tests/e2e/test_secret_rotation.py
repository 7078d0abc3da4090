"""Secret rotation (runbooks/rotate-secrets.ipynb) of all four classes, the DB password,
SECRET_KEY, the B2 keys and the APNs key, on the live local cloud, under the steady probe
through the load balancer (reads and writes: each write a row through the pooler), a token
probe (mint and verify through the LB, and verify a token signed before the rotation) and the
app's own B2 traffic: 0 failed requests, B2 never refused while a task held a key, the old B2
keys and the old DB credential refused afterwards (direct and through the pooler), the
pre-rotation token still valid, the new APNs key mounted and the previous one kept for the
grace period, no DB password in any spec, PreviousSpec, task env or the kept notebook.

Runs after tests/e2e/test_bootstrap.py on the cloud it left (never brings the cloud up or
down) and leaves it converged, every service on the new versions:

    pytest tests/e2e/test_bootstrap.py tests/e2e/test_secret_rotation.py

One pass, each roll counted once:
1. the operator puts a new SECRET_KEY and APNs key in secrets/local.env;
2. a dry run plans every change and makes none;
3. the rotation stopped between its two rolling updates (the runbook's own cells in a real
   kernel, then a cell that raises): every task on the new B2/APNs/DB password versions, as the
   other login role, and accepting the new SECRET_KEY, the old one still signing, the old keys
   still in B2, the old DB credential still valid;
4. the re-run converges: roll 2 (the new SECRET_KEY signs, the old one accepted), the old B2
   keys deleted (and refused), the old DB credential refused, old versions cleaned up
   (``stack.keep_secret_versions=1``), the previous APNs version kept (grace);
5. another re-run reports 0 changes.
"""

from __future__ import annotations

import json
import secrets as random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_harness import casera, hcloud, run_stopped_after
from test_b2_key_rotation import B2Traffic, assert_rotated, local_ctx, traffic  # noqa: F401

from casera import b2_keys, db_roles
from casera.errors import ProviderError
from casera.load_stats import figures
from casera.operator_secrets import SPECS_BY_NAME, Secret
from casera.paths import outputs_dir
from casera.providers import docker_swarm, postgres
from casera.steady_probe import SteadyProbe
from casera.steps import stack
from casera.steps.access import node_addresses
from casera.steps.api_endpoint import api_endpoint_for
from casera.steps.swarm import connect_cluster
from casera.steps.swarm_secrets import b2_secret_names, digest, versions
from casera_localcloud.local_credentials import write_local_secret

pytestmark = [pytest.mark.localcloud, pytest.mark.slow]
RUNBOOK = "rotate-secrets"
KEEP = "stack.keep_secret_versions=1"


def latest_run() -> tuple[Path, dict[str, Any]]:
    path = sorted((outputs_dir("local") / RUNBOOK).glob("*.ipynb"))[-1]
    return path, json.loads(path.read_text())["metadata"]["casera"]


def steps_of(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["step"]: s for s in meta["steps"]}


def removed(step: dict[str, Any]) -> list[str]:
    """The Docker secret versions a clean-up step removes (or plans to)."""
    return sorted(line.split()[1].rstrip(":") for line in step["diff"] if line.startswith("- "))


def rotate(rotation: str, *extra: str) -> tuple[Path, dict[str, dict[str, Any]]]:
    done = casera("run", RUNBOOK, "--env", "local", "-p", f"rotation={rotation}", "-p", KEEP,
                  *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    kept, meta = latest_run()
    return kept, steps_of(meta)


class TokenProbe(SteadyProbe):
    """The SECRET_KEY contract under load, through the LB (the steady probe's bounds, rows
    and failures): mint a token, verify it (likely on another task), verify the token signed
    before the rotation."""

    before: str = ""

    def run(self) -> None:
        session = self.api.requests_session()
        deadline = time.monotonic() + self.max_s
        while not self.stop.is_set() and time.monotonic() < deadline:
            began = time.monotonic()
            made = self._one(session, "POST", "/tokens", 201, {"sub": "probe"})
            if made is not None:
                self._one(session, "POST", "/tokens/verify", 200, {"token": made.json()["token"]})
            self._one(session, "POST", "/tokens/verify", 200, {"token": self.before})
            self.stop.wait(max(0.0, 3 / self.rate - (time.monotonic() - began)))


def mint_before(api: Any) -> str:
    answer = api.requests_session().post(api.url("/tokens"), json={"sub": "before"}, timeout=10)
    assert answer.status_code == 201, answer.text[:200]
    return str(answer.json()["token"])


def verify_token(api: Any, token: str) -> dict[str, Any]:
    answer = api.requests_session().post(api.url("/tokens/verify"), json={"token": token},
                                         timeout=10)
    assert answer.status_code in (200, 401), answer.text[:200]
    return dict(answer.json())


def signing_mounts(client: Any) -> dict[str, str]:
    """The api spec's SECRET_KEY mounts: target -> version."""
    container = stack.stack_services(client)["api"]["spec"]["TaskTemplate"]["ContainerSpec"]
    return {r["File"]["Name"]: r["SecretName"] for r in container.get("Secrets") or []
            if r["File"]["Name"].startswith("secret_key")}


def mounted_versions(client: Any) -> dict[str, set[str]]:
    """secret file name -> the Docker secret versions the stack's specs and running tasks
    mount."""
    found: dict[str, set[str]] = {}
    services = stack.stack_services(client)
    running = stack.running_tasks(client)
    for service in services.values():
        specs = [service["spec"]["TaskTemplate"]] + [
            t["Spec"] for t in running.get(service["id"], [])]
        for spec in specs:
            for ref in (spec.get("ContainerSpec") or {}).get("Secrets") or []:
                found.setdefault(ref["File"]["Name"], set()).add(ref["SecretName"])
    return found


def params_keys(ctx: Any) -> dict[str, tuple[str, Secret]]:
    """The stored B2 keys params name (the store may hold others, made under another
    checkout's params: the local cloud is shared)."""
    names = {kp.name for kp in ctx.params.b2.keys}
    return {name: key for name, key in b2_keys.key_store("local").load().items()
            if name in names}


def logs_in(ctx: Any, cred: db_roles.DbCredential, pooled: bool) -> str | None:
    """None when ``cred`` logs in, else the server's refusal."""
    n = ctx.params.neon
    host, port = (n.pooler_host, n.pooler_port) if pooled else (n.direct_host, n.direct_port)
    try:
        postgres.probe(host, port, n.database, cred.role, cred.password, n.sslmode,
                       n.sslrootcert, n.hostaddr)
    except ProviderError as exc:
        return str(exc)
    return None


def db_users(client: Any) -> dict[str, set[str]]:
    """service -> the DB_USER of its spec and of each running task."""
    found: dict[str, set[str]] = {}
    running = stack.running_tasks(client)
    for name, service in stack.stack_services(client).items():
        specs = [service["spec"]["TaskTemplate"]] + [t["Spec"] for t in running.get(
            service["id"], [])]
        for spec in specs:
            for item in (spec.get("ContainerSpec") or {}).get("Env") or []:
                if item.startswith("DB_USER="):
                    found.setdefault(name, set()).add(item.split("=", 1)[1])
    return found


def leaked_into_swarm(client: Any, values: list[str]) -> list[str]:
    """Where a value shows in a service's spec or PreviousSpec, or a task's spec (its env)."""
    found = []
    for service in docker_swarm.services(client):
        for part in ("spec", "previous_spec"):
            text = json.dumps(service[part] or {})
            found += [f"{service['name']} {part}" for v in values if v in text]
    for task in docker_swarm.tasks(client):
        text = json.dumps(task.get("Spec") or {})
        found += [f"task {task['ID'][:12]}" for v in values if v in text]
    return found


def test_rotation_under_a_steady_probe(tmp_path: Path, traffic: B2Traffic,  # noqa: F811
                                       record_property: Callable[[str, object], None]) -> None:
    ctx = local_ctx()
    started = time.monotonic()
    rotation = f"e2e-{int(time.time())}"
    old_keys = params_keys(ctx)
    assert old_keys, "no B2 key store: run tests/e2e/test_bootstrap.py first"
    old_apns = ctx.secrets.get("apns_key")
    new_apns = f"e2e-apns-{random.token_urlsafe(24)}"
    old_key, new_key = ctx.secrets.get("secret_key"), f"e2e-sk-{random.token_urlsafe(32)}"
    cluster = connect_cluster(ctx, node_addresses(ctx))
    manager = cluster.manager
    before = versions(manager)
    assert before["apns_key"][-1][2] == digest("apns_key", old_apns), "not converged before"

    old_db = db_roles.app_credential(ctx)
    new_role = (db_roles.alternate_role(ctx.params.neon.role)
                if old_db.role == ctx.params.neon.role else ctx.params.neon.role)
    assert logs_in(ctx, old_db, pooled=True) is None, "the app's DB credential does not work"

    lb = hcloud().load_balancers.get_by_name(ctx.params.load_balancer.name)
    api = api_endpoint_for(ctx.params, lb.public_net.ipv4.ip)
    token_before = mint_before(api)
    assert verify_token(api, token_before)["signed_with"] == "current"
    signed_before = signing_mounts(manager)["secret_key"]

    # 1. The operator's new SECRET_KEY and APNs key (Apple's), in the operator's store.
    write_local_secret(SPECS_BY_NAME["apns_key"].env_var, new_apns)
    write_local_secret(SPECS_BY_NAME["secret_key"].env_var, new_key)
    marks: dict[str, float] = {}
    tokens = TokenProbe(api)
    tokens.before = token_before
    with SteadyProbe(api, b2=True) as probe, tokens:
        # 2. The dry run plans every change and makes none.
        _, dry = rotate(rotation, "--dry-run")
        n_keys = len(ctx.params.b2.keys)
        assert dry["new B2 keys"]["changed"] == n_keys
        assert dry["new DB password"]["changed"] >= 1  # the second role is made on first use
        assert dry["docker secrets"]["changed"] == 3 + 2 * n_keys
        assert dry["roll 1: new versions beside the old"]["changed"] == 1
        assert dry["roll 2: sign with the new SECRET_KEY"]["changed"] == 1
        assert dry["b2 old keys"]["changed"] == n_keys
        assert dry["db old role"]["changed"] == 1
        assert versions(manager) == before and params_keys(ctx) == old_keys
        assert db_roles.app_credential(ctx) == old_db
        marks["dry run"] = time.monotonic() - started

        # 3. Stopped between the rolls: new versions mounted, the new SECRET_KEY accepted only.
        traffic.phase = "rotation: stopped run"  # labels failures; no need to wait for rounds
        run_stopped_after(RUNBOOK, "secret_rotation.verify_rolled(", tmp_path, {
            "run_id": "e2e-rotation-stopped", "rotation": rotation,
            "overrides": {"stack.keep_secret_versions": 1}})
        now = versions(manager)
        mounted = mounted_versions(manager)
        for name in ["apns_key", "db_password"] + [b2_secret_names(kp)[1]
                                                   for kp in ctx.params.b2.keys]:
            assert len(now[name]) == len(before[name]) + 1, name
            assert mounted[name] == {now[name][-1][1]}, (name, mounted[name])
        assert now["apns_key"][-1][2] == digest("apns_key", Secret("apns_key", new_apns))
        assert now["secret_key"][-1][2] == digest("secret_key", Secret("secret_key", new_key))
        assert signing_mounts(manager) == {"secret_key": signed_before,
                                           "secret_key_accept": now["secret_key"][-1][1]}
        assert b2_keys.key_store("local").retiring(), "the old keys are not recorded"
        # The DB user changed with its password, in the same roll; the old role still works.
        new_db = db_roles.app_credential(ctx)
        assert new_db.role == new_role and db_roles.role_store("local").rotation() == rotation
        # Every service that logs in to the database: the backup's nightly pg_dump too.
        assert db_users(manager) == {"api": {new_role}, "worker": {new_role},
                                     "backup": {new_role}}
        assert logs_in(ctx, new_db, pooled=True) is None
        assert logs_in(ctx, old_db, pooled=True) is None, "the old credential went too early"
        marks["roll 1 (stopped run)"] = time.monotonic() - started

        # 4. The re-run converges: the old keys go once unused, old versions are cleaned up.
        traffic.phase = "rotation: converging run"
        kept, ran = rotate(rotation)
        marks["converging run"] = time.monotonic() - started
        assert ran["new B2 keys"]["changed"] == 0  # the stopped run made them
        assert ran["new DB password"]["changed"] == 0
        assert ran["docker secrets"]["changed"] == 0
        assert ran["roll 1: new versions beside the old"]["changed"] == 0
        assert ran["roll 2: sign with the new SECRET_KEY"]["changed"] == 1
        assert ran["b2 old keys"]["changed"] == n_keys
        assert ran["db old role"]["changed"] == 1
        # What the dry run planned for the clean-up is what the run removed.
        assert removed(ran["clean up old secret versions"]) == removed(
            dry["clean up old secret versions"])
        assert all(c["ok"] for s in ran.values() for c in s["checks"])
    when = ", ".join(f"{k} done at {v:.0f} s" for k, v in marks.items())
    for label, rows in (("requests through the LB", probe.rows),
                        ("token mints and verifies through the LB", tokens.rows)):
        bad = [r for r in rows if not r.ok]
        got = figures(rows)  # type: ignore[arg-type]
        record_property("measured", f"secret rotation: {got.requests} {label} ({len(bad)} "
                        f"failed), p99 {got.p99_ms:.0f} ms; {when}")
        assert rows and not bad, Counter(f"{r.what}: {r.detail[:60]}" for r in bad)
    # The new SECRET_KEY signs, the old one is still accepted: the pre-rotation token verifies.
    assert signing_mounts(manager) == {"secret_key": versions(manager)["secret_key"][-1][1],
                                       "secret_key_accept": signed_before}
    assert verify_token(api, token_before) == {"valid": True, "sub": "before",
                                               "signed_with": "accepted"}
    assert verify_token(api, mint_before(api))["signed_with"] == "current"

    # The old B2 keys are gone and refused, the app never lost B2 access.
    assert_rotated(traffic, old_keys)
    # The old DB credential is refused, direct and through the pooler; the new one works.
    for pooled in (True, False):
        refusal = logs_in(ctx, old_db, pooled)
        assert refusal and "authentication failed" in refusal, (pooled, refusal)
        assert logs_in(ctx, new_db, pooled) is None
    assert db_roles.role_store("local").retiring() is None
    # No DB password, old or new, in any spec, PreviousSpec or task env.
    db_values = [old_db.password.reveal(), new_db.password.reveal()]
    assert not leaked_into_swarm(manager, db_values)
    # Old versions: only the newest (keep 1) of each, plus the previous APNs key (grace) and
    # the accepted SECRET_KEY (mounted).
    after = versions(manager)
    assert [v[1] for v in after.pop("secret_key")] == [signed_before, signing_mounts(manager)[
        "secret_key"]]
    assert [v[2] for v in after["apns_key"][-2:]] == [
        digest("apns_key", old_apns), digest("apns_key", Secret("apns_key", new_apns))]
    assert all(len(items) == 1 for name, items in after.items() if name != "apns_key"), {
        n: [v[1] for v in items] for n, items in after.items()}
    assert len(after["apns_key"]) == 2
    # No value in the kept notebook, the old or the new.
    text = kept.read_text()
    values = [new_apns, old_apns.reveal(), new_key, old_key.reveal(), *db_values]
    values += [s.reveal() for _, s in old_keys.values()]
    values += [s.reveal() for _, s in b2_keys.key_store("local").load().values()]
    assert not [v for v in values if v in text or json.dumps(v)[1:-1] in text]

    # 5. A re-run changes nothing.
    _, again = rotate(rotation)
    assert sum(s["changed"] for s in again.values()) == 0, [
        (name, s["diff"]) for name, s in again.items() if s["changed"]]
    record_property("measured", f"secret rotation module: {time.monotonic() - started:.0f} s")
