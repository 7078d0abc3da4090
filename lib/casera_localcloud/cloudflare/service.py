"""``up()/down()/status()`` of the Cloudflare DNS emulator for ``casera local up|down|status``.

Same shape as the B2 emulator's: a detached process (own session, so a notebook kernel's
exit does not take it along) with a pidfile and a log beside its state. ``up`` creates the
zone named in params/local.yaml and an API token, and publishes the token as
``CASERA_CLOUDFLARE_API_TOKEN``; ``down`` stops the process and keeps zones and records.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

from casera.errors import CaseraError, ParamsError
from casera.paths import local_cloud_home
from casera_localcloud import process
from casera_localcloud.cloudflare.server import API_PREFIX, HEALTH_PATH, SERVICE_NAME
from casera_localcloud.cloudflare.store import new_token, read_state
from casera_localcloud.local_credentials import write_local_secret

DEFAULT_PORT = 18004
DEFAULT_ZONE = "casera.test"
TOKEN_SECRET = "CASERA_CLOUDFLARE_API_TOKEN"
MODULE = "casera_localcloud.cloudflare"


def default_state_dir() -> Path:
    return local_cloud_home() / "cloudflare"


def endpoint(port: int = DEFAULT_PORT) -> str:
    """What ``Cloudflare(base_url=...)`` takes."""
    return f"http://127.0.0.1:{port}{API_PREFIX}"


def pidfile(state_dir: Path) -> Path:
    return state_dir / "emulator.pid"


def logfile(state_dir: Path) -> Path:
    return state_dir / "emulator.log"


def health(port: int) -> dict[str, object] | None:
    """The emulator's own health answer, or None when nothing (or something else) answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{HEALTH_PATH}",
                                    timeout=2) as answer:
            payload = json.loads(answer.read())
    except (OSError, ValueError):
        return None
    if isinstance(payload, dict) and payload.get("service") == SERVICE_NAME:
        return payload
    return None


def configured_zone() -> str:
    """The zone params/local.yaml names, or the default when that file is unusable (a
    broken params file must not stop the local cloud from coming up)."""
    from casera.params import load_params

    try:
        return load_params("local").cloudflare.zone
    except (ParamsError, OSError):
        return DEFAULT_ZONE


def api_token(state_dir: Path | None = None) -> str | None:
    """The first token in the emulator's state, if any (read from disk; safe while the
    emulator runs because only whole files replace it)."""
    tokens = read_state(Path(state_dir or default_state_dir())).get("tokens") or []
    return tokens[0] if tokens else None


def start(port: int = DEFAULT_PORT, state_dir: Path | None = None,
          zones: list[str] | None = None, tokens: list[str] | None = None,
          allow_private_proxied: bool = False, timeout: float = 30,
          show: bool = True) -> str:
    """Start the emulator detached unless it already answers on ``port``."""
    state_dir = Path(state_dir or default_state_dir())
    running = health(port)
    if running:
        if Path(str(running.get("stateDir"))).resolve() != state_dir.resolve():
            # Its tokens are not the ones in state_dir: publishing ours would lock the
            # runbooks out, so refuse rather than guess.
            raise CaseraError(
                f"a Cloudflare emulator on {endpoint(port)} serves {running.get('stateDir')}, "
                f"not {state_dir}; stop it or use another port")
        served = running.get("zones")
        missing = sorted(set(zones or []) - set(served if isinstance(served, list) else []))
        if missing:
            raise CaseraError(f"the Cloudflare emulator on {endpoint(port)} has no zone "
                              f"{', '.join(missing)}; run down() then up() to add it")
        return f"Cloudflare emulator already running on {endpoint(port)}"
    state_dir.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", MODULE, "--port", str(port), "--state-dir", str(state_dir)]
    for zone in zones or []:
        args += ["--zone", zone]
    if allow_private_proxied:
        args.append("--allow-private-proxied")
    # Tokens go through the environment, not argv: /proc/<pid>/cmdline is world-readable.
    env = {**os.environ, "CASERA_CLOUDFLARE_EMULATOR_TOKENS": ",".join(tokens or [])}
    pid = process.start_detached(f"the Cloudflare emulator on {endpoint(port)}", args,
                                 pidfile(state_dir), logfile(state_dir),
                                 lambda: health(port) is not None, timeout, interval=0.1,
                                 show=show, env=env)
    return f"started the Cloudflare emulator on {endpoint(port)} (pid {pid}, state {state_dir})"


def stop(state_dir: Path | None = None, timeout: float = 15) -> str:
    state_dir = Path(state_dir or default_state_dir())
    pid = process.stop(pidfile(state_dir), "the Cloudflare emulator", timeout, marker=MODULE)
    return (f"stopped the Cloudflare emulator (pid {pid})" if pid
            else "Cloudflare emulator not running")


def up(port: int = DEFAULT_PORT, state_dir: Path | None = None, zone: str | None = None,
       allow_private_proxied: bool = False) -> list[str]:
    """Start the emulator with the zone and a token, and publish the token."""
    state_dir = Path(state_dir or default_state_dir())
    zone = zone or configured_zone()
    token = api_token(state_dir) or new_token()
    lines = [start(port, state_dir, zones=[zone], tokens=[token],
                   allow_private_proxied=allow_private_proxied)]
    changed = write_local_secret(TOKEN_SECRET, token)
    lines.append(f"zone {zone}; {TOKEN_SECRET} "
                 + ("written to secrets/local.env" if changed
                    else "already in secrets/local.env"))
    return lines


def down(state_dir: Path | None = None) -> list[str]:
    return [stop(state_dir), "Cloudflare state kept on disk (zones, records, token)"]


def status(port: int = DEFAULT_PORT, state_dir: Path | None = None) -> list[str]:
    state_dir = Path(state_dir or default_state_dir())
    answer = health(port)
    if answer is None:
        return [f"Cloudflare emulator: not answering on {endpoint(port)} (state {state_dir})"]
    pid = process.running_pid(pidfile(state_dir), MODULE)
    zones = answer.get("zones")
    names = ", ".join(str(z) for z in zones) if isinstance(zones, list) else ""
    return [f"Cloudflare emulator: running on {endpoint(port)}"
            + (f" (pid {pid})" if pid else " (not started by this state dir's up)"),
            f"  zones {names or '(none)'}, "
            f"{answer.get('records')} DNS records, state {answer.get('stateDir')}"]
