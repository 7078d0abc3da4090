"""Benchmark, not a test: the local saturation point and the digest drain rate, measured by
the load-test runbook itself (`casera run load-test --env local`) on the bootstrapped local
cloud, with a longer ramp and a larger burst than params/local.yaml's CI-sized profiles.
Every request goes to the LB's loopback address, bounded in users, rate and time.

    python scripts/bench_load.py                     # ramp to 40 users, 10000 digest jobs
    python scripts/bench_load.py --max-users 60 --jobs 20000

Prints the figures the run kept (its notebook's metadata). Local figures measure the method,
not Hetzner's hardware: the nodes share this machine's cores with locust.
Thresholds are loosened so that the ramp runs to its top level (the saturation point is
still the first level whose p95 or errors cross params/local.yaml's thresholds).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from casera.paths import outputs_dir


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-users", type=int, default=40)
    ap.add_argument("--step-users", type=int, default=6)
    ap.add_argument("--step-s", type=int, default=6)
    ap.add_argument("--jobs", type=int, default=10_000)
    args = ap.parse_args()
    settings = {"load_test.ramp.max_users": args.max_users,
                "load_test.ramp.step_users": args.step_users,
                "load_test.ramp.step_s": args.step_s,
                "load_test.digest_burst.jobs": args.jobs,
                "load_test.digest_burst.batch": 5000,
                "load_test.digest_burst.drain_timeout_s": 600,
                # report, don't judge: the bench wants every figure, not a red run
                "load_test.thresholds.min_saturation_rps": 0,
                "load_test.thresholds.min_drain_jobs_per_s": 0}
    command = [sys.executable, "-m", "casera.runner.cli", "run", "load-test", "--env", "local"]
    for key, value in settings.items():
        command += ["-p", f"{key}={value}"]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - started
    path = sorted((outputs_dir("local") / "load-test").glob("*.ipynb"))[-1]
    meta = json.loads(Path(path).read_text())["metadata"]["casera"]
    print(f"load-test run: exit {done.returncode}, {wall:.0f} s, kept as {path}")
    for step in meta["steps"]:
        if step["step"] in ("steady profile", "ramp", "digest burst", "capacity advice"):
            print(f"\n{step['step']} {step['target']}:")
            for check in step["checks"]:
                print(f"  {check['name']}: {check['detail']}")
    print("\nLocal figures measure the method, not Hetzner's hardware.")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
