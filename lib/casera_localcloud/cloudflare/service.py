"""``up()/down()/status()`` of the Cloudflare DNS emulator for ``casera local up|down|status``.

Same shape as the B2 emulator's: a detached process (own session, so a notebook kernel's
exit does not take it along) with a pidfile and a log beside its state. ``up`` creates the
zone named in params/local.yaml and an API token, and publishes the token as
``CASERA_CLOUDFLARE_API_TOKEN``; ``down`` stops the process and keeps zones and records.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from casera import origin_tls
from casera.errors import CaseraError, ParamsError
from casera.paths import local_cloud_home
from casera_localcloud.cloudflare.server import API_PREFIX, HEALTH_PATH, SERVICE_NAME
from casera_localcloud.cloudflare.store import new_token, read_state
from casera_localcloud.local_credentials import write_local_secret
from casera_localcloud.process import HttpEmulator

DEFAULT_PORT = 18004
DEFAULT_ZONE = "casera.test"
TOKEN_SECRET = "CASERA_CLOUDFLARE_API_TOKEN"
MODULE = "casera_localcloud.cloudflare"
EMULATOR = HttpEmulator("Cloudflare emulator", MODULE, SERVICE_NAME, API_PREFIX, HEALTH_PATH)


def default_state_dir() -> Path:
    return local_cloud_home() / "cloudflare"


def endpoint(port: int = DEFAULT_PORT) -> str:
    """What ``Cloudflare(base_url=...)`` takes."""
    return EMULATOR.endpoint(port)


def health(port: int) -> dict[str, object] | None:
    return EMULATOR.health(port)


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
    # Its tokens are what up() publishes: one serving another state dir is refused.
    running = EMULATOR.serving(port, state_dir)
    if running:
        served = running.get("zones")
        missing = sorted(set(zones or []) - set(served if isinstance(served, list) else []))
        if missing:
            raise CaseraError(f"the Cloudflare emulator on {endpoint(port)} has no zone "
                              f"{', '.join(missing)}; run down() then up() to add it")
        return f"Cloudflare emulator already running on {endpoint(port)}"
    args = [arg for zone in zones or [] for arg in ("--zone", zone)]
    if allow_private_proxied:
        args.append("--allow-private-proxied")
    # Tokens go through the environment, not argv: /proc/<pid>/cmdline is world-readable.
    env = {**os.environ, "CASERA_CLOUDFLARE_EMULATOR_TOKENS": ",".join(tokens or [])}
    return EMULATOR.start(port, state_dir, args, timeout, show=show, env=env)


def stop(state_dir: Path | None = None, timeout: float = 15) -> str:
    return EMULATOR.stop(Path(state_dir or default_state_dir()), timeout)


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


def down(state_dir: Path | None = None, purge: bool = False) -> list[str]:
    lines = EMULATOR.down(Path(state_dir or default_state_dir()),
                          "Cloudflare state kept on disk (zones, records, token)", purge)
    origin = origin_tls.store_dir("local")
    if purge and state_dir is None and origin.exists():
        # Its certificates were signed by the Origin CA just purged: no check trusts them now.
        shutil.rmtree(origin)
        lines.append(f"removed {origin} (signed by the purged Origin CA)")
    return lines


def status(port: int = DEFAULT_PORT, state_dir: Path | None = None) -> list[str]:
    def describe(answer: dict[str, object]) -> str:
        zones = answer.get("zones")
        names = ", ".join(str(z) for z in zones) if isinstance(zones, list) else ""
        return (f"zones {names or '(none)'}, {answer.get('records')} DNS records, "
                f"state {answer.get('stateDir')}")

    return EMULATOR.status(port, Path(state_dir or default_state_dir()), describe)
