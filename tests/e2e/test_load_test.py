"""The load-test runbook on the bootstrapped local cloud, as CI runs it (`casera run`).

Runs AFTER tests/e2e/test_bootstrap.py, on the cloud it bootstrapped: it brings nothing down
or up, and leaves the stack as it found it (the digest burst is drained before the run ends;
the rows it wrote are test data the app tolerates).

Two runs: the local profiles with params/local.yaml's thresholds, green, whose kept notebook
holds the measured figures and the embedded plots; then short profiles with a p95 threshold no
system meets (0.001 ms), which must fail the run (exit 1) naming that threshold, where and by
how much. The figures are printed for the reader, never asserted as speed goals.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from e2e_harness import casera

from casera.paths import outputs_dir

pytestmark = [pytest.mark.localcloud, pytest.mark.slow]
SHORT = ["-p", "load_test.steady.duration_s=5", "-p", "load_test.ramp.max_users=2",
         "-p", "load_test.ramp.step_s=3", "-p", "load_test.digest_burst.jobs=200",
         "-p", "load_test.digest_burst.batch=200", "-p", "load_test.warm_up_requests=4"]


def latest_load_test() -> tuple[Path, dict]:
    path = sorted((outputs_dir("local") / "load-test").glob("*.ipynb"))[-1]
    return path, json.loads(path.read_text())


def outputs_text(nb: dict) -> str:
    parts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            parts.append("".join(out.get("text", "")))
            data = out.get("data", {})
            parts.append("".join(data.get("text/plain", "")))
            parts.append("".join(data.get("text/html", "")))
    return "\n".join(parts)


def pngs(nb: dict) -> list[bytes]:
    return [base64.b64decode("".join(out["data"]["image/png"]))
            for cell in nb["cells"] for out in cell.get("outputs", [])
            if "image/png" in out.get("data", {})]


def test_load_test_within_local_thresholds() -> None:
    done = casera("run", "load-test", "--env", "local", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    path, nb = latest_load_test()
    meta = nb["metadata"]["casera"]
    assert meta["status"] == "succeeded", meta["status"]
    text = outputs_text(nb)
    steps = {s["step"]: s for s in meta["steps"]}
    for step in ("warm-up", "steady profile", "ramp", "digest burst", "capacity advice",
                 "load test"):
        assert step in steps, f"{step} missing from {path}: {sorted(steps)}"
        assert steps[step]["ok"], steps[step]
    steady = next(c for c in steps["steady profile"]["checks"] if c["name"] == "figures")
    figures = re.search(r"(\d+) requests in [\d.]+ s: ([\d.]+) RPS, p50 (\d+) ms, "
                        r"p95 (\d+) ms, p99 (\d+) ms, errors (\d+)", steady["detail"])
    assert figures, steady
    assert int(figures[1]) > 0
    pool = next(c for c in steps["steady profile"]["checks"] if c["name"] == "PgBouncer pools")
    assert "samples of SHOW POOLS" in pool["detail"], pool  # read locally, not the fallback
    assert "max_connections for 0.25 CU: 104" in pool["detail"]
    burst = {c["name"]: c for c in steps["digest burst"]["checks"]}
    assert burst["drained"]["ok"] and "back to" in burst["drained"]["detail"]
    assert "smaller than the plan's 100000" in burst["size"]["detail"]
    assert "local figures measure the method, not Hetzner's hardware" in text
    images = pngs(nb)
    assert images and all(i.startswith(b"\x89PNG") for i in images)
    assert len(images[0]) > 10_000  # plots with axes and lines, not an empty canvas
    print("\nsteady:", steady["detail"], "\npools:", pool["detail"])
    print("ramp:", [c["detail"] for c in steps["ramp"]["checks"]
                    if c["name"] == "load_test.thresholds.min_saturation_rps"])
    print("burst:", [c["detail"] for c in steps["digest burst"]["checks"]])


def test_impossible_threshold_fails_the_run_naming_it() -> None:
    done = casera("run", "load-test", "--env", "local",
                  "-p", "load_test.thresholds.p95_ms=0.001", *SHORT, timeout=600)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]
    said = done.stdout + done.stderr
    assert "load_test.thresholds.p95_ms" in said, said[-3000:]
    _, nb = latest_load_test()
    meta = nb["metadata"]["casera"]
    assert meta["status"] == "failed"
    red = [(s["step"], c["name"], c["detail"]) for s in meta["steps"]
           for c in s["checks"] if c["kind"] == "check" and not c["ok"]]
    p95 = [r for r in red if r[0] == "steady profile" and r[1] == "load_test.thresholds.p95_ms"]
    assert p95, red
    assert re.search(r"steady profile: [\d.]+ ms > 0\.001 ms: [\d.e+]+ ms over", p95[0][2]), p95
    # the rest was still measured, and the plots are in the kept notebook
    assert {s["step"] for s in meta["steps"]} >= {"ramp", "digest burst", "load test"}
    assert pngs(nb)
    # only latency thresholds are red (the ramp's saturation point follows the p95 threshold)
    assert {r[1] for r in red if r[0] != "load test"} <= {
        "load_test.thresholds.p95_ms", "load_test.thresholds.p99_ms",
        "load_test.thresholds.min_saturation_rps"}, red
