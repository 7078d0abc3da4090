"""``up`` / ``down`` / ``status`` of the Hetzner emulator for ``casera local``.

``up`` starts the emulator as a detached process (pidfile and log in its state dir), waits
until it answers, and writes its token as ``CASERA_HCLOUD_TOKEN`` into secrets/local.env.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import requests

from casera.errors import CaseraError
from casera.paths import local_cloud_home
from casera_localcloud import process
from casera_localcloud.hetzner.backend import NodeBackend
from casera_localcloud.local_credentials import read_local_secrets, write_local_secret

DEFAULT_PORT = 18001
# Loopback addresses for load balancers (127.0.0.0/8 is all loopback): one per LB, so each
# listens on its real ports like a Hetzner LB on its public address.
LB_PUBLIC_NETWORK = "127.0.1.0/24"
TOKEN_ENV = "CASERA_HCLOUD_TOKEN"
_MODULE = "casera_localcloud.hetzner"


def state_dir() -> Path:
    return local_cloud_home() / "hetzner"


def endpoint(port: int = DEFAULT_PORT) -> str:
    return f"http://127.0.0.1:{port}/v1"


def load_backend(kind: str) -> NodeBackend:
    """The NodeBackend: real nodes from ``casera_localcloud.nodes.backend()``, or the fake."""
    if kind == "fake":
        from casera_localcloud.hetzner.fake_backend import FakeNodeBackend
        return FakeNodeBackend()
    if importlib.util.find_spec("casera_localcloud.nodes") is None:
        raise CaseraError("the Hetzner emulator needs casera_localcloud.nodes to boot real "
                          "nodes, and it is not installed; use backend 'fake' for an API "
                          "without nodes")
    nodes = importlib.import_module("casera_localcloud.nodes")
    factory = getattr(nodes, "backend", None)
    if factory is None:
        raise CaseraError("casera_localcloud.nodes has no backend() factory; the Hetzner "
                          "emulator cannot boot nodes")
    return factory()


def _pidfile() -> Path:
    return state_dir() / "emulator.pid"


def _running_pid() -> int | None:
    return process.running_pid(_pidfile(), _MODULE)


def _token() -> str:
    """The same token across restarts, so notebooks holding it keep working."""
    return read_local_secrets().get(TOKEN_ENV) or secrets.token_hex(32)


def _get(path: str, token: str, port: int = DEFAULT_PORT, **params: Any) -> dict[str, Any]:
    answer = requests.get(endpoint(port) + path, params=params, timeout=5,
                          headers={"Authorization": f"Bearer {token}"})
    answer.raise_for_status()
    return answer.json()


def up(port: int = DEFAULT_PORT, backend: str = "nodes") -> list[str]:
    lines = []
    token = _token()
    if write_local_secret(TOKEN_ENV, token):
        lines.append(f"hetzner: wrote {TOKEN_ENV} to secrets/local.env")
    if pid := _running_pid():
        try:
            _get("/locations", token, port)
            lines.append(f"hetzner: emulator already running (pid {pid}) on {endpoint(port)}")
            return lines
        except requests.RequestException as exc:
            # Typically secrets/local.env lost its token: restart with the one just written.
            lines.append(f"hetzner: running emulator (pid {pid}) does not answer with the "
                         f"current token ({exc}); restarting it")
            lines.extend(down(keep_state=True))
    load_backend(backend)  # fail here, with its message, rather than in a detached child
    directory = state_dir()
    directory.mkdir(parents=True, exist_ok=True)
    pid = process.start_detached(
        f"the Hetzner emulator on {endpoint(port)}",
        [sys.executable, "-m", _MODULE, "--port", str(port), "--state-dir", str(directory),
         "--backend", backend, "--lb-public-network", LB_PUBLIC_NETWORK],
        _pidfile(), directory / "emulator.log", lambda: _get("/locations", token, port), 30,
        interval=0.3, env={**os.environ, TOKEN_ENV: token}, log_tail=2000)
    lines.append(f"hetzner: started emulator (pid {pid}) on {endpoint(port)}, "
                 f"backend {backend}, state in {directory}")
    return lines


def down(keep_state: bool = False) -> list[str]:
    """Stop the emulator; unless ``keep_state``, forget its servers too, since ``casera
    local down`` removes the nodes they stand for."""
    lines = []
    if pid := _running_pid():
        if process.terminate(pid, "the Hetzner emulator", 60, kill=True):
            lines.append(f"hetzner: stopped emulator (pid {pid})")
        else:
            lines.append(f"hetzner: emulator (pid {pid}) did not stop in 60 s; killed it")
    else:
        lines.append("hetzner: emulator not running")
    _pidfile().unlink(missing_ok=True)
    state = state_dir() / "state.json"
    if not keep_state and state.exists():
        state.unlink()
        lines.append(f"hetzner: removed emulator state {state}")
    return lines


def status(port: int = DEFAULT_PORT) -> list[str]:
    pid = _running_pid()
    if not pid:
        return ["hetzner: emulator not running"]
    lines = [f"hetzner: emulator running (pid {pid}) on {endpoint(port)}"]
    token = read_local_secrets().get(TOKEN_ENV, "")
    try:
        servers = _get("/servers", token, port, per_page=50)["servers"]
        lbs = _get("/load_balancers", token, port, per_page=50)["load_balancers"]
        faults = _get("/_emulator/faults", token, port)["faults"]
    except requests.RequestException as exc:
        return [*lines, f"hetzner: emulator does not answer: {exc}"]
    for server in servers:
        ip = (server["public_net"]["ipv4"] or {}).get("ip")
        lines.append(f"hetzner: server {server['name']} {server['status']} {ip}")
    for lb in lbs:
        for svc in lb["services"]:
            lines.append(f"hetzner: load balancer {lb['name']} port {svc['listen_port']} -> "
                         f"127.0.0.1:{svc['emulator_listen_port']} ({svc['protocol']})")
    active = {k: v for k, v in faults.items() if v and k != "seed"}
    if active:
        lines.append(f"hetzner: fault injection ON: {active}")
    return lines
