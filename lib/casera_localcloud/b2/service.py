"""``up()/down()/status()`` of the B2 emulator for ``casera local up|down|status``.

The emulator runs detached (its own session, so a notebook kernel's exit does not take it
along) with a pidfile and a log beside its state. ``down`` stops the process only: buckets,
keys and files stay on disk for the next ``up``, like a real account.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from casera.errors import CaseraError
from casera.paths import local_cloud_home
from casera_localcloud import process
from casera_localcloud.local_credentials import write_local_secret

DEFAULT_PORT = 18003
KEY_ID_SECRET = "CASERA_B2_KEY_ID"
KEY_SECRET = "CASERA_B2_APPLICATION_KEY"
MODULE = "casera_localcloud.b2"


def default_state_dir() -> Path:
    return local_cloud_home() / "b2"


def endpoint(port: int = DEFAULT_PORT) -> str:
    """What b2sdk's ``authorize_account`` takes as realm."""
    return f"http://127.0.0.1:{port}"


def pidfile(state_dir: Path) -> Path:
    return state_dir / "emulator.pid"


def logfile(state_dir: Path) -> Path:
    return state_dir / "emulator.log"


def health(port: int) -> dict[str, object] | None:
    """The emulator's own health answer, or None when nothing (or something else) answers."""
    try:
        with urllib.request.urlopen(f"{endpoint(port)}/_casera/health", timeout=2) as answer:
            payload = json.loads(answer.read())
    except (OSError, ValueError):
        return None
    if isinstance(payload, dict) and payload.get("service") == "casera-b2-emulator":
        return payload
    return None


def start(port: int = DEFAULT_PORT, state_dir: Path | None = None, timeout: float = 30,
          extra_args: list[str] | None = None, show: bool = True) -> str:
    """Start the emulator detached unless it already answers on ``port``."""
    state_dir = Path(state_dir or default_state_dir())
    running = health(port)
    if running:
        if Path(str(running.get("stateDir"))).resolve() != state_dir.resolve():
            # Its master key is not the one in state_dir: publishing that would lock the
            # runbooks out, so refuse rather than guess.
            raise CaseraError(
                f"a B2 emulator on {endpoint(port)} serves {running.get('stateDir')}, "
                f"not {state_dir}; stop it (python -m casera_localcloud.b2 runs in the "
                f"foreground) or use another port")
        return f"B2 emulator already running on {endpoint(port)}"
    state_dir.mkdir(parents=True, exist_ok=True)
    pid = process.start_detached(
        f"the B2 emulator on {endpoint(port)}",
        [sys.executable, "-m", MODULE, "--port", str(port), "--state-dir", str(state_dir),
         *(extra_args or [])],
        pidfile(state_dir), logfile(state_dir), lambda: health(port) is not None, timeout,
        interval=0.1, show=show)
    return f"started the B2 emulator on {endpoint(port)} (pid {pid}, state {state_dir})"


def stop(state_dir: Path | None = None, timeout: float = 15) -> str:
    state_dir = Path(state_dir or default_state_dir())
    pid = process.stop(pidfile(state_dir), "the B2 emulator", timeout, marker=MODULE)
    return f"stopped the B2 emulator (pid {pid})" if pid else "B2 emulator not running"


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


def down(state_dir: Path | None = None) -> list[str]:
    return [stop(state_dir), "B2 state kept on disk (buckets, keys, files)"]


def status(port: int = DEFAULT_PORT, state_dir: Path | None = None) -> list[str]:
    state_dir = Path(state_dir or default_state_dir())
    answer = health(port)
    if answer is None:
        return [f"B2 emulator: not answering on {endpoint(port)} (state {state_dir})"]
    pid = process.running_pid(pidfile(state_dir), MODULE)
    return [f"B2 emulator: running on {endpoint(port)}"
            + (f" (pid {pid})" if pid else " (not started by this state dir's up)"),
            f"  account {answer.get('accountId')}, {answer.get('buckets')} buckets, "
            f"{answer.get('files')} file versions, state {answer.get('stateDir')}"]
