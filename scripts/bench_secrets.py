"""Benchmark, not a test: what the secret migration and the secret rotation cost the requests
through the load balancer, on the bootstrapped local cloud.

    python scripts/bench_secrets.py [--rate 4]

A steady probe (casera.steady_probe.SteadyProbe with ``b2=True``: in turn ``POST /items``, a
row inserted and an Asynq job enqueued, ``GET /items/<id>`` of that row, ``PUT
/uploads/<name>`` through the api's own B2 key and ``GET`` of it byte-compared; at most
``--rate`` requests a second, to the load balancer's loopback address only) runs while ``casera
run secret-migration -p mode=rollback`` makes the before-state (values in env vars) and
``casera run secret-migration`` migrates again; then ``casera run rotate-secrets`` rotates all
four classes: the DB password (the other login role, its password from Neon), SECRET_KEY, the
B2 keys and the APNs key (new SECRET_KEY and APNs values are put in secrets/local.env first, as
the operator would), with the token probe (mint and verify through the LB, and verify a token
signed before the rotation) beside the steady probe. Printed for each: requests, failures, p99
latency and wall time. The cloud is left migrated and rotated (the normal state).
"""

from __future__ import annotations

import argparse
import secrets
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))

from e2e_harness import hcloud  # noqa: E402
from test_secret_rotation import TokenProbe, mint_before  # noqa: E402

from casera.load_stats import figures  # noqa: E402
from casera.operator_secrets import (
    SPECS_BY_NAME,  # noqa: E402
    SecretStore,  # noqa: E402
)
from casera.params import load_params  # noqa: E402
from casera.steady_probe import Row, SteadyProbe  # noqa: E402
from casera.steps.api_endpoint import api_endpoint_for  # noqa: E402
from casera_localcloud.local_credentials import write_local_secret  # noqa: E402

MAX_RATE_PER_S = 20.0  # bounded: loopback only, never a load test


def phase(probe: SteadyProbe, label: str, *args: str, runbook: str = "secret-migration",
          tokens: SteadyProbe | None = None) -> str:
    began, t0 = time.time(), time.monotonic()
    done = subprocess.run([sys.executable, "-m", "casera.runner.cli", "run",
                           runbook, "--env", "local", *args],
                          capture_output=True, text=True)
    wall = time.monotonic() - t0
    if done.returncode != 0:
        raise SystemExit(f"{label} failed (exit {done.returncode}): {done.stderr[-1500:]}")
    rows: list[Row] = [r for r in probe.rows if r.start >= began]
    f = figures(rows)  # type: ignore[arg-type]
    failed = [r for r in rows if not r.ok]
    line = (f"{label}: {f.requests} requests, {len(failed)} failed, p99 {f.p99_ms:.0f} ms "
            f"(reads and writes through the LB during the rolls), wall time {wall:.0f} s"
            + (f"; first failures: {[(r.what, r.detail) for r in failed[:3]]}" if failed else ""))
    if tokens is not None:
        rows = [r for r in tokens.rows if r.start >= began]
        t, bad = figures(rows), [r for r in rows if not r.ok]  # type: ignore[arg-type]
        line += (f"; tokens: {t.requests} mints and verifies, {len(bad)} failed, p99 "
                 f"{t.p99_ms:.0f} ms" + (f" {[(r.what, r.detail) for r in bad[:3]]}" if bad
                                          else ""))
    return line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=4.0,
                        help=f"probe requests a second (at most {MAX_RATE_PER_S:g})")
    args = parser.parse_args()
    rate = min(args.rate, MAX_RATE_PER_S)
    params = load_params("local", secrets=SecretStore("local"))
    lb = hcloud().load_balancers.get_by_name(params.load_balancer.name)
    api = api_endpoint_for(params, lb.public_net.ipv4.ip)
    tokens = TokenProbe(api, rate=rate, max_s=3600)
    with SteadyProbe(api, rate=rate, max_s=3600, b2=True) as probe:
        print(phase(probe, "rollback to env vars (one roll)", "-p", "mode=rollback"), flush=True)
        print(phase(probe, "migration (roll 1, roll 2, clean-up)"), flush=True)
        # The operator's new SECRET_KEY and APNs key; the rotation makes new B2 keys itself.
        for name in ("secret_key", "apns_key"):
            write_local_secret(SPECS_BY_NAME[name].env_var,
                               f"bench-{name}-{secrets.token_urlsafe(32)}")
        tokens.before = mint_before(api)
        with tokens:
            print(phase(probe, "rotation of the DB password, SECRET_KEY, B2 keys, APNs key "
                        "(roll 1, roll 2, old B2 keys deleted, old DB role refused, "
                        "clean-up)", "-p",
                        f"rotation=bench-{int(time.time())}", runbook="rotate-secrets",
                        tokens=tokens), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
