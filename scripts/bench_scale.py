"""Benchmark, not a test: what scaling and a node dying cost the requests through the load
balancer, on the bootstrapped local cloud.

    python scripts/bench_scale.py --kill-only        # kill a node under a steady probe
    python scripts/bench_scale.py --out              # 3 -> 5 (scale-out runbook, target=5)
    python scripts/bench_scale.py --in               # 5 -> 3 (scale-in runbook, count=2)
    python scripts/bench_scale.py --out --in         # both, one after the other

For 3 -> 5 and 5 -> 3 it prints requests, failures and p99 of the probe during the run, the
run's wall time split into servers / join / rebalance (scale-out) or drain / leave / servers
(scale-in), from the steps' durations in the kept notebook, and the api/worker task
distribution per node before and after.

A probe thread sends a bounded, steady load (``--rate`` requests a second, alternately a
write, ``POST /items``, and a read of what it wrote, ``GET /items/<id>``) to the load balancer's
loopback address only. ``casera local kill-node`` then kills a node that does not hold
Redis; the probe runs on for ``--watch`` seconds, then ``casera run bootstrap`` converges the
cluster (the SSH step judges the node dead by the Swarm's view and resets it) while the
probe still runs. Printed: requests, failures and p99 for the kill window and the recovery,
when the last failure came (goal: <= 1 % failed, none after the LB's health-check window,
``Params.lb_unhealthy_after_s``), and the re-run's wall time (goal <= 60 s).

"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from casera.load_stats import figures
from casera.operator_secrets import SecretStore
from casera.params import Params, load_params
from casera.paths import outputs_dir
from casera.steady_probe import MAX_RATE_PER_S, Row, SteadyProbe
from casera.steps.api_endpoint import ApiEndpoint, api_endpoint_for


@functools.cache
def params() -> Params:
    return load_params("local", secrets=SecretStore("local"))


@functools.cache
def api() -> ApiEndpoint:
    """The api through the local load balancer (HTTPS with the origin certificate when the
    edge is on), at its loopback address."""
    from casera.context import RunContext
    from casera.steps.load_balancer import public_address

    secrets = SecretStore("local")
    ctx = RunContext(env="local", params=params(), secrets=secrets, interactive=False,
                     run_id="bench-scale", operator="bench")
    address = public_address(ctx)
    if address is None or not address.startswith("127."):
        raise SystemExit(f"no local load balancer on loopback (found {address!r}): run "
                         "`casera run bootstrap --env local` first")
    return api_endpoint_for(params(), address)


def casera(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "casera.runner.cli", *args],
                          capture_output=True, text=True)


def victim() -> str:
    """The last node that does not hold Redis (params place it): losing Redis is the Redis
    failover's benchmark (scripts/bench_redis.py), not this one."""
    names = params().server_names()
    free = [n for n in names if n != names[params().swarm.redis_node - 1]]
    return free[-1]


def summary(label: str, rows: list[Row]) -> str:
    if not rows:
        return f"{label}: no requests"
    f = figures(rows)  # type: ignore[arg-type]
    return (f"{label}: {f.requests} requests, {f.errors} failed ({f.error_ratio:.2%}), "
            f"p99 {f.p99_ms:.0f} ms")


def kill_only(rate: float, watch: float) -> int:
    window = params().lb_unhealthy_after_s()
    node = victim()
    probe = SteadyProbe(api(), rate)
    thread = threading.Thread(target=probe.run, daemon=True)
    thread.start()
    time.sleep(5)
    killed_at = time.time()
    print(f"killing {node} under {rate:g} req/s through {api().url('/')}; the LB's "
          f"health-check window is {window} s", flush=True)
    done = casera("local", "kill-node", node)
    if done.returncode != 0:
        probe.stop.set()
        raise SystemExit(f"casera local kill-node {node} failed: {done.stderr.strip()}")
    time.sleep(watch)
    rerun_at = time.time()
    started = time.monotonic()
    rerun = casera("run", "bootstrap", "--env", "local")
    rerun_s = time.monotonic() - started
    time.sleep(5)
    probe.stop.set()
    thread.join(15)
    before = [r for r in probe.rows if r.start < killed_at]
    down = [r for r in probe.rows if killed_at <= r.start < rerun_at]
    back = [r for r in probe.rows if r.start >= rerun_at]
    failed_after_kill = [r for r in down + back if not r.ok]
    print(summary("before the kill", before))
    print(summary(f"node down ({watch:.0f} s)", down))
    print(summary("during the bootstrap re-run", back))
    print(summary("whole run", probe.rows))
    if failed_after_kill:
        last = max(r.start for r in failed_after_kill) - killed_at
        print(f"last failed request {last:.1f} s after the kill (LB window {window} s): "
              + ", ".join(sorted({r.what for r in failed_after_kill})))
    else:
        print("no request failed after the kill")
    print(f"bootstrap re-run: exit {rerun.returncode} in {rerun_s:.0f} s (goal <= 60 s)")
    if rerun.returncode != 0:
        print(rerun.stderr[-2000:], file=sys.stderr)
    return 0 if rerun.returncode == 0 else 1


# Which steps of each runbook make up each part of the wall time (the steps' own names).
PARTS = {
    "scale-out": {"servers": ("servers", "firewall", "ssh", "ssh hardening", "neon ip allowlist"),
                  "join": ("swarm", "swarm health", "node labels", "overlay traffic"),
                  "rebalance": ("rebalance", "load balancer targets", "scale verified")},
    "scale-in": {"drain": ("drain", "load balancer: leaving targets"),
                 "leave": ("swarm: remove nodes",),
                 "servers": ("servers: delete", "firewall", "neon ip allowlist",
                             "load balancer targets", "scale verified")},
}


def distribution() -> str:
    from casera.context import RunContext
    from casera.steps import scale
    from casera.steps.redis_checks import reachable_cluster

    ctx = RunContext(env="local", params=params(), secrets=SecretStore("local"),
                     interactive=False, run_id="bench-scale", operator="bench")
    count = len(scale.current_servers(ctx))
    spread = scale.distribution(reachable_cluster(scale.with_count(ctx, count)).manager)
    return "; ".join(f"{node}: " + (", ".join(f"{svc} x{n}" for svc, n in sorted(t.items())
                                              if svc in scale.STATELESS) or "-")
                     for node, t in sorted(spread.items()))


def kept_steps(runbook: str) -> list[dict[str, Any]]:
    path: Path = sorted((outputs_dir("local") / runbook).glob("*.ipynb"))[-1]
    return list(json.loads(path.read_text())["metadata"]["casera"]["steps"])


def scale_mode(runbook: str, args: list[str], rate: float) -> int:
    before = distribution()
    probe = SteadyProbe(api(), rate)
    with probe:
        time.sleep(2)
        started, t0 = time.time(), time.monotonic()
        done = casera("run", runbook, "--env", "local", *args, "--approve")
        wall = time.monotonic() - t0
        ended = time.time()
        time.sleep(2)
    rows = [r for r in probe.rows if started <= r.start <= ended]
    print(f"{runbook} {' '.join(args)}: exit {done.returncode}, wall {wall:.0f} s")
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-2000:], file=sys.stderr)
        return 1
    durations: dict[str, float] = {}
    for step in kept_steps(runbook):
        for part, names in PARTS[runbook].items():
            if step["step"] in names:
                durations[part] = durations.get(part, 0.0) + float(step.get("duration_s", 0))
    print("  split: " + ", ".join(f"{k} {v:.0f} s" for k, v in durations.items())
          + f", other {wall - sum(durations.values()):.0f} s (start, preflight, papermill)")
    print("  " + summary("probe during the run", rows))
    failed = [r for r in rows if not r.ok]
    if failed:
        print("  failed: " + ", ".join(sorted({r.what for r in failed})))
    print(f"  before: {before}")
    print(f"  after:  {distribution()}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kill-only", action="store_true",
                        help="kill one node under a steady probe, then converge it back")
    parser.add_argument("--out", action="store_true", help="3 -> 5 with the scale-out runbook")
    parser.add_argument("--in", dest="in_", action="store_true",
                        help="5 -> 3 with the scale-in runbook (count=2)")
    parser.add_argument("--rate", type=float, default=5.0,
                        help=f"probe requests a second (at most {MAX_RATE_PER_S:g})")
    parser.add_argument("--watch", type=float, default=40.0,
                        help="--kill-only: seconds to probe with the node down")
    args = parser.parse_args()
    if not 0 < args.rate <= MAX_RATE_PER_S:
        parser.error(f"--rate must be in (0, {MAX_RATE_PER_S:g}]")
    if not 0 <= args.watch <= 600:
        parser.error("--watch must be 0..600 seconds")
    if args.kill_only == (args.out or args.in_):
        parser.error("choose --kill-only, or --out and/or --in")
    if args.kill_only:
        return kill_only(args.rate, args.watch)
    rc = scale_mode("scale-out", ["-p", "target=5"], args.rate) if args.out else 0
    if args.in_ and rc == 0:
        rc = scale_mode("scale-in", ["-p", "count=2"], args.rate)
    return rc


if __name__ == "__main__":
    sys.exit(main())
