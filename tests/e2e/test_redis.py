"""Redis: backups to B2 restore with the same key count, and a planned move loses no key and
no job (issue 11).

Runs after tests/e2e/test_bootstrap.py, on the local cloud it left bootstrapped (file order
does that); it brings nothing down or up and leaves Redis where params put it
(``swarm.redis_node``), every service at its replicas:

    pytest tests/e2e/test_bootstrap.py tests/e2e/test_redis.py

Jobs are real: ``POST /items`` through the load balancer writes a Postgres row and enqueues an
Asynq task; the stand-in worker counts every processing of an item in Postgres
(``items.process_count``), so "exactly once" is read from the database, not inferred.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from typing import Any

import docker
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
from casera.providers import docker_swarm
from casera.steps.api_endpoint import ApiEndpoint, api_endpoint_for
from casera.steps.redis_checks import reachable_cluster, redis_client
from casera.steps.swarm import REDIS_LABEL, connect_cluster
from casera_localcloud import nodes

pytestmark = [pytest.mark.localcloud, pytest.mark.slow]
NAMES = PARAMS.server_names()
HOME, OTHER = NAMES[PARAMS.swarm.redis_node - 1], NAMES[1]



@functools.cache
def api() -> ApiEndpoint:
    """The api through the local load balancer, as users reach it: HTTPS with the origin
    certificate when the edge is on."""
    lb = hcloud().load_balancers.get_by_name(PARAMS.load_balancer.name)
    return api_endpoint_for(PARAMS, lb.public_net.ipv4.ip)


_SESSION: list[requests.Session] = []


def api_session() -> requests.Session:
    if not _SESSION:
        _SESSION.append(api().requests_session())
    return _SESSION[0]

def latest(runbook: str) -> dict[str, Any]:
    path = sorted((outputs_dir("local") / runbook).glob("*.ipynb"))[-1]
    return json.loads(path.read_text())["metadata"]["casera"]


def step(meta: dict[str, Any], name: str, index: int = -1) -> dict[str, Any]:
    found = [s for s in meta["steps"] if s["step"] == name]
    assert found, f"no step {name!r} in the run: {[s['step'] for s in meta['steps']]}"
    return found[index]


def checks(record: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    return {c["name"]: (c["ok"], c["detail"]) for c in record["checks"]}


def local_ctx() -> RunContext:
    """A context for reading the cloud, built directly: start_run would take the env lock
    that the runs under test need."""
    secrets = SecretStore("local")
    return RunContext(env="local", params=load_params("local", secrets=secrets),
                      secrets=secrets, interactive=False, run_id="e2e-redis", operator="e2e")


def manager() -> docker.DockerClient:
    """A manager's engine, as the runbooks reach it (over SSH, host keys pinned)."""
    return connect_cluster(local_ctx()).manager


def scale_workers(client: docker.DockerClient, replicas: int) -> None:
    client.services.get("casera_worker").scale(replicas)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        running = [t for t in client.api.tasks(filters={"service": "casera_worker",
                                                        "desired-state": "running"})
                   if t["Status"]["State"] == "running"]
        if len(running) == replicas:
            return
        time.sleep(1)
    raise AssertionError(f"casera_worker did not reach {replicas} running tasks in 120 s")


def enqueue(count: int) -> list[int]:
    ids = []
    for n in range(count):
        answer = api_session().post(api().url("/items"), json={"name": f"e2e-redis-{n}"},
                                    timeout=10)
        assert answer.status_code in (200, 201), answer.text
        ids.append(int(answer.json()["id"]))
    return ids


def process_counts(ids: list[int]) -> dict[int, int]:
    n = PARAMS.neon
    cred = credential_for("local", n.role, SecretStore("local"))  # after a rotation: the other role
    with psycopg.connect(host=n.hostaddr, port=n.direct_port, dbname=n.database, user=cred.role,
                         password=cred.password.reveal(),
                         sslmode="require", connect_timeout=10) as conn:
        rows = conn.execute("SELECT id, process_count FROM items WHERE id = ANY(%s)",
                            (ids,)).fetchall()
    return {int(i): int(c) for i, c in rows}


# A duplicate would come from a lease running out (after a move): counts are final a lease's
# time after every item was processed.
LEASE_S = 35


def wait_all_processed(ids: list[int], timeout: float = 120) -> float:
    """Waits until every item was processed at least once; returns when (monotonic), for
    :func:`counts_after_a_lease`. The caller may do other work in between."""
    deadline = time.monotonic() + timeout
    counts = process_counts(ids)
    while time.monotonic() < deadline and not all(counts.get(i, 0) >= 1 for i in ids):
        time.sleep(1)
        counts = process_counts(ids)
    return time.monotonic()


def counts_after_a_lease(ids: list[int], processed_at: float) -> dict[int, int]:
    time.sleep(max(0.0, processed_at + LEASE_S - time.monotonic()))
    return process_counts(ids)


def wait_processed(ids: list[int], timeout: float = 120) -> dict[int, int]:
    return counts_after_a_lease(ids, wait_all_processed(ids, timeout))


def swarm_node_state(client: docker.DockerClient, name: str) -> str:
    return next(n.attrs["Status"]["State"] for n in client.nodes.list()
                if n.attrs["Description"]["Hostname"] == name)


@pytest.fixture(scope="module")
def cluster():
    return manager()


def test_backup_restores_with_the_recorded_key_count(cluster, record_property) -> None:
    ids = enqueue(10)
    processed_at = wait_all_processed(ids, 60)
    started = time.monotonic()
    done = casera("run", "redis-backup", "--env", "local")
    record_property("measured", f"redis-backup runbook: {time.monotonic() - started:.0f} s")
    # The lease's wait for a duplicate ran alongside the backup.
    assert all(c == 1 for c in counts_after_a_lease(ids, processed_at).values())
    assert done.returncode == 0, done.stdout[-2000:]
    meta = latest("redis-backup")
    snap = step(meta, "redis snapshot")
    assert snap["changed"] == 1 and snap["ok"], snap
    restore = checks(step(meta, "redis snapshot restore"))
    ok, detail = restore["restored key count"]
    assert ok, detail
    assert int(detail.split()[0]) > 0, f"an empty Redis proves little: {detail}"
    assert restore["sha256"][0], restore["sha256"]
    assert step(meta, "asynq integrity")["ok"]
    listing = checks(step(meta, "redis snapshots"))
    assert listing["newest snapshot recent"][0], listing


def test_planned_move_keeps_every_key_and_job(cluster, record_property) -> None:
    # Workers off: every job enqueued now is still queued in Redis when it moves.
    scale_workers(cluster, 0)
    try:
        ids = enqueue(30)
        done = casera("run", "redis-failover", "--env", "local", "-p", f"target={OTHER}")
        assert done.returncode == 0, done.stdout[-3000:]
        meta = latest("redis-failover")
        move = step(meta, "redis move")
        found = checks(move)
        assert found["keys equal"][0], found["keys equal"]
        assert found["no write after the pause"][0], found["no write after the pause"]
        record_property("measured", f"planned move {HOME} -> {OTHER}: "
                        f"{found['keys equal'][1]}; write pause "
                        f"{found['writes paused less than the pause limit'][1]}; unreachable "
                        f"{found['redis unreachable'][1]}")
        before, after = step(meta, "asynq integrity", 0), step(meta, "asynq integrity", -1)
        assert before["ok"] and after["ok"]
        assert step(meta, "redis placement")["ok"]
    finally:
        scale_workers(cluster, PARAMS.services.worker.replicas)
    processed_at = wait_all_processed(ids)

    # The no-op re-run goes in the lease's wait for a duplicate.
    again = casera("run", "redis-failover", "--env", "local", "-p", f"target={OTHER}")
    assert again.returncode == 0 and latest("redis-failover")["steps"] and all(
        s["changed"] == 0 for s in latest("redis-failover")["steps"]), again.stdout[-2000:]

    counts = counts_after_a_lease(ids, processed_at)
    assert sorted(counts) == sorted(ids), "rows missing"
    assert [i for i, c in counts.items() if c != 1] == [], counts
    # Redis stays on OTHER: the node-lost tests lose whichever node it is on, and the last
    # of them moves it back where params put it (no target), which the cloud needs once.


def redis_node_now() -> str:
    with redis_client(local_ctx()) as (_, task):
        return task.node


def test_node_lost_restores_the_newest_snapshot_elsewhere(record_property) -> None:
    ctx = local_ctx()
    # Wherever the planned move left it (OTHER when the module runs whole).
    lost = redis_node_now()
    # Refused while Redis is healthy: nothing fenced, nothing moved.
    refused = casera("run", "redis-failover", "--env", "local", "-p", "mode=node-lost")
    assert refused.returncode == 1, refused.stdout[-2000:]
    meta = latest("redis-failover")
    assert "Preconditions" in (meta["failed_step"] or ""), meta["failed_step"]
    assert not [s for s in meta["steps"] if s["step"] in ("redis fence", "redis restore")]
    assert hcloud().servers.get_by_name(lost).status == "running"

    ids = enqueue(10)
    processed_at = wait_all_processed(ids, 60)
    assert casera("run", "redis-backup", "--env", "local").returncode == 0
    # The lease's wait for a duplicate ran alongside the backup; read before the kill.
    assert all(c == 1 for c in counts_after_a_lease(ids, processed_at).values())
    with redis_client(ctx) as (client, task):
        assert task.node == lost
        keys_at_loss = int(client.dbsize())

    nodes.kill_node(lost)
    survivor = reachable_cluster(local_ctx()).manager
    deadline = time.monotonic() + 90
    while swarm_node_state(survivor, lost) != "down" and time.monotonic() < deadline:
        time.sleep(2)
    assert swarm_node_state(survivor, lost) == "down"

    done = casera("run", "redis-failover", "--env", "local", "-p", "mode=node-lost")
    assert done.returncode == 0, done.stdout[-3000:]
    meta = latest("redis-failover")
    fence = step(meta, "redis fence")
    assert checks(fence)[f"{lost} off"][0], fence
    assert hcloud().servers.get_by_name(lost).status == "off"
    restore = checks(step(meta, "redis restore"))
    assert restore["restored key count"][0] and restore["api /readyz green"][0], restore
    assert step(meta, "asynq integrity", -1)["ok"]
    with redis_client(local_ctx()) as (client, task):
        assert task.node != lost
        restored = int(client.dbsize())
    record_property("measured", f"node-lost from B2: RPO {restore['RPO'][1]}; "
                    f"RTO {restore['RTO'][1]}; keys {keys_at_loss} at the loss, {restored} "
                    f"restored ({keys_at_loss - restored} lost)")

    again = casera("run", "redis-failover", "--env", "local", "-p", "mode=node-lost",
                   "-p", f"lost={lost}")
    assert again.returncode == 0, again.stdout[-2000:]
    assert [(s["step"], s["changed"]) for s in latest("redis-failover")["steps"]
            if s["changed"]] == [], "a re-run changed something"

    # A planned move to the fenced node is refused before anything moves: the node-lost run
    # left exactly the state that test needs (a down target, Redis healthy elsewhere), so it
    # costs no partition and heal of its own.
    refuse_a_move_to(lost, redis_on=task.node, record_property=record_property)

    # The bootstrap, told where Redis is now, powers the fenced node on (it rejoins the
    # Swarm). Redis stays where it was restored: the standby test loses that node next and
    # moves Redis home once at its end.
    bootstrap_with_redis_on(task.node)
    assert hcloud().servers.get_by_name(lost).status == "running"
    assert {swarm_node_state(manager(), n) for n in NAMES} == {"ready"}


def refuse_a_move_to(down: str, redis_on: str, record_property: Any) -> None:
    """A planned move to ``down`` (a node the Swarm sees down) stops at its preconditions:
    Redis stays on ``redis_on``, its label too, and no move service was made."""
    survivor = reachable_cluster(local_ctx()).manager
    assert swarm_node_state(survivor, down) == "down"
    started = time.monotonic()
    done = casera("run", "redis-failover", "--env", "local", "-p", f"target={down}")
    record_property("measured", f"refusal of a move to {down} (down): the refused run took "
                    f"{time.monotonic() - started:.0f} s")
    assert done.returncode == 1, done.stdout[-2000:]
    meta = latest("redis-failover")
    assert meta["failed_step"] and "Preconditions" in meta["failed_step"], meta["failed_step"]
    assert not [s for s in meta["steps"] if s["step"] == "redis move"], "it moved anyway"
    found = checks(step(meta, "redis move check"))
    assert not found[f"target {down} up"][0], found
    labelled = [e["hostname"] for e in docker_swarm.nodes(survivor)
                if e["labels"].get(REDIS_LABEL) == "true"]
    assert labelled == [redis_on]
    assert not survivor.services.list(filters={"name": "casera-redis-move"})
    assert redis_node_now() == redis_on


def bootstrap_with_redis_on(redis_on: str) -> None:
    """After a node-lost run: the bootstrap, told Redis now runs on ``redis_on``, powers the
    fenced node on (and lets it rejoin)."""
    boot = casera("run", "bootstrap", "--env", "local", "--approve",
                  "-p", f"swarm.redis_node={NAMES.index(redis_on) + 1}")
    assert boot.returncode == 0, boot.stdout[-3000:]


def bootstrap_then_move_home(redis_on: str) -> None:
    """After a node-lost run: :func:`bootstrap_with_redis_on`; then a planned move with no
    target puts Redis back on the params node, past that node's stale volume, with every node
    ready and /readyz green."""
    bootstrap_with_redis_on(redis_on)
    back = casera("run", "redis-failover", "--env", "local")
    assert back.returncode == 0, back.stdout[-3000:]
    assert checks(step(latest("redis-failover"), "redis move"))["keys equal"][0]
    survivor = manager()
    assert {swarm_node_state(survivor, n) for n in NAMES} == {"ready"}
    assert api_session().get(api().url("/readyz"), timeout=10).status_code == 200


def _ledger_writes(ledger: list[int], stop: threading.Event) -> None:
    """POST /items until ``stop``: every id the api acknowledged goes into ``ledger`` (its
    Asynq task was written to Redis before the answer). Failures after the kill are expected
    and are not acknowledged writes."""
    session = api().requests_session()
    n = 0
    while not stop.is_set():
        n += 1
        try:
            answer = session.post(api().url("/items"), json={"name": f"e2e-standby-{n}"},
                                  timeout=5)
        except requests.RequestException:
            continue
        if answer.status_code in (200, 201):
            ledger.append(int(answer.json()["id"]))


def _queued_items(client: Any) -> set[int]:
    """Item ids of the tasks in Asynq's default queue (the stand-in's JSON message)."""
    found = set()
    for key in client.scan_iter(match="asynq:{default}:t:*", count=1000):
        msg = client.hget(key, "msg")
        if msg:
            payload = json.loads(msg).get("payload") or {}
            if "item_id" in payload:
                found.add(int(payload["item_id"]))
    return found


def test_node_lost_promotes_the_warm_standby(record_property) -> None:
    from casera.steps.redis_standby import find_standby

    started = time.monotonic()
    # Wherever the node-lost test left it (restored off the node it lost): the target keeps it
    # there, where the planned mode's default (params' node) would move it first.
    primary = redis_node_now()
    on = casera("run", "redis-failover", "--env", "local", "-p", "redis.standby=true",
                "-p", f"target={primary}")
    assert on.returncode == 0, on.stdout[-3000:]
    made = step(latest("redis-failover"), "redis standby")
    assert made["changed"] >= 1 and made["ok"], made
    in_sync = checks(made)["standby in sync"]
    assert in_sync[0], in_sync
    standby_on = find_standby(reachable_cluster(local_ctx())).node
    assert standby_on and standby_on != primary

    # Workers off: every acknowledged write stays a pending task, so the ledger is checkable.
    scale_workers(manager(), 0)
    ledger: list[int] = []
    stop = threading.Event()
    writer = threading.Thread(target=_ledger_writes, args=(ledger, stop), daemon=True)
    writer.start()
    try:
        time.sleep(5)
        assert ledger, "no write was acknowledged before the kill"
        nodes.kill_node(primary)
    finally:
        stop.set()
        writer.join(30)
    acknowledged = list(ledger)
    survivor = reachable_cluster(local_ctx()).manager
    deadline = time.monotonic() + 90
    while swarm_node_state(survivor, primary) != "down" and time.monotonic() < deadline:
        time.sleep(2)
    assert swarm_node_state(survivor, primary) == "down"

    done = casera("run", "redis-failover", "--env", "local", "-p", "mode=node-lost",
                  "-p", "redis.standby=true")
    assert done.returncode == 0, done.stdout[-3000:]
    meta = latest("redis-failover")
    assert checks(step(meta, "redis fence"))[f"{primary} off"][0]
    restore = checks(step(meta, "redis restore"))
    assert "warm standby" in restore["recovered from"][1], restore
    assert "restored key count" not in restore, "restored from B2, not promoted"
    assert restore["promoted key count"][0] and restore["api /readyz green"][0], restore
    assert step(meta, "asynq integrity", -1)["ok"]
    with redis_client(local_ctx()) as (client, task):
        assert task.node == standby_on
        queued = _queued_items(client)
    lost = sorted(set(acknowledged) - queued)
    # Re-created elsewhere: Redis' node now is the old standby's, the dead one is fenced.
    again_standby = step(meta, "redis standby")
    assert again_standby["ok"] and again_standby["changed"] >= 1, again_standby
    new_on = find_standby(reachable_cluster(local_ctx())).node
    assert new_on not in (primary, standby_on), new_on
    record_property("measured", f"node-lost with standby ({primary} -> {standby_on}): "
                    f"{len(lost)} of {len(acknowledged)} acknowledged writes lost; lag before "
                    f"the loss: {in_sync[1]}; RPO {restore['RPO'][1]}; RTO {restore['RTO'][1]}")
    # Within the replication lag: asynchronous replication may lose the last writes, but a
    # standby in sync with a lag of about a second holds nearly all of them.
    assert len(lost) <= max(5, len(acknowledged) // 20), lost

    # The node-lost re-run reporting 0 changes is the B2 test's (the same mode and steps).

    # Leave the cloud as the bootstrap made it (as the B2 test does): the bootstrap powers the
    # fenced node on, told where Redis is now, and removes the standby (params: off); then a
    # planned move with no target puts Redis back on the params node, the module's one move
    # home.
    scale_workers(reachable_cluster(local_ctx()).manager, PARAMS.services.worker.replicas)
    bootstrap_then_move_home(standby_on)
    assert checks(step(latest("bootstrap"), "redis standby"))["no standby"][0]
    record_property("measured", f"test_node_lost_promotes_the_warm_standby wall time "
                    f"{time.monotonic() - started:.0f} s")
