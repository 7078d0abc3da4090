"""``up()/down()/status()`` of the B2 emulator for ``casera local up|down|status``.

The emulator runs detached (its own session, so a notebook kernel's exit does not take it
along) with a pidfile and a log beside its state. ``down`` stops the process only: buckets,
keys and files stay on disk for the next ``up``, like a real account.
"""

from __future__ import annotations

from pathlib import Path

from casera.paths import local_cloud_home
from casera_localcloud.local_credentials import write_local_secret
from casera_localcloud.neon.config import BRIDGE_GATEWAY, host_has_address
from casera_localcloud.process import HttpEmulator

DEFAULT_PORT = 18003
KEY_ID_SECRET = "CASERA_B2_KEY_ID"
KEY_SECRET = "CASERA_B2_APPLICATION_KEY"
MODULE = "casera_localcloud.b2"
EMULATOR = HttpEmulator("B2 emulator", MODULE, "casera-b2-emulator")


def default_state_dir() -> Path:
    return local_cloud_home() / "b2"


def endpoint(port: int = DEFAULT_PORT) -> str:
    """What b2sdk's ``authorize_account`` takes as realm."""
    return EMULATOR.endpoint(port)


def health(port: int) -> dict[str, object] | None:
    return EMULATOR.health(port)


def start(port: int = DEFAULT_PORT, state_dir: Path | None = None, timeout: float = 30,
          extra_args: list[str] | None = None, show: bool = True) -> str:
    """Start the emulator detached unless it already answers on ``port``."""
    state_dir = Path(state_dir or default_state_dir())
    # Its master key is what up() publishes: one serving another state dir is refused.
    if EMULATOR.serving(port, state_dir, f" (python -m {MODULE} runs in the foreground)"):
        return f"B2 emulator already running on {endpoint(port)}"
    # Also on the node bridge's gateway once it exists, as the Neon part does: the Redis
    # backup job runs on the nodes and uploads from there (params b2.node_realm).
    gateway = ["--also-host", BRIDGE_GATEWAY] if host_has_address(BRIDGE_GATEWAY) else []
    return EMULATOR.start(port, state_dir, [*gateway, *(extra_args or [])], timeout, show=show)


def stop(state_dir: Path | None = None, timeout: float = 15) -> str:
    return EMULATOR.stop(Path(state_dir or default_state_dir()), timeout)


def master_credentials(state_dir: Path | None = None) -> tuple[str, str]:
    from casera_localcloud.b2.store import Store

    store = Store(Path(state_dir or default_state_dir()))
    try:
        key = store.master_key()
        return key.key_id, key.secret
    finally:
        store.close()


def up(port: int = DEFAULT_PORT, state_dir: Path | None = None) -> list[str]:
    """Start the emulator if needed and publish its master key to secrets/local.env."""
    state_dir = Path(state_dir or default_state_dir())
    lines = [start(port, state_dir)]
    key_id, key = master_credentials(state_dir)
    changed = write_local_secret(KEY_ID_SECRET, key_id)
    changed = write_local_secret(KEY_SECRET, key) or changed
    lines.append(f"{KEY_ID_SECRET}/{KEY_SECRET} "
                 + ("written to secrets/local.env" if changed else "already in secrets/local.env"))
    return lines


def down(state_dir: Path | None = None, purge: bool = False) -> list[str]:
    return EMULATOR.down(Path(state_dir or default_state_dir()),
                         "B2 state kept on disk (buckets, keys, files)", purge)


def status(port: int = DEFAULT_PORT, state_dir: Path | None = None) -> list[str]:
    return EMULATOR.status(
        port, Path(state_dir or default_state_dir()),
        lambda answer: f"account {answer.get('accountId')}, {answer.get('buckets')} buckets, "
                       f"{answer.get('files')} file versions, state {answer.get('stateDir')}")
