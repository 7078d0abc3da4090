"""Benchmark, not a test: what each Redis failover mode costs under a steady enqueue load, on
the bootstrapped local cloud (it leaves Redis where params put it, three nodes running).

For each mode a load thread POSTs ``/items`` to the load balancer's loopback address at a fixed
rate (bounded in rate and time), then the runbook runs; afterwards the jobs are counted in
Postgres (``items.process_count``, kept by the stand-in worker) and the keys in Redis:

    python scripts/bench_redis.py                  # planned, node-lost from B2, with standby
    python scripts/bench_redis.py --modes planned  # only the planned move

Goals (issue 11): planned 0 keys and 0 jobs lost, RTO <= 30 s; node-lost from B2 RPO <= the
backup interval, RTO <= 60 s; node-lost with the warm standby (``-p redis.standby=true``, the
standby made first by the failover runbook) RPO <= 1 s, RTO <= 30 s.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
import requests

from casera.context import RunContext
from casera.db_roles import credential_for
from casera.operator_secrets import SecretStore
from casera.params import load_params
from casera.paths import outputs_dir
from casera.providers import docker_swarm
from casera.steps.api_endpoint import ApiEndpoint, api_endpoint_for
from casera.steps.load_balancer import public_address
from casera.steps.redis_checks import reachable_cluster, redis_client
from casera_localcloud import nodes

RATE_PER_S = 5.0  # bounded load: loopback only, a few requests a second



@functools.cache
def api() -> ApiEndpoint:
    """The api through the local load balancer, as users reach it: HTTPS with the origin
    certificate when the edge is on."""
    address = public_address(ctx())
    if address is None:
        raise SystemExit("no local load balancer: run `casera run bootstrap --env local` first")
    return api_endpoint_for(ctx().params, address)


_SESSION: list[requests.Session] = []


def api_session() -> requests.Session:
    if not _SESSION:
        _SESSION.append(api().requests_session())
    return _SESSION[0]

def ctx() -> RunContext:
    secrets = SecretStore("local")
    return RunContext(env="local", params=load_params("local", secrets=secrets),
                      secrets=secrets, interactive=False, run_id="bench-redis",
                      operator="bench")


def casera(*args: str) -> int:
    return subprocess.run([sys.executable, "-m", "casera.runner.cli", *args],
                          capture_output=True, text=True).returncode


def latest(runbook: str) -> dict[str, Any]:
    path = sorted((outputs_dir("local") / runbook).glob("*.ipynb"))[-1]
    return json.loads(path.read_text())["metadata"]["casera"]


def step_checks(meta: dict[str, Any], name: str) -> dict[str, str]:
    found = [s for s in meta["steps"] if s["step"] == name]
    return {c["name"]: c["detail"] for c in (found[-1]["checks"] if found else [])}


@dataclass
class Load:
    """POST /items at RATE_PER_S until stopped; the ids of the items the api accepted."""

    ids: list[int] = field(default_factory=list)
    failed: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                answer = api_session().post(api().url("/items"), json={"name": "bench"}, timeout=10)
                if answer.status_code == 201:
                    self.ids.append(int(answer.json()["id"]))
                else:
                    self.failed += 1
            except requests.RequestException:
                self.failed += 1
            self.stop.wait(max(0.0, 1 / RATE_PER_S - (time.monotonic() - started)))


def counts(ids: list[int]) -> dict[int, int]:
    n = load_params("local").neon
    cred = credential_for("local", n.role, SecretStore("local"))  # after a rotation: the other role
    with psycopg.connect(host=n.hostaddr, port=n.direct_port, dbname=n.database, user=cred.role,
                         password=cred.password.reveal(), sslmode="require",
                         connect_timeout=10) as conn:
        rows = conn.execute("SELECT id, process_count FROM items WHERE id = ANY(%s)",
                            (ids,)).fetchall()
    return {int(i): int(c) for i, c in rows}


def settle(ids: list[int], timeout: float = 120) -> dict[int, int]:
    deadline = time.monotonic() + timeout
    found = counts(ids)
    while time.monotonic() < deadline and not all(found.get(i, 0) for i in ids):
        time.sleep(2)
        found = counts(ids)
    time.sleep(35)  # a lease (30 s) for any duplicate to show
    return counts(ids)


def dbsize() -> int:
    with redis_client(ctx()) as (client, _):
        return int(client.dbsize())


def under_load(action: Any) -> tuple[Load, Any]:
    load = Load()
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    time.sleep(5)
    try:
        outcome = action()
    finally:
        time.sleep(5)
        load.stop.set()
        thread.join(15)
    return load, outcome


def planned() -> dict[str, Any]:
    p = load_params("local")
    home, other = p.server_names()[p.swarm.redis_node - 1], p.server_names()[1]
    before = dbsize()
    load, code = under_load(lambda: casera("run", "redis-failover", "--env", "local",
                                           "-p", f"target={other}"))
    move = step_checks(latest("redis-failover"), "redis move")
    after = dbsize()
    jobs = settle(load.ids)
    casera("run", "redis-failover", "--env", "local")  # back to params' node
    return {"mode": f"planned {home} -> {other}", "ok": code == 0, "keys": (before, after),
            "load": load, "jobs": jobs, "pause": move.get(
                "writes paused less than the pause limit", "?"),
            "rto": move.get("redis unreachable", "?"), "rpo": "0 (no lost write)"}


def node_lost(standby: bool = False) -> dict[str, Any]:
    p = load_params("local")
    home = p.server_names()[p.swarm.redis_node - 1]
    extra = ["-p", "redis.standby=true"] if standby else []
    if standby:
        made = casera("run", "redis-failover", "--env", "local", *extra)
        if made != 0:
            raise SystemExit("the failover runbook could not make the standby: see "
                             "outputs/local/redis-failover/")

    detection: list[float] = []

    def lose() -> int:
        nodes.kill_node(home)
        killed = time.monotonic()
        # The runbook refuses while the Swarm still sees the node (as it must): wait for that.
        while time.monotonic() - killed < 120:
            entries = {e["hostname"]: e for e in docker_swarm.nodes(reachable_cluster(ctx())
                                                                   .manager)}
            if entries[home]["state"] == "down":
                break
            time.sleep(1)
        detection.append(time.monotonic() - killed)
        return casera("run", "redis-failover", "--env", "local", "-p", "mode=node-lost",
                      *extra)

    before = dbsize()
    load, code = under_load(lose)
    restore = step_checks(latest("redis-failover"), "redis restore")
    after = dbsize()
    jobs = settle(load.ids)
    with redis_client(ctx()) as (_, task):
        now_on = task.node
    # The bootstrap (params: no standby) also removes the standby made after the promotion.
    casera("run", "bootstrap", "--env", "local", "--approve",
           "-p", f"swarm.redis_node={p.server_names().index(now_on) + 1}")
    casera("run", "redis-failover", "--env", "local")  # back to params' node
    alive = {e["state"] for e in reachable_cluster(ctx()).states.values()}
    mode = "node-lost with standby" if standby else "node-lost from B2"
    return {"mode": f"{mode} ({home} killed; {restore.get('recovered from', '?')})",
            "ok": code == 0,
            "keys": (before, after), "load": load, "jobs": jobs, "pause": "-",
            "rto": f"{restore.get('RTO', '?')} (+ {detection[0]:.0f} s until the Swarm saw "
                   "the node down)" if detection else restore.get("RTO", "?"),
            "rpo": restore.get("RPO", "?"),
            "nodes after": alive}


def report(row: dict[str, Any]) -> None:
    before, after = row["keys"]
    jobs, load = row["jobs"], row["load"]
    processed = sum(1 for c in jobs.values() if c >= 1)
    print(f"\n{row['mode']}: runbook {'succeeded' if row['ok'] else 'FAILED'}")
    print(f"  keys before {before}, after {after}, lost {max(0, before - after)} "
          "(the load adds keys meanwhile: after counts them too)")
    print(f"  jobs enqueued {len(load.ids)}, processed {processed}, duplicates "
          f"{sum(1 for c in jobs.values() if c > 1)}, lost {len(load.ids) - processed}")
    print(f"  write pause {row['pause']}; RTO {row['rto']}; RPO {row['rpo']}")
    print(f"  failed api requests {load.failed}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--modes", default="planned,node-lost,node-lost-standby")
    args = parser.parse_args()
    runs = {"planned": planned, "node-lost": node_lost,
            "node-lost-standby": functools.partial(node_lost, standby=True)}
    for mode in args.modes.split(","):
        report(runs[mode]())
    return 0


if __name__ == "__main__":
    sys.exit(main())
