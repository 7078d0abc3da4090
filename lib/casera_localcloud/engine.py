"""The local cloud's own Docker engine: installed from Debian's docker.io, run with its own
data root, exec root, socket and pidfile so it never clashes with another engine.

Notes/local-engine.md has what was measured: nothing starts dockerd after the install, and
once any dockerd ran, the host FORWARD policy is DROP.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import docker

from casera.errors import CaseraError, WaitTimeout
from casera.paths import local_cloud_home
from casera.progress import wait_for
from casera_localcloud import debian

RUN_DIR = Path("/run/casera-local")
SOCKET = RUN_DIR / "docker.sock"
DOCKER_HOST = f"unix://{SOCKET}"


def _pidfile() -> Path:
    return RUN_DIR / "dockerd.pid"


def client(timeout: int = 120) -> docker.DockerClient:
    """A Docker SDK client for the local cloud's engine (not any engine of the host's)."""
    return docker.DockerClient(base_url=DOCKER_HOST, timeout=timeout)


def is_running() -> bool:
    if not SOCKET.exists():
        return False
    try:
        return bool(client(timeout=5).ping())
    except Exception:  # noqa: BLE001 - any failure means "not answering"
        return False


def install_docker() -> bool:
    """Install Debian's docker.io if dockerd is missing. Returns True when it installed."""
    return debian.ensure_command("dockerd", "docker.io")


def ensure_engine(timeout: float = 60) -> str:
    """Start the local cloud's dockerd unless it already answers. Returns what it did."""
    if is_running():
        return "engine already running"
    installed = install_docker()
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    home = local_cloud_home()
    (home / "docker").mkdir(parents=True, exist_ok=True)
    log = open(home / "dockerd.log", "ab")  # noqa: SIM115 - handed to the daemon
    subprocess.Popen(
        [
            "dockerd",
            f"--data-root={home / 'docker'}",
            f"--exec-root={RUN_DIR / 'exec'}",
            f"--pidfile={_pidfile()}",
            f"-H={DOCKER_HOST}",
            "--iptables=true",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(f"the local dockerd on {SOCKET}", is_running, timeout, interval=0.5,
                 show=False)
    except WaitTimeout as exc:
        raise WaitTimeout(f"{exc}; see {home / 'dockerd.log'}") from None
    return ("installed docker.io and " if installed else "") + "started dockerd"


def stop_engine(timeout: float = 30) -> str:
    pidfile = _pidfile()
    if not pidfile.exists():
        return "engine not running"
    pid = int(pidfile.read_text().strip() or 0)
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        pidfile.unlink(missing_ok=True)
        return "engine was not running (stale pidfile removed)"

    def gone() -> bool:
        # A dockerd started by this very process lingers as a zombie until reaped.
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        return stat.rsplit(") ", 1)[-1].startswith("Z")

    try:
        wait_for(f"dockerd (pid {pid}) to stop", gone, timeout, interval=0.5, show=False)
    except WaitTimeout:
        raise CaseraError(f"dockerd (pid {pid}) did not stop within {timeout:.0f}s") from None
    return "stopped dockerd"
