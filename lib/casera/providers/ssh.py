"""SSH to the nodes through ``fabric`` (paramiko underneath)."""

from __future__ import annotations

import os

from fabric import Connection


def connect(host: str, port: int, user: str, key_file: str, timeout: float = 10.0) -> Connection:
    """A connection that uses only the given key: no agent, no ~/.ssh guessing, no password."""
    return Connection(
        host=host, port=port, user=user,
        connect_timeout=timeout,
        connect_kwargs={"key_filename": [os.path.expanduser(key_file)], "allow_agent": False,
                        "look_for_keys": False, "banner_timeout": timeout,
                        "auth_timeout": timeout},
    )


def run(conn: Connection, command: str, timeout: float = 60.0) -> str:
    """Run a command; raises on a non-zero exit. Returns stdout, stripped."""
    result = conn.run(command, hide=True, warn=False, timeout=timeout, in_stream=False)
    return result.stdout.strip()
