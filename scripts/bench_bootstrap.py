"""Benchmark, not a test: wall time of a first and a second bootstrap on the local cloud, the
slowest steps, read from the kept notebooks' metadata, and the ratio of a 0-change re-run to
the first run (the goal is 15 % or less: a re-run only reads and verifies).

    python scripts/bench_bootstrap.py            # fresh local cloud, two runs
    python scripts/bench_bootstrap.py --reuse    # keep the cloud as it is (second-run figures)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from casera.paths import outputs_dir


def casera(*args: str) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "casera.runner.cli", *args], check=True)
    return time.monotonic() - started


def latest() -> dict:
    path = sorted((outputs_dir("local") / "bootstrap").glob("*.ipynb"))[-1]
    return json.loads(Path(path).read_text())["metadata"]["casera"]


def report(label: str, wall: float, meta: dict) -> None:
    steps = sorted(meta["steps"], key=lambda s: s["duration_s"], reverse=True)[:6]
    print(f"{label}: {wall:.0f} s wall, {meta['duration_s']:.0f} s in the runner, "
          f"{meta['changes']} changes, status {meta['status']}")
    for step in steps:
        print(f"    {step['duration_s']:6.1f} s  {step['step']} {step['target']}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reuse", action="store_true", help="do not recreate the local cloud")
    args = parser.parse_args()
    if not args.reuse:
        casera("local", "down")
        print(f"local cloud up: {casera('local', 'up'):.0f} s")
    first = casera("run", "bootstrap", "--env", "local")
    report("first bootstrap", first, latest())
    second = casera("run", "bootstrap", "--env", "local")
    meta = latest()
    report("second bootstrap", second, meta)
    if meta["changes"]:
        print(f"the second run changed {meta['changes']} thing(s): not a 0-change re-run")
        return 1
    if not args.reuse:
        print(f"0-change re-run / first run: {second:.0f} s / {first:.0f} s = "
              f"{second / first:.0%} (goal <= 15 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
