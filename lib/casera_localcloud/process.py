"""The local cloud's background daemons (emulators, the Neon API, the registry): started
detached with a pidfile and a log, found again from that pidfile, stopped by it.

Detached means a session of their own, so the exit of the notebook kernel that ran
``casera local up`` does not take them along; the pidfile is how a later ``down`` or
``status``, in another process, finds them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from casera.errors import CaseraError, WaitTimeout
from casera.progress import wait_for


def alive(pid: int) -> bool:
    """True while ``pid`` runs. ``kill(pid, 0)`` would count a zombie as running, and here
    zombies linger: a notebook kernel or test session is the parent of what it started and
    may not reap it for long, and PID 1 of some containers never reaps orphans."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False  # our own child, just reaped
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the command name, which is in parentheses and may hold spaces.
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def running_pid(pidfile: Path, marker: str | None = None) -> int | None:
    """The pid in ``pidfile`` while that process runs and, given ``marker``, still has it
    as one of its arguments: a pidfile outlives a crash, and its pid may be reused since."""
    pid = read_pid(pidfile)
    if pid is None or not alive(pid):
        return None
    if marker is not None:
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        # An emulator an older checkout started runs under the package's former name: it is
        # still ours to find and stop, or the next `up` meets its port taken.
        former = marker.replace("casera_localcloud.", "casera.localcloud.", 1)
        if marker.encode() not in args and former.encode() not in args:
            return None
    return pid


def start_detached(what: str, argv: list[str], pidfile: Path, logfile: Path,
                   answers: Callable[[], object], timeout: float, *, interval: float = 0.2,
                   show: bool = True, env: dict[str, str] | None = None,
                   cwd: Path | None = None, log_tail: int = 0) -> int:
    """Start ``argv`` detached, write its pidfile, and wait until ``answers()`` is truthy.
    Returns the pid. If it exits first, the wait ends at once (``wait_for`` alone would
    retry until the timeout) and the error names the log, quoting its last ``log_tail``
    characters when asked."""
    with logfile.open("ab") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                   start_new_session=True)
    pidfile.write_text(f"{process.pid}\n")
    wait_for(what, lambda: process.poll() is not None or answers(), timeout,
             interval=interval, show=show)
    if process.poll() is not None:
        pidfile.unlink(missing_ok=True)
        tail = logfile.read_text(errors="replace")[-log_tail:] if log_tail else ""
        raise CaseraError(f"{what} exited with {process.returncode}; see {logfile}"
                          + (f":\n{tail}" if tail else ""))
    return process.pid


def terminate(pid: int, what: str, timeout: float, *, kill: bool = False) -> bool:
    """SIGTERM ``pid`` and wait until it is gone; True when it went. If it outlives
    ``timeout``: SIGKILL it and return False when ``kill``, else raise ``WaitTimeout``."""
    os.kill(pid, signal.SIGTERM)
    try:
        wait_for(f"{what} (pid {pid}) to stop", lambda: not alive(pid), timeout,
                 interval=0.1, show=False)
    except WaitTimeout:
        if not kill:
            raise
        os.kill(pid, signal.SIGKILL)
        return False
    return True


def stop(pidfile: Path, what: str, timeout: float, *, marker: str | None = None,
         kill: bool = False) -> int | None:
    """Stop the daemon ``pidfile`` names (see ``running_pid``, ``terminate``) and remove the
    pidfile; returns the pid, or None when none ran. Without ``kill`` the pidfile is kept
    when the wait times out, so that a second ``down`` can still find the process."""
    pid = running_pid(pidfile, marker)
    if pid is not None:
        terminate(pid, what, timeout, kill=kill)
    pidfile.unlink(missing_ok=True)
    return pid


@dataclass(frozen=True)
class HttpEmulator:
    """An emulator that runs as ``python -m <module> --port N --state-dir DIR``, detached,
    with ``emulator.pid`` and ``emulator.log`` in its state dir, and that says who it is at
    ``health_path`` (JSON with ``"service": <service>`` and ``"stateDir"``). ``title`` names
    it in what up/down/status say ("B2 emulator")."""

    title: str
    module: str
    service: str
    api_prefix: str = ""
    health_path: str = "/_casera/health"

    def endpoint(self, port: int) -> str:
        """Where its API answers: what the vendor's SDK takes as base URL."""
        return f"http://127.0.0.1:{port}{self.api_prefix}"

    def pidfile(self, state_dir: Path) -> Path:
        return state_dir / "emulator.pid"

    def logfile(self, state_dir: Path) -> Path:
        return state_dir / "emulator.log"

    def running_pid(self, state_dir: Path) -> int | None:
        return running_pid(self.pidfile(state_dir), self.module)

    def health(self, port: int) -> dict[str, object] | None:
        """Its own health answer, or None when nothing (or something else) answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{self.health_path}",
                                        timeout=2) as answer:
                payload = json.loads(answer.read())
        except (OSError, ValueError):
            return None
        if isinstance(payload, dict) and payload.get("service") == self.service:
            return payload
        return None

    def serving(self, port: int, state_dir: Path, hint: str = "") -> dict[str, object] | None:
        """The health answer of the emulator on ``port`` if it serves ``state_dir``, None if
        none answers. One that serves another state dir holds other credentials: publishing
        ours would lock the runbooks out, so that is refused rather than guessed at."""
        running = self.health(port)
        if running and Path(str(running.get("stateDir"))).resolve() != state_dir.resolve():
            raise CaseraError(
                f"a {self.title} on {self.endpoint(port)} serves {running.get('stateDir')}, "
                f"not {state_dir}; stop it{hint} or use another port")
        return running

    def start(self, port: int, state_dir: Path, args: list[str], timeout: float, *,
              show: bool = True, env: dict[str, str] | None = None) -> str:
        """Start it detached on ``port`` with ``args`` after the port and state dir; wait
        until its health answers."""
        state_dir.mkdir(parents=True, exist_ok=True)
        pid = start_detached(
            f"the {self.title} on {self.endpoint(port)}",
            [sys.executable, "-m", self.module, "--port", str(port), "--state-dir",
             str(state_dir), *args],
            self.pidfile(state_dir), self.logfile(state_dir),
            lambda: self.health(port) is not None, timeout, interval=0.1, show=show, env=env)
        return f"started the {self.title} on {self.endpoint(port)} (pid {pid}, state {state_dir})"

    def stop(self, state_dir: Path, timeout: float) -> str:
        pid = stop(self.pidfile(state_dir), f"the {self.title}", timeout, marker=self.module)
        return f"stopped the {self.title} (pid {pid})" if pid else f"{self.title} not running"

    def down(self, state_dir: Path, kept: str, purge: bool = False,
             timeout: float = 15) -> list[str]:
        """Stop it. Its state (``kept`` says what) stays, like a real account's, unless
        ``purge``: then the next start is an empty account."""
        lines = [self.stop(state_dir, timeout)]
        if purge and state_dir.exists():
            shutil.rmtree(state_dir)
            return lines + [f"removed {state_dir} (purge)"]
        return lines + [kept]

    def status(self, port: int, state_dir: Path,
               describe: Callable[[dict[str, object]], str]) -> list[str]:
        """Whether it answers on ``port``, whether this state dir's ``up`` started it, and
        ``describe(health answer)``."""
        answer = self.health(port)
        if answer is None:
            return [f"{self.title}: not answering on {self.endpoint(port)} (state {state_dir})"]
        pid = self.running_pid(state_dir)
        return [f"{self.title}: running on {self.endpoint(port)}"
                + (f" (pid {pid})" if pid else " (not started by this state dir's up)"),
                f"  {describe(answer)}"]
