"""locust, headless, in its own process (``python -m locust -f locustfiles/api.py``): the one
place that starts load. Every request it makes is one line of a log (see the locustfile),
read back here as :class:`Request` rows; the figures are computed from those rows
(:mod:`casera.load_stats`), not from locust's own rolling windows.

Bounded three ways: the shape's stages (users and time), ``constant_throughput`` (rate per
user), and a hard timeout on the process (the profile's length plus a grace period).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from casera.errors import ProviderError

LOCUSTFILE = Path(__file__).parent / "locustfiles" / "api.py"
GRACE_S = 45  # locust's start (gevent, imports) and its stop timeout


@dataclass(frozen=True)
class Request:
    start: float  # unix seconds
    name: str  # "GET /readyz"
    ms: float
    ok: bool
    status: int


@dataclass(frozen=True)
class Target:
    base_url: str  # the LB's address
    hostname: str | None  # TLS name and Host
    ca_file: str | None


def run(target: Target, stages: list[tuple[float, int, float]], rate_per_user: float,
        write_share: float, workdir: Path, every_second: Callable[[], None] | None = None,
        ) -> tuple[list[Request], str]:
    """Run locust for the stages ``[(end_s, users, spawn_rate), ...]``; calls
    ``every_second()`` while it runs (the caller samples Redis and the pooler). Returns the
    requests and locust's own last lines of output (for the reader)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "requests.tsv"
    log.unlink(missing_ok=True)
    env = {**os.environ,
           "CASERA_LOAD_BASE_URL": target.base_url,
           "CASERA_LOAD_HOSTNAME": target.hostname or "",
           "CASERA_LOAD_CA_FILE": target.ca_file or "",
           "CASERA_LOAD_STAGES": json.dumps([list(s) for s in stages]),
           "CASERA_LOAD_RATE": str(rate_per_user),
           "CASERA_LOAD_WRITE_SHARE": str(write_share),
           "CASERA_LOAD_LOG": str(log)}
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
               "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "5",
               "--exit-code-on-error", "0"]
    limit = max(s[0] for s in stages) + GRACE_S
    out = workdir / "locust.out"
    with out.open("w") as sink:
        proc = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                cwd=workdir)
        deadline = time.monotonic() + limit
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise ProviderError("locust", f"still running after {limit:.0f} s (the "
                                    f"profile's {limit - GRACE_S:.0f} s + {GRACE_S} s): "
                                    f"killed; its last output:\n{_tail(out)}")
            if every_second is not None:
                every_second()
            time.sleep(1)
    if proc.returncode != 0:
        raise ProviderError("locust", f"exited {proc.returncode}; its last output:\n"
                            f"{_tail(out)}")
    return read_log(log), _tail(out)


def read_log(path: Path) -> list[Request]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 5:
            rows.append(Request(float(parts[0]), parts[1], float(parts[2]), parts[3] == "1",
                                int(parts[4])))
    return rows


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
