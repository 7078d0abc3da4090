"""Benchmark, not a test: what each built disaster-recovery scenario costs on the bootstrapped
local cloud (issue 12), measured against a ledger of writes made before the disaster.

    python scripts/bench_dr.py                          # every built scenario
    python scripts/bench_dr.py --scenarios quorum-lost  # one

- ``database-pitr``: 20 ledger rows, T, 10 more rows and a dropped table; the runbook restores
  to T. RPO: ledger rows up to T missing afterwards (goal 0), rows after T still there (0).
- ``total-loss``: the worker stopped, 10 items (their jobs queued), 20 keys, a snapshot, 3
  uploads; all three nodes killed; the runbook rebuilds. RPO: items, queued jobs, uploads
  (downloaded through signed URLs, byte-compared) and snapshot keys lost (goal 0); RTO goal
  <= 1.5 x a first bootstrap (scripts/bench_bootstrap.py).
- ``quorum-lost``: 10 items through the api (a row and a job each) and 20 marker keys in
  Redis; two nodes killed (never Redis's); the runbook recovers. RPO: items not readable
  through the LB or never processed, marker keys missing (goal 0). A steady probe (writes
  and reads through the LB's loopback address, 5 a second) counts what users saw.

For each: the RTO the runbook reports (its start to the recovered state with /readyz green
through the LB), the RPO, the run's wall time and its time per phase (the steps' durations
in the kept notebook). The cloud is left as it was found: three converged nodes, the ledger
tables and keys removed.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
import requests

from casera.context import RunContext
from casera.db_roles import credential_for
from casera.operator_secrets import SecretStore
from casera.params import load_params
from casera.paths import outputs_dir
from casera.progress import wait_for
from casera.steady_probe import SteadyProbe, summary
from casera.steps.api_endpoint import ApiEndpoint, api_endpoint_for
from casera.steps.load_balancer import public_address
from casera.steps.redis_checks import redis_client

# Phases of each scenario: the steps (by name, as journaled) whose durations add up to it.
PHASES: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "database-pitr": [("check", ("dr scenario", "neon restore window")),
                      ("inspect", ("inspect restore point",)),
                      ("restore", ("neon restore in place",)),
                      ("verify", ("database after restore",))],
    "quorum-lost": [("detect", ("dr scenario", "quorum")), ("fence", ("fence",)),
                    ("new cluster", ("force new cluster",)),
                    ("redis", ("redis after quorum loss", "redis restore")),
                    ("replace servers", ("servers: delete", "servers", "firewall", "ssh",
                                         "ssh hardening", "neon ip allowlist")),
                    ("join", ("swarm", "swarm health", "node labels", "overlay network",
                              "docker secrets")),
                    ("stack and LB", ("stack", "load balancer targets")),
                    ("verify", ("swarm recovered",))],
    "total-loss": [("detect", ("dr scenario", "quorum")), ("fence", ("fence",)),
                   ("replace servers", ("servers: delete", "servers", "firewall", "ssh",
                                        "ssh hardening", "neon ip allowlist")),
                   ("new swarm", ("swarm", "swarm health", "node labels", "overlay network",
                                  "docker secrets")),
                   ("redis from B2", ("redis restore",)),
                   ("stack and LB", ("stack", "load balancer targets")),
                   ("verify", ("swarm recovered",))],
}


def ctx() -> RunContext:
    secrets = SecretStore("local")
    return RunContext(env="local", params=load_params("local", secrets=secrets),
                      secrets=secrets, interactive=False, run_id="bench-dr", operator="bench")


def api() -> ApiEndpoint:
    address = public_address(ctx())
    if address is None:
        raise SystemExit("no local load balancer: run `casera run bootstrap --env local` first")
    return api_endpoint_for(ctx().params, address)


def db() -> psycopg.Connection:
    n = ctx().params.neon
    cred = credential_for("local", n.role, SecretStore("local"))  # after a rotation: the other role
    return psycopg.connect(host=n.hostaddr, port=n.direct_port, dbname=n.database, user=cred.role,
                           password=cred.password.reveal(),
                           sslmode="require", connect_timeout=10, autocommit=True)


def run_dr(*params: str) -> tuple[int, float, dict[str, Any]]:
    kept = outputs_dir("local") / "dr-restore"
    before = set(kept.glob("*.ipynb"))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "casera.runner.cli", "run", "dr-restore",
                           "--env", "local", "--approve", *[f for p in params
                                                            for f in ("-p", p)]],
                          capture_output=True, text=True)
    took = time.monotonic() - started
    made = sorted(set(kept.glob("*.ipynb")) - before)
    if not made:  # refused before it kept a notebook (a locked env, bad params)
        raise SystemExit(f"dr-restore {' '.join(params)} kept no notebook (exit "
                         f"{done.returncode}):\n{(done.stdout + done.stderr)[-2000:]}")
    path = made[-1]
    return done.returncode, took, json.loads(path.read_text())["metadata"]["casera"]


def phases(scenario: str, meta: dict[str, Any]) -> dict[str, float]:
    return {phase: sum(s["duration_s"] for s in meta["steps"] if s["step"] in names)
            for phase, names in PHASES[scenario]}


def rto(meta: dict[str, Any], step: str) -> str:
    for s in meta["steps"]:
        for c in s["checks"] if s["step"] == step else []:
            if c["name"] == "RTO":
                return c["detail"].split(" from ")[0]
    return "?"


def pitr() -> dict[str, Any]:
    with db() as conn:
        conn.execute("DROP TABLE IF EXISTS bench_dr_ledger, bench_dr_scratch")
        conn.execute("CREATE TABLE bench_dr_ledger (n int PRIMARY KEY)")
        conn.execute("CREATE TABLE bench_dr_scratch AS SELECT generate_series(1, 3) AS n")
        conn.execute("INSERT INTO bench_dr_ledger SELECT generate_series(1, 20)")
        time.sleep(0.5)
        t = datetime.now(UTC)
        time.sleep(0.5)
        conn.execute("INSERT INTO bench_dr_ledger SELECT generate_series(21, 30)")
        conn.execute("DROP TABLE bench_dr_scratch")
    code, took, meta = run_dr("scenario=database-pitr", f"restore_to={t.isoformat()}")
    with db() as conn:
        rows = {r[0] for r in conn.execute("SELECT n FROM bench_dr_ledger")}
        scratch = conn.execute("SELECT to_regclass('bench_dr_scratch')::text").fetchone()[0]
        conn.execute("DROP TABLE IF EXISTS bench_dr_ledger, bench_dr_scratch")
    lost = len(set(range(1, 21)) - rows) + (0 if scratch else 3)
    return {"code": code, "wall": took, "rto": rto(meta, "database after restore"),
            "rpo": f"{lost} of 23 rows before T lost, {len(rows - set(range(1, 21)))} after "
                   "T remain", "phases": phases("database-pitr", meta), "extra": ""}


def processed(ids: list[int]) -> Callable[[], bool | None]:
    def probe() -> bool | None:
        with db() as conn:
            rows = dict(conn.execute("SELECT id, process_count FROM items WHERE id = ANY(%s)",
                                     (ids,)).fetchall())
        return True if len(rows) == len(ids) and all(rows.values()) else None
    return probe


def items_after(session: Any, endpoint: ApiEndpoint, ids: list[int],
                timeout: float) -> tuple[int, bool]:
    """(ledger items readable through the LB, whether every one's job was processed)."""
    readable = sum(session.get(endpoint.url(f"/items/{i}"), timeout=10).status_code == 200
                   for i in ids)
    try:
        return readable, bool(wait_for("the ledger's jobs processed", processed(ids), timeout))
    except Exception:  # noqa: BLE001 - reported as jobs lost
        return readable, False


def failure_timeline(probe: SteadyProbe, since: float, meta: dict[str, Any]) -> str:
    """When the probe's failures came, in 10 s windows from ``since`` (the first kill), beside
    where the run was by then (its steps' durations added up from the kill: the kernel's start
    is not in them, so a step is placed a few seconds early), and what they said."""
    failed = [r for r in probe.rows if not r.ok and r.start >= since]
    if not failed:
        return "no failure"
    windows: dict[int, int] = {}
    for r in failed:
        window = int((r.start - since) // 10) * 10
        windows[window] = windows.get(window, 0) + 1
    counts = ", ".join(f"{w}-{w + 10} s: {n}" for w, n in sorted(windows.items()))
    ends, at = [], 0.0
    for step in meta["steps"]:
        at += step["duration_s"]
        ends.append(f"{step['step']} ends {at:.0f} s")
    details = sorted({r.detail[:80] for r in failed})[:4]
    return (f"failures from the kill: {counts}; what they said: {details}; "
            f"the run's steps: {'; '.join(ends)}")


def quorum_lost() -> dict[str, Any]:
    endpoint = api()
    session = endpoint.requests_session()
    ids = [int(session.post(endpoint.url("/items"), json={"name": f"bench-dr-{n}"},
                            timeout=10).json()["id"]) for n in range(10)]
    with redis_client(ctx()) as (client, task):
        for n in range(20):
            client.set(f"bench:dr:{n}", str(n))
    dead = [n for n in ctx().params.server_names() if n != task.node]
    with SteadyProbe(endpoint, rate=5.0, max_s=900) as probe:
        killed_at = time.time()
        for name in dead:
            subprocess.run([sys.executable, "-m", "casera.runner.cli", "local", "kill-node",
                            name], check=True, capture_output=True)
        code, took, meta = run_dr("scenario=quorum-lost")
    readable, done = items_after(session, endpoint, ids, 120)
    with redis_client(ctx()) as (client, _):
        keys = sum(client.get(f"bench:dr:{n}") == str(n) for n in range(20))
        client.delete(*[f"bench:dr:{n}" for n in range(20)])
    return {"code": code, "wall": took, "rto": rto(meta, "swarm recovered"),
            "rpo": f"{10 - readable} of 10 items, {0 if done else 'some'} jobs, {20 - keys} of "
                   "20 keys lost", "phases": phases("quorum-lost", meta),
            "extra": summary("probe through the LB during the run", probe.figures())
            + "; " + failure_timeline(probe, killed_at, meta)}


def total_loss() -> dict[str, Any]:
    from casera.steps import redis_backup, storage
    from casera.steps.redis_checks import reachable_cluster, running_task
    from casera.steps.stack import stack_services

    c = ctx()
    endpoint = api()
    session = endpoint.requests_session()
    # Jobs queued and not run at the loss: the worker stopped first.
    swarm = reachable_cluster(c).manager
    swarm.services.get(stack_services(swarm)["worker"]["id"]).scale(0)
    wait_for("the worker stopped", lambda: running_task(c, "worker") is None, 60)
    ids = [int(session.post(endpoint.url("/items"), json={"name": f"bench-total-{n}"},
                            timeout=10).json()["id"]) for n in range(10)]
    with redis_client(c) as (client, _):
        for n in range(20):
            client.set(f"bench:total:{n}", str(n))
    redis_backup.take_snapshot(c)
    b2api = storage.master_api(c)
    bucket = b2api.get_bucket_by_name(c.params.b2.buckets["uploads"].name)
    files = {f"bench-dr/{n}.bin": bytes(range(256)) * (n + 1) for n in range(3)}
    for name, data in files.items():
        bucket.upload_bytes(data, name)
    for name in c.params.server_names():
        subprocess.run([sys.executable, "-m", "casera.runner.cli", "local", "kill-node", name],
                       check=True, capture_output=True)
    code, took, meta = run_dr("scenario=total-loss")
    session = api().requests_session()
    readable, done = items_after(session, endpoint, ids, 180)
    url = b2api.account_info.get_download_url()
    equal = sum(requests.get(f"{url}/file/{bucket.name}/{name}", timeout=30, params={
        "Authorization": bucket.get_download_authorization(name, 600)}).content == data
        for name, data in files.items())
    for name in files:
        bucket.hide_file(name)
    with redis_client(c) as (client, _):
        keys = sum(client.get(f"bench:total:{n}") == str(n) for n in range(20))
        client.delete(*[f"bench:total:{n}" for n in range(20)])
    return {"code": code, "wall": took, "rto": rto(meta, "swarm recovered"),
            "rpo": f"{10 - readable} of 10 items, {0 if done else 'some'} of 10 queued jobs, "
                   f"{3 - equal} of 3 uploads, {20 - keys} of 20 snapshot keys lost",
            "phases": phases("total-loss", meta), "extra": ""}


def uploads() -> dict[str, Any]:
    from casera.steps import storage

    c = ctx()
    b2api = storage.master_api(c)
    bucket = b2api.get_bucket_by_name(c.params.b2.buckets["uploads"].name)
    good, bad = bytes(range(256)) * 40, b"overwritten by mistake" * 10
    first = bucket.upload_bytes(good, "bench-dr/deleted.bin")
    bucket.hide_file("bench-dr/deleted.bin")
    kept = bucket.upload_bytes(good, "bench-dr/overwritten.bin")
    bucket.upload_bytes(bad, "bench-dr/overwritten.bin")
    code1, took1, meta1 = run_dr("scenario=uploads", "file_name=bench-dr/deleted.bin")
    code2, took2, meta2 = run_dr("scenario=uploads", "file_name=bench-dr/overwritten.bin",
                                 f"version_id={kept.id_}")

    def now(name: str) -> bytes:
        out = io.BytesIO()
        bucket.download_file_by_name(name).save(out)
        return out.getvalue()

    equal = (now("bench-dr/deleted.bin") == good) + (now("bench-dr/overwritten.bin") == good)
    for name in ("bench-dr/deleted.bin", "bench-dr/overwritten.bin"):
        bucket.hide_file(name)
    steps = {s["step"]: s["duration_s"] for m in (meta1, meta2) for s in m["steps"]
             if s["step"] in ("restore deleted upload", "restore previous version")}
    return {"code": code1 or code2, "wall": took1 + took2, "rto": f"{took1 + took2:.0f} s",
            "rpo": f"{2 - equal} of 2 files not byte-equal (un-hidden {first.id_[-8:]}, "
                   "copied back)", "phases": steps, "extra": ""}


def backup_drill() -> dict[str, Any]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "casera.runner.cli", "run", "backup-drill",
                           "--env", "local", "-p", "dump_now=true"],
                          capture_output=True, text=True)
    took = time.monotonic() - started
    path = sorted((outputs_dir("local") / "backup-drill").glob("*.ipynb"))[-1]
    meta = json.loads(path.read_text())["metadata"]["casera"]
    durations = {s["step"]: s["duration_s"] for s in meta["steps"]}
    ages = "; ".join(f"{s['step']}: {c['detail'].split(' (limit')[0]}"
                     for s in meta["steps"] for c in s["checks"] if c["name"] == "age")
    rows = next((c["detail"] for s in meta["steps"] for c in s["checks"]
                 if c["name"] == "row counts"), "?")
    return {"code": done.returncode, "wall": took, "rto": "-",
            "rpo": f"rows: {rows}; {ages}",
            "phases": {"dump now": durations.get("pg_dump now", 0.0),
                       "pg restore": durations.get("pg_dump restore drill", 0.0),
                       "redis restore": durations.get("redis snapshot restore drill", 0.0)},
            "extra": ""}


SCENARIOS: dict[str, Callable[[], dict[str, Any]]] = {"database-pitr": pitr,
                                                      "quorum-lost": quorum_lost,
                                                      "total-loss": total_loss,
                                                      "uploads": uploads,
                                                      "backup-drill": backup_drill}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS),
                        choices=list(SCENARIOS))
    args = parser.parse_args()
    rc = 0
    print(f"{'scenario':<15} {'exit':>4} {'RTO':>7} {'wall':>7}  RPO / phases")
    for name in args.scenarios:
        found = SCENARIOS[name]()
        rc = rc or found["code"]
        print(f"{name:<15} {found['code']:>4} {found['rto']:>7} {found['wall']:>6.0f}s  "
              f"{found['rpo']}")
        print(" " * 36 + "; ".join(f"{p} {s:.0f} s" for p, s in found["phases"].items()))
        if found["extra"]:
            print(" " * 36 + found["extra"])
    return rc


if __name__ == "__main__":
    sys.exit(main())
