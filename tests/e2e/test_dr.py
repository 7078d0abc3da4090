"""Disaster recovery (issue 12), each scenario a drill with a ledger of writes made before
the disaster, then a re-run that changes nothing.

- database-pitr: writes, note T, more writes and a DROP TABLE; ``casera run dr-restore``
  brings back exactly the rows up to T, keeps the state after T in branch
  ``pre-restore-<T>``, the api is green through the LB.
- quorum-lost: items through the api and marker keys in Redis, then two of the three nodes
  killed (``casera local kill-node``, never Redis's); the runbook fences them, forces a new
  cluster on the survivor and replaces them through the bootstrap's steps: three managers,
  every service, secret and config the same objects as before, every item readable and
  processed, every marker key in Redis (the same Redis process).
- total-loss: the worker stopped, items made (their jobs wait in Redis), marker keys, a
  Redis snapshot taken, then a key written after it and files uploaded to B2; all three
  nodes killed. The runbook rebuilds: every item readable through the api and its job
  processed, every upload byte-equal through a signed URL, the keys of the snapshot back
  (the one written after it lost: Redis's RPO is the snapshot's age).

Runs after tests/e2e/test_bootstrap.py on the cloud it bootstrapped (file order does that):

    pytest tests/e2e/test_bootstrap.py tests/e2e/test_dr.py

It leaves the cloud usable for the next modules: the restore to T only loses this module's
few seconds of writes after T (its own ledger rows and the app's item it made before T
stays), and the preserved branch is deleted at the end.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import requests
from e2e_harness import casera, hcloud
from test_bootstrap import PARAMS

from casera.context import RunContext
from casera.db_roles import credential_for
from casera.operator_secrets import SecretStore
from casera.params import load_params
from casera.paths import outputs_dir
from casera.progress import wait_for
from casera.providers import docker_swarm
from casera.steps import redis_backup, storage
from casera.steps.api_endpoint import api_endpoint_for
from casera.steps.database_restore import preserved_name
from casera.steps.redis_checks import reachable_cluster, redis_client, running_task
from casera.steps.stack import stack_services
from casera_localcloud.local_credentials import read_local_secrets

pytestmark = [pytest.mark.localcloud, pytest.mark.slow]
NEON_API = PARAMS.neon.api_endpoint
PROJECT = PARAMS.neon.project_id


def db(port: int | None = None) -> psycopg.Connection:
    """The database as the runbook's operator reaches it: the direct endpoint, TLS."""
    n = PARAMS.neon
    # The app's credential: after a DB password rotation, the other login role's.
    cred = credential_for("local", n.role, SecretStore("local"))
    return psycopg.connect(host=n.hostaddr, port=port or n.direct_port, dbname=n.database,
                           user=cred.role, password=cred.password.reveal(),
                           sslmode="require", connect_timeout=10, autocommit=True)


def neon(method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    answer = requests.request(method, NEON_API + path, json=body, timeout=30, headers={
        "Authorization": f"Bearer {read_local_secrets()['CASERA_NEON_API_KEY']}"})
    assert answer.status_code < 400, answer.text
    return answer.json()


def wait_ops(answer: dict[str, Any], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    for op in answer.get("operations") or []:
        while True:
            status = neon("GET", f"/projects/{PROJECT}/operations/{op['id']}")["operation"]
            if status["status"] in ("finished", "failed"):
                assert status["status"] == "finished", status
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.5)


def latest_run() -> dict[str, Any]:
    path = sorted((outputs_dir("local") / "dr-restore").glob("*.ipynb"))[-1]
    return json.loads(path.read_text())["metadata"]["casera"]


def step(meta: dict[str, Any], name: str) -> dict[str, Any]:
    found = [s for s in meta["steps"] if s["step"] == name]
    assert found, f"no step {name!r}: {[s['step'] for s in meta['steps']]}"
    return found[-1]


def readyz() -> int:
    lb = hcloud().load_balancers.get_by_name(PARAMS.load_balancer.name)
    return api_endpoint_for(PARAMS, lb.public_net.ipv4.ip).get("/readyz")[0]


def test_an_unknown_scenario_is_refused_before_any_change():
    done = casera("run", "dr-restore", "--env", "local", "-p", "scenario=datacenter-fire",
                  "--approve")
    assert done.returncode == 1, done.stdout[-2000:]
    meta = latest_run()
    assert meta["status"] == "failed" and "is not one of" in (meta.get("error") or ""), meta
    assert all(s["changed"] == 0 for s in meta["steps"]), meta["steps"]


def test_database_pitr_restores_exactly_the_rows_up_to_t(record_property):
    # The app's table exists and holds an item made through the api before T (so the api's
    # schema, made once per process, is still there after the restore).
    lb = hcloud().load_balancers.get_by_name(PARAMS.load_balancer.name)
    endpoint = api_endpoint_for(PARAMS, lb.public_net.ipv4.ip)
    made = endpoint.requests_session().post(endpoint.url("/items"), json={"name": "e2e-dr"},
                                            timeout=10)
    assert made.status_code in (200, 201), made.text
    item_id = int(made.json()["id"])
    with db() as conn:
        conn.execute("DROP TABLE IF EXISTS e2e_dr_ledger, e2e_dr_scratch")
        conn.execute("CREATE TABLE e2e_dr_ledger (n int PRIMARY KEY, "
                     "at timestamptz NOT NULL DEFAULT clock_timestamp())")
        conn.execute("CREATE TABLE e2e_dr_scratch (n int)")
        conn.execute("INSERT INTO e2e_dr_scratch SELECT generate_series(1, 3)")
        for n in range(1, 21):
            conn.execute("INSERT INTO e2e_dr_ledger (n) VALUES (%s)", (n,))
        time.sleep(0.5)
        t = datetime.now(UTC)
        time.sleep(0.5)
        for n in range(21, 31):
            conn.execute("INSERT INTO e2e_dr_ledger (n) VALUES (%s)", (n,))
        conn.execute("DROP TABLE e2e_dr_scratch")
        items_after = conn.execute("SELECT count(*) FROM items").fetchone()[0]
    restore_to = t.isoformat()
    kept_name = preserved_name(t)

    started = time.monotonic()
    done = casera("run", "dr-restore", "--env", "local", "-p", "scenario=database-pitr",
                  "-p", f"restore_to={restore_to}", "--approve")
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    meta = latest_run()
    assert meta["status"] == "succeeded", meta.get("failed_step")

    with db() as conn:
        ledger = [r[0] for r in conn.execute("SELECT n FROM e2e_dr_ledger ORDER BY n")]
        scratch = conn.execute("SELECT count(*) FROM e2e_dr_scratch").fetchone()[0]
        item = conn.execute("SELECT count(*) FROM items WHERE id = %s", (item_id,)).fetchone()
        items_now = conn.execute("SELECT count(*) FROM items").fetchone()[0]
    assert ledger == list(range(1, 21)), ledger  # 0 rows lost before T, 0 after T remain
    assert scratch == 3  # the dropped table is back
    assert item == (1,) and items_now == items_after

    inspected = {c["name"]: c["detail"] for c in step(meta, "inspect restore point")["checks"]}
    assert inspected["table e2e_dr_ledger"].startswith("20 rows at restore_to, 30 now"), \
        inspected
    assert "GONE now" in inspected["table e2e_dr_scratch"], inspected
    verified = {c["name"]: (c["ok"], c["detail"])
                for c in step(meta, "database after restore")["checks"]}
    assert verified["api /readyz green"][0] and verified["tables at restore_to back"][0], \
        verified
    assert readyz() == 200

    # The state after T is in the preserved branch (a compute added to read it).
    branches = neon("GET", f"/projects/{PROJECT}/branches")["branches"]
    kept = [b for b in branches if b["name"] == kept_name]
    assert len(kept) == 1, [b["name"] for b in branches]
    wait_ops(neon("POST", f"/projects/{PROJECT}/endpoints",
                  {"endpoint": {"branch_id": kept[0]["id"], "type": "read_write"}}))
    uri = neon("GET", f"/projects/{PROJECT}/connection_uri?branch_id={kept[0]['id']}"
                      "&database_name=casera&role_name=casera")["uri"]
    with psycopg.connect(uri, connect_timeout=10) as conn:
        after = [r[0] for r in conn.execute("SELECT n FROM e2e_dr_ledger ORDER BY n")]
        gone = conn.execute("SELECT to_regclass('e2e_dr_scratch')::text").fetchone()
    assert after == list(range(1, 31)) and gone == (None,)

    # A re-run with the same restore_to changes nothing.
    again = casera("run", "dr-restore", "--env", "local", "-p", "scenario=database-pitr",
                   "-p", f"restore_to={restore_to}", "--approve")
    assert again.returncode == 0, again.stdout[-3000:]
    rerun = latest_run()
    assert rerun["steps"] and all(s["changed"] == 0 for s in rerun["steps"]), rerun["steps"]
    assert "already restored" in step(rerun, "neon restore in place")["reason"]

    rto = next(c["detail"] for c in step(meta, "database after restore")["checks"]
               if c["name"] == "RTO")
    record_property("measured", f"dr database-pitr: run {took:.0f} s, RTO {rto}")

    # Leave the cloud as it was: the preserved branch and the test's tables go.
    wait_ops(neon("DELETE", f"/projects/{PROJECT}/branches/{kept[0]['id']}"))
    with db() as conn:
        conn.execute("DROP TABLE IF EXISTS e2e_dr_ledger, e2e_dr_scratch")


# --- quorum-lost ------------------------------------------------------------------------------

LEDGER_KEYS = 20
LEDGER_ITEMS = 10


def local_ctx() -> RunContext:
    secrets = SecretStore("local")
    return RunContext(env="local", params=load_params("local", secrets=secrets),
                      secrets=secrets, interactive=False, run_id="e2e-dr", operator="e2e")


def swarm_objects(ctx: RunContext) -> dict[str, set[tuple[str, str]]]:
    """(name, id) of every service, secret and config: the same ids after the recovery
    means the same objects, kept through the new cluster, not made again."""
    client = reachable_cluster(ctx).manager
    return {"services": {(s.name, s.id) for s in client.services.list()},
            "secrets": {(s.name, s.id) for s in client.secrets.list()},
            "configs": {(c.name, c.id) for c in client.configs.list()}}


def processed(ids: list[int]) -> dict[int, int] | None:
    with db() as conn:
        rows = dict(conn.execute("SELECT id, process_count FROM items WHERE id = ANY(%s)",
                                 (ids,)).fetchall())
    return rows if len(rows) == len(ids) and all(rows.values()) else None


def write_ledger(ctx: RunContext, tag: str) -> tuple[list[int], str]:
    """LEDGER_ITEMS items through the api (a row and an Asynq job each) and LEDGER_KEYS
    marker keys ``e2e:dr:<tag>:<n>`` in Redis: (the items' ids, Redis's node)."""
    endpoint = api_endpoint_for(PARAMS, hcloud().load_balancers.get_by_name(
        PARAMS.load_balancer.name).public_net.ipv4.ip)
    session = endpoint.requests_session()
    items = []
    for n in range(LEDGER_ITEMS):
        made = session.post(endpoint.url("/items"), json={"name": f"e2e-{tag}-{n}"}, timeout=10)
        assert made.status_code == 201, made.text
        items.append(int(made.json()["id"]))
    with redis_client(ctx) as (client, task):
        for n in range(LEDGER_KEYS):
            client.set(f"e2e:dr:{tag}:{n}", str(n))
    return items, task.node


def kill_and_recover(nodes: list[str], scenario: str) -> tuple[float, dict[str, Any]]:
    """Kill ``nodes`` (`casera local kill-node`), then run the scenario: (its wall time,
    the kept run's metadata), the run green."""
    for name in nodes:
        assert casera("local", "kill-node", name).returncode == 0
    started = time.monotonic()
    done = casera("run", "dr-restore", "--env", "local", "-p", f"scenario={scenario}",
                  "--approve")
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    meta = latest_run()
    assert meta["status"] == "succeeded", meta.get("failed_step")
    return took, meta


def rerun_changes_nothing(scenario: str) -> None:
    """A re-run after the recovery finds the swarm whole and changes nothing."""
    again = casera("run", "dr-restore", "--env", "local", "-p", f"scenario={scenario}",
                   "--approve")
    assert again.returncode == 0, again.stdout[-3000:]
    rerun = latest_run()
    assert rerun["steps"] and all(s["changed"] == 0 for s in rerun["steps"]), rerun["steps"]
    assert "whole" in step(rerun, "quorum")["reason"]


def test_quorum_lost_restores_three_managers_with_every_service_and_secret(record_property):
    ctx = local_ctx()
    lb = hcloud().load_balancers.get_by_name(PARAMS.load_balancer.name)
    endpoint = api_endpoint_for(PARAMS, lb.public_net.ipv4.ip)
    session = endpoint.requests_session()
    # The ledger: items (a row and a job each) and marker keys in Redis, and the swarm's
    # objects, all before the disaster.
    items, redis_node = write_ledger(ctx, "quorum")
    before = swarm_objects(ctx)
    assert before["secrets"] and before["services"]
    dead = [n for n in PARAMS.server_names() if n != redis_node]
    took, meta = kill_and_recover(dead, "quorum-lost")
    detected = {c["name"]: c for c in step(meta, "quorum")["checks"]}
    assert any(w in detected["quorum lost"]["detail"] for w in
               ("context deadline exceeded", "does not have a leader")), detected
    assert all(f"server {n}: power off" in " ".join(step(meta, "fence")["diff"])
               for n in dead), step(meta, "fence")
    forced = {c["name"]: c for c in step(meta, "force new cluster")["checks"]}
    assert forced["advertised address"]["ok"], forced
    # Its engine restarted after the force: without it the survivor's gossip stays closed and
    # the new managers' tasks cannot reach Redis over the overlay (moby/moby#36860).
    assert forced["gossip listening"]["ok"], forced
    assert step(meta, "servers: delete")["changed"] == len(dead)
    assert step(meta, "servers")["changed"] == len(dead)

    # Three managers again, the same swarm objects, the ledger whole.
    entries = docker_swarm.nodes(reachable_cluster(ctx).manager)
    assert sorted(e["hostname"] for e in entries) == PARAMS.server_names(), entries
    assert all(e["role"] == "manager" and e["state"] == "ready"
               and e["reachability"] == "reachable" for e in entries), entries
    after = swarm_objects(ctx)
    assert after == before, {k: before[k] ^ after[k] for k in before}
    assert sorted(s.name for s in hcloud().servers.get_all()) == PARAMS.server_names()
    read = [session.get(endpoint.url(f"/items/{i}"), timeout=10).status_code for i in items]
    assert read == [200] * len(items), read
    assert wait_for("the ledger's jobs processed", lambda: processed(items), 120)
    with redis_client(ctx) as (client, task):
        keys = [client.get(f"e2e:dr:quorum:{n}") for n in range(LEDGER_KEYS)]
        client.delete(*[f"e2e:dr:quorum:{n}" for n in range(LEDGER_KEYS)])
    assert task.node == redis_node
    lost_keys = sum(1 for n, v in enumerate(keys) if v != str(n))
    assert lost_keys == 0, keys
    verified = {c["name"]: c for c in step(meta, "swarm recovered")["checks"]}
    assert all(c["ok"] for c in verified.values()), verified
    assert verified["redis data intact"]["ok"]
    rto = verified["RTO"]["detail"]

    rerun_changes_nothing("quorum-lost")
    assert running_task(ctx, "redis").node == redis_node
    record_property("measured", f"dr quorum-lost: run {took:.0f} s, RTO {rto}; RPO 0 of "
                    f"{LEDGER_ITEMS} items, 0 of {LEDGER_KEYS} keys lost")


# --- total-loss -------------------------------------------------------------------------------


def scale_worker(ctx: RunContext, replicas: int) -> None:
    client = reachable_cluster(ctx).manager
    client.services.get(stack_services(client)["worker"]["id"]).scale(replicas)


def signed_download(ctx: RunContext, name: str) -> bytes:
    """A file of the uploads bucket through a signed URL (a download authorization for its
    name), as the app hands them out."""
    api = storage.master_api(ctx)
    bucket = api.get_bucket_by_name(ctx.params.b2.buckets["uploads"].name)
    token = bucket.get_download_authorization(name, 600)
    url = f"{api.account_info.get_download_url()}/file/{bucket.name}/{name}"
    answer = requests.get(url, params={"Authorization": token}, timeout=30)
    assert answer.status_code == 200, answer.text[:300]
    return answer.content


def test_total_loss_rebuilds_everything_from_neon_b2_and_the_operators_store(record_property):
    ctx = local_ctx()
    lb = hcloud().load_balancers.get_by_name(PARAMS.load_balancer.name)
    endpoint = api_endpoint_for(PARAMS, lb.public_net.ipv4.ip)
    session = endpoint.requests_session()
    # Jobs queued and never run before the loss: the worker stopped first.
    scale_worker(ctx, 0)
    wait_for("the worker stopped", lambda: running_task(ctx, "worker") is None, 60)
    items, _ = write_ledger(ctx, "total")
    redis_backup.take_snapshot(ctx)
    with redis_client(ctx) as (client, _):
        client.set("e2e:dr:total:after-snapshot", "lost")
    api = storage.master_api(ctx)
    bucket = api.get_bucket_by_name(PARAMS.b2.buckets["uploads"].name)
    uploads = {f"e2e-dr/total-{n}.bin": bytes(range(256)) * (n + 1) for n in range(3)}
    for name, data in uploads.items():
        bucket.upload_bytes(data, name)
    took, meta = kill_and_recover(PARAMS.server_names(), "total-loss")
    assert "total loss" in step(meta, "quorum")["reason"]
    assert step(meta, "servers: delete")["changed"] == 3
    assert step(meta, "servers")["changed"] == 3
    assert step(meta, "docker secrets")["changed"] > 0  # made again in the new swarm

    read = [session.get(endpoint.url(f"/items/{i}"), timeout=10).status_code for i in items]
    assert read == [200] * len(items), read
    assert wait_for("the jobs queued before the loss processed", lambda: processed(items), 180)
    assert {name: signed_download(ctx, name) for name in uploads} == uploads
    with redis_client(ctx) as (client, _):
        keys = [client.get(f"e2e:dr:total:{n}") for n in range(LEDGER_KEYS)]
        after = client.get("e2e:dr:total:after-snapshot")
        client.delete(*[f"e2e:dr:total:{n}" for n in range(LEDGER_KEYS)])
    assert keys == [str(n) for n in range(LEDGER_KEYS)], keys
    assert after is None  # written after the snapshot: within Redis's RPO, lost
    verified = {c["name"]: c for c in step(meta, "swarm recovered")["checks"]}
    assert all(c["ok"] for c in verified.values()), verified
    assert verified["redis loaded the snapshot"]["ok"]
    rto = verified["RTO"]["detail"]
    first = outputs_dir("local") / "first-run-seconds"
    bootstrap = f"{float(first.read_text()):.0f} s" if first.exists() else "not measured here"

    rerun_changes_nothing("total-loss")
    for name in uploads:
        bucket.hide_file(name)
    record_property("measured", f"dr total-loss: run {took:.0f} s, RTO {rto} (first bootstrap "
                    f"{bootstrap}); RPO 0 of {LEDGER_ITEMS} items and jobs, 0 of "
                    f"{len(uploads)} uploads, 0 of {LEDGER_KEYS} keys in the snapshot")
