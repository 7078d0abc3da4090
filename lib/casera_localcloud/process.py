"""The local cloud's background daemons (emulators, the Neon API, the registry): started
detached with a pidfile and a log, found again from that pidfile, stopped by it.

Detached means a session of their own, so the exit of the notebook kernel that ran
``casera local up`` does not take them along; the pidfile is how a later ``down`` or
``status``, in another process, finds them.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
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
        if marker.encode() not in args:
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
