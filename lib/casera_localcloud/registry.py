"""The local cloud's image registry: Debian's ``docker-registry`` (distribution 2.8), run by us.

Two processes share one storage directory:
- the writer on 127.0.0.1:5000, where the local engine pushes (Docker trusts 127.0.0.0/8 as
  insecure by default, so the engine needs no configuration);
- a read-only reader on 10.77.0.1:5000 (the gateway of the nodes' bridge), where the nodes
  pull. It only starts once that address exists, so ``up()`` is re-run after the nodes' bridge
  appears. distribution's ``http.addr`` takes a single address, and listening on 0.0.0.0 would
  break the rule that nothing listens beyond loopback and the project bridge; a read-only second
  instance over the same files needs no proxy and cannot corrupt them.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from casera.errors import CaseraError
from casera.paths import local_cloud_home
from casera_localcloud import debian, process

PORT = 5000
PUSH_HOST = f"127.0.0.1:{PORT}"
NODE_GATEWAY = "10.77.0.1"
NODE_HOST = f"{NODE_GATEWAY}:{PORT}"
BINARY = "/usr/bin/docker-registry"

# Never through an HTTP proxy from the environment: the registry is local by definition.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Listener:
    name: str
    address: str
    read_only: bool


WRITER = Listener("writer", PUSH_HOST, read_only=False)
READER = Listener("nodes", NODE_HOST, read_only=True)


def home() -> Path:
    return local_cloud_home() / "registry"


def storage_dir() -> Path:
    return home() / "data"


def _config_path(listener: Listener) -> Path:
    return home() / f"config-{listener.name}.yml"


def _pidfile(listener: Listener) -> Path:
    return home() / f"{listener.name}.pid"


def _logfile(listener: Listener) -> Path:
    return home() / f"{listener.name}.log"


def _config_text(listener: Listener) -> str:
    # Upload purging deletes half-finished uploads; the reader must never touch the files.
    maintenance = (
        "    readonly:\n      enabled: true\n"
        "    uploadpurging:\n      enabled: false\n      age: 168h\n      interval: 24h\n"
        "      dryrun: false\n"
        if listener.read_only
        else "    uploadpurging:\n      enabled: true\n      age: 168h\n      interval: 24h\n"
        "      dryrun: false\n"
    )
    return (
        "version: 0.1\n"
        "log:\n  level: info\n  fields:\n    service: casera-registry\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {storage_dir()}\n"
        "  cache:\n    blobdescriptor: inmemory\n"
        "  maintenance:\n" + maintenance +
        "http:\n"
        f"  addr: {listener.address}\n"
        "  headers:\n    X-Content-Type-Options: [nosniff]\n"
    )


def _systemd() -> bool:
    return bool(shutil.which("systemctl")) and Path("/run/systemd/system").exists()


def install_registry() -> list[str]:
    """Install Debian's docker-registry if missing, and keep the package's own service off:
    it listens on :5000 on every address, which would both take our port and expose the
    registry beyond loopback and the project bridge."""
    lines = []
    if not Path(BINARY).exists():
        debian.install("docker-registry")
        lines.append("installed docker-registry")
    if _systemd():
        active = subprocess.run(["systemctl", "is-active", "--quiet", "docker-registry"],
                                check=False).returncode == 0
        if active:
            subprocess.run(["systemctl", "disable", "--now", "docker-registry"], check=False,
                           capture_output=True)
            lines.append("stopped and disabled Debian's docker-registry.service "
                         "(it listens on all addresses)")
    return lines


def _running_pid(listener: Listener) -> int | None:
    """The pid from our pidfile if that process is still our registry (pids get reused)."""
    return process.running_pid(_pidfile(listener), str(_config_path(listener)))


def _answers(address: str) -> bool:
    try:
        with _http.open(f"http://{address}/v2/", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def node_gateway_exists() -> bool:
    """Whether the nodes' bridge (made by casera_localcloud.nodes) holds 10.77.0.1 yet.
    Binding to an address succeeds only if a local interface has it; no `ip` tool needed."""
    with socket.socket() as probe:
        try:
            probe.bind((NODE_GATEWAY, 0))
        except OSError:
            return False
    return True


def _start(listener: Listener, timeout: float) -> None:
    config = _config_path(listener)
    config.write_text(_config_text(listener))
    process.start_detached(f"docker-registry ({listener.name}) on {listener.address}",
                           [BINARY, "serve", str(config)], _pidfile(listener),
                           _logfile(listener), lambda: _answers(listener.address), timeout,
                           interval=0.3, show=False)


def _ensure(listener: Listener, timeout: float) -> str:
    pid = _running_pid(listener)
    if pid and _answers(listener.address):
        return f"registry {listener.name} on {listener.address}: running (pid {pid})"
    if not pid and _answers(listener.address):
        raise CaseraError(f"{listener.address} is served by a registry this local cloud did not "
                          "start; stop it (`ss -ltnp 'sport = :5000'` shows which) and re-run")
    if pid:
        # Alive but not answering (wedged, or config changed under it): replace it.
        _stop(listener)
    _start(listener, timeout)
    return f"registry {listener.name} on {listener.address}: started ({_logfile(listener)})"


def _stop(listener: Listener, timeout: float = 15) -> bool:
    return process.stop(_pidfile(listener), f"registry {listener.name}", timeout,
                        marker=str(_config_path(listener)), kill=True) is not None


def up(timeout: float = 30) -> list[str]:
    """Start the writer, and the nodes' reader once the bridge exists. Idempotent."""
    lines = install_registry()
    storage_dir().mkdir(parents=True, exist_ok=True)
    lines.append(_ensure(WRITER, timeout))
    if node_gateway_exists():
        lines.append(_ensure(READER, timeout))
    else:
        lines.append(
            f"registry nodes on {NODE_HOST}: not started, {NODE_GATEWAY} does not exist yet "
            "(run up() again after the nodes' bridge is made)"
        )
    return lines


def down() -> list[str]:
    """Stop both processes. The stored images stay (they are a cache, rebuilt only on change)."""
    lines = []
    for listener in (READER, WRITER):
        stopped = _stop(listener)
        lines.append(f"registry {listener.name}: {'stopped' if stopped else 'was not running'}")
    return lines


def status() -> list[str]:
    lines = []
    for listener in (WRITER, READER):
        pid = _running_pid(listener)
        if pid is None:
            state = "not running"
        elif _answers(listener.address):
            state = f"running (pid {pid})"
        else:
            state = f"process {pid} alive but not answering on {listener.address}"
        lines.append(f"registry {listener.name} on {listener.address}: {state}")
    lines.append(f"registry storage: {storage_dir()}")
    return lines


def repositories() -> list[str]:
    """Repository names in the registry (the catalog), for status and tests."""
    with _http.open(f"http://{PUSH_HOST}/v2/_catalog", timeout=5) as response:
        return list(json.load(response).get("repositories") or [])


def tags(repository: str) -> list[str]:
    try:
        with _http.open(f"http://{PUSH_HOST}/v2/{repository}/tags/list",
                                    timeout=5) as response:
            return list(json.load(response).get("tags") or [])
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return []
        raise
